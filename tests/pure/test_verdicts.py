"""The node script that keeps and replays an engine parser's passing verdict (launcher/runtime/verdicts.py),
run by a real bash here: a check that counts its runs and prints a chosen verdict, an identity read from a
file (as `docker image inspect` or the python_env's listing digest prints one on a node)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from launcher.runtime import verdicts
from launcher.runtime.shell import join, q

PASS = json.dumps({"ok": True, "engine": "dynamo-mocker", "version": "1.6.1", "errors": [], "reads": []})
FAIL = json.dumps({"ok": False, "engine": "dynamo-mocker", "version": "1.6.1", "errors": ["--bogus"]})
IDENTITY = "sha256:" + "ab" * 32


class Node:
    """A state dir, an identity file and a check whose verdict and exit code the test sets."""

    def __init__(self, root: Path, state: str = "state") -> None:
        self.state, self.identity, self.runs = root / state, root / "identity", root / "runs"
        self.verdict, self.code = root / "verdict", 0
        self.identity.write_text(IDENTITY + "\n")
        self.verdict.write_text(PASS + "\n")
        self.stdin = root / "stdin"  # what the check read on its stdin (the checker program, on a node)
        body = f'echo run >> {q(str(self.runs))}; cat > {q(str(self.stdin))}; cat {q(str(self.verdict))}; exit "$0"'
        self.check = join(["sh", "-c", body])

    def run(
        self, checker: str = "checker v1", code: int = 0, identity_after: str | None = None, umask: int = 0o022
    ) -> tuple[int, str]:
        check = f"{self.check} {code}"
        if identity_after is not None:  # the image is re-tagged while the check runs
            check = f"{check}; rc=$?; echo {q(identity_after)} > {q(str(self.identity))}; (exit $rc)"
            check = f"sh -c {q(check)}"
        script = verdicts.kept_or_checked(str(self.state), f"cat {q(str(self.identity))}", check, checker)
        done = subprocess.run(["bash", "-c", f"umask {umask:03o}; {script}"], input=checker, capture_output=True,
                              text=True, timeout=30)  # fmt: skip
        return done.returncode, done.stdout

    def run_count(self) -> int:
        return len(self.runs.read_text().splitlines()) if self.runs.exists() else 0

    def kept(self) -> list[Path]:
        directory = self.state / "verdicts"
        return sorted(directory.iterdir()) if directory.exists() else []


@pytest.fixture
def node(tmp_path) -> Node:
    return Node(tmp_path)


def test_a_passing_verdict_is_kept_and_replayed_without_running_the_check(node):
    assert node.run() == (0, PASS + "\n")
    assert node.run_count() == 1 and len(node.kept()) == 1
    assert node.kept()[0].name.endswith("-" + "ab" * 32)
    code, out = node.run()
    assert (code, out) == (0, f"{verdicts.KEPT_MARK}\n{PASS}\n") and node.run_count() == 1


def test_a_rejecting_or_failed_check_is_never_kept(node):
    node.verdict.write_text(FAIL + "\n")
    assert node.run(code=1) == (1, FAIL + "\n")
    node.verdict.write_text(PASS + "\n")
    assert node.run(code=3)[0] == 3  # an ok line but a failed run
    assert node.kept() == [] and node.run_count() == 2
    node.verdict.write_text("Traceback (most recent call last):\n")
    assert node.run()[0] == 0 and node.kept() == []  # no verdict at all: nothing to keep


def test_another_image_checker_or_argv_runs_the_check_again(node):
    node.run()
    node.identity.write_text("sha256:" + "cd" * 32 + "\n")  # another image under the same tag
    assert node.run() == (0, PASS + "\n") and node.run_count() == 2
    assert node.run(checker="checker v2") == (0, PASS + "\n") and node.run_count() == 3  # a new launcher
    assert len(node.kept()) == 3


def test_an_identity_that_changes_while_the_check_runs_keeps_nothing(node):
    assert node.run(identity_after="sha256:" + "ef" * 32) == (0, PASS + "\n")
    assert node.kept() == []


@pytest.mark.parametrize("identity", ["", "none", "sha256:../../etc", "sha256:AB" + "ab" * 31, "sha256:ab cd"])
def test_without_a_clean_hex_identity_it_always_runs_and_keeps_nothing(node, identity):
    node.identity.write_text(identity + "\n")
    node.run()
    assert node.run() == (0, PASS + "\n") and node.run_count() == 2 and node.kept() == []


def test_a_state_dir_others_may_write_is_not_used(node):
    node.state.mkdir(mode=0o700)
    os.chmod(node.state, 0o777)
    node.run()
    assert node.run() == (0, PASS + "\n") and node.run_count() == 2 and node.kept() == []


def test_a_link_at_the_verdicts_place_is_not_replayed(node, tmp_path):
    node.run()
    (kept,) = node.kept()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.write_text(PASS + "\n")
    kept.unlink()
    kept.symlink_to(elsewhere)
    assert node.run() == (0, PASS + "\n") and node.run_count() == 2


def test_a_state_dir_with_spaces_and_quotes(tmp_path):
    node = Node(tmp_path, state='it\'s a "state" $dir')
    node.run()
    assert node.run()[1].startswith(verdicts.KEPT_MARK) and node.run_count() == 1
    assert node.kept()[0].parent == tmp_path / 'it\'s a "state" $dir' / "verdicts"


def test_verdicts_older_than_the_limit_are_removed_when_one_is_written(node):
    node.run()
    (old,) = node.kept()
    days = verdicts.KEPT_DAYS + 1
    os.utime(old, (old.stat().st_atime - days * 86400, old.stat().st_mtime - days * 86400))
    node.run(checker="checker v2")
    assert node.kept() != [] and old not in node.kept()


def test_a_python_envs_identity_follows_what_is_installed(tmp_path):
    """env_identity: a package added or upgraded changes it; python compiling a module does not; no env, none."""
    site = tmp_path / "env" / "lib" / "python3.11" / "site-packages"
    site.mkdir(parents=True)
    (tmp_path / "env" / "bin").mkdir()
    (tmp_path / "env" / "bin" / "python3").symlink_to(sys.executable)
    (site / "engine-1.0.dist-info").mkdir()

    def identity() -> str:
        command = verdicts.env_identity(str(tmp_path / "env"))
        return subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=30).stdout.strip()

    first = identity()
    assert len(first) == 64 and set(first) <= set("0123456789abcdef")
    (site / "__pycache__").mkdir()
    (site / "__pycache__" / "six.cpython-311.pyc").write_bytes(b"")
    assert identity() == first
    (site / "engine-1.0.dist-info").rename(site / "engine-1.1.dist-info")
    assert identity() != first
    missing = subprocess.run(["bash", "-c", verdicts.env_identity(str(tmp_path / "none"))], capture_output=True,
                             text=True, timeout=30)  # fmt: skip
    assert missing.stdout == ""


def test_the_check_still_reads_the_checker_on_stdin_and_a_replay_reads_nothing(node):
    node.run(checker="print('the checker')")
    assert node.stdin.read_text() == "print('the checker')"
    node.stdin.unlink()
    assert node.run(checker="print('the checker')")[1].startswith(verdicts.KEPT_MARK) and not node.stdin.exists()


def test_a_verdict_that_read_a_file_is_not_kept(node):
    """engine_check's "reads": the parser opened a --config file, whose content the key does not cover."""
    node.verdict.write_text(json.dumps({"ok": True, "errors": [], "reads": ["/etc/sglang.yaml"]}) + "\n")
    node.run()
    assert node.run()[0] == 0 and node.run_count() == 2 and node.kept() == []


def test_only_the_verdict_line_is_kept_and_only_if_it_fits_the_replay(node):
    node.verdict.write_text("an entrypoint's banner\n" + PASS + "\n")
    assert node.run() == (0, "an entrypoint's banner\n" + PASS + "\n")
    assert node.run()[1] == f"{verdicts.KEPT_MARK}\n{PASS}\n"
    huge = json.dumps({"ok": True, "warnings": ["x" * verdicts.REPLAY_BYTES], "reads": []})
    node.verdict.write_text(huge + "\n")
    node.run(checker="checker v2")
    assert node.run(checker="checker v2")[1] == huge + "\n" and node.run_count() == 3  # run both times


def test_kept_files_are_the_users_alone_whatever_the_umask(node):
    node.state.mkdir(mode=0o750)  # a state dir the guard accepts
    node.run(umask=0o002)
    (kept,) = node.kept()
    assert oct(kept.parent.stat().st_mode & 0o777) == "0o700" and oct(kept.stat().st_mode & 0o777) == "0o600"


def test_a_verdict_others_could_have_written_is_not_replayed(node):
    node.run()
    (kept,) = node.kept()
    os.chmod(kept.parent, 0o770)  # e.g. made by an older launcher under umask 002
    assert node.run() == (0, PASS + "\n") and node.run_count() == 2
    assert oct(kept.parent.stat().st_mode & 0o777) == "0o700"  # made private again when it kept the new one
    os.chmod(kept, 0o666)
    assert node.run() == (0, PASS + "\n") and node.run_count() == 3


def test_a_python_envs_identity_needs_its_python3_and_follows_python_variables(tmp_path):
    site = tmp_path / "env" / "lib" / "python3.11" / "site-packages"
    site.mkdir(parents=True)
    command = verdicts.env_identity(str(tmp_path / "env"))

    def identity(**env: str) -> str:
        environ = {"PATH": os.environ["PATH"], **env}
        return subprocess.run(["bash", "-c", command], capture_output=True, text=True, env=environ, timeout=30).stdout

    assert identity() == ""  # no python3 in the env: the PATH's would run, which nothing names
    (tmp_path / "env" / "bin").mkdir()
    (tmp_path / "env" / "bin" / "python3").symlink_to(sys.executable)
    plain = identity()
    assert plain and identity(PYTHONPATH="/opt/patches") != plain and identity(SGLANG_X="1") != plain
    assert identity(SSH_CONNECTION="10.0.0.1 50000 10.0.0.2 22") == plain
