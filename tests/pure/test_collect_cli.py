"""`launcher collect --out` as a user runs it, against nodes that never answer (TEST-NET addresses): where the
bundle goes, one line for a place it cannot go, and no truncated file under the asked name."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.helpers import REPO, fresh_env
from tests.helpers import UNREACHABLE as CONFIG

LAUNCHER = str(REPO / ".venv" / "bin" / "launcher")


def collect(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    (tmp_path / "deploy.yaml").write_text(CONFIG)
    return subprocess.run(
        [LAUNCHER, "collect", "deploy.yaml", "--connect-timeout", "1", *args],
        cwd=tmp_path, capture_output=True, text=True, timeout=120, env=fresh_env(),
    )  # fmt: skip


@pytest.mark.parametrize(("out", "expected"), [("/proc/x.tgz", "cannot write /proc/x.tgz"), ("nodir/", "nodir/")])
def test_an_out_that_cannot_be_written_is_one_line_exit_2(tmp_path, out, expected):
    proc = collect(tmp_path, "--out", out)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --out: ") and expected in lines[0], lines
    assert sorted(p.name for p in tmp_path.iterdir()) == ["deploy.yaml"]


@pytest.mark.parametrize("slash", ["", "/"])
def test_an_out_directory_gets_the_bundle_inside_it(tmp_path, slash):
    (tmp_path / "bundles").mkdir()
    proc = collect(tmp_path, "--out", "bundles" + slash)
    assert proc.returncode == 1, proc.stdout + proc.stderr  # the node did not answer: named, the rest collected
    written = [p.name for p in (tmp_path / "bundles").iterdir()]
    assert len(written) == 1 and written[0].startswith("launcher-collect-rv-") and written[0].endswith(".tar.gz")
    assert f"wrote bundles/{written[0]}" in proc.stdout and "missing: node 0" in proc.stderr


def test_ctrl_c_leaves_no_file_under_the_asked_name(tmp_path):
    (tmp_path / "deploy.yaml").write_text(CONFIG)
    out = tmp_path / "bundle.tar.gz"
    proc = subprocess.Popen(
        [LAUNCHER, "collect", "deploy.yaml", "--connect-timeout", "60", "--out", str(out)],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=fresh_env(),
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        started = lambda: len(list(tmp_path.iterdir())) > 1  # noqa: E731 (the bundle, under whatever name)
        while not started() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert started() and proc.poll() is None, "the bundle was never started"
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
    assert proc.returncode != 0, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["deploy.yaml"], err
