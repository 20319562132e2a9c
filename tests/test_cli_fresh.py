"""Every verb as a user runs it: `launcher ...` in a fresh interpreter, never inside pytest's process.

Import order inside one pytest process hides real breakage (an import cycle that only bites when a
verb's own module is the first one loaded), so these run the installed console script.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
CONFIGS = sorted((REPO / "configs").glob("*.yaml"))
LAUNCHER = str(Path(sys.executable).with_name("launcher"))


def launcher(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([LAUNCHER, *args], capture_output=True, text=True, timeout=timeout, cwd=REPO)


def assert_no_traceback(proc: subprocess.CompletedProcess) -> None:
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr[-2000:]


@pytest.mark.parametrize("config", CONFIGS, ids=[c.stem for c in CONFIGS])
def test_migrate_dry_run_on_every_shipped_config(config: Path) -> None:
    proc = launcher("migrate", str(config), "--sglang", "0.5.21", "--dry-run")
    assert_no_traceback(proc)
    assert proc.returncode == 0, proc.stderr
    # Either a diff of this file or the one line saying there is nothing to change.
    assert proc.stdout.startswith(f"--- {config}") or proc.stdout.strip() == (
        f"{config}: nothing to change for SGLang 0.5.21"
    ), proc.stdout[:500]


BAD_COMMAND_LINES = [
    (["plan", "configs/dsr1-104gpu.yaml", "--format", "nope"], "--format", "'nope' is not one of"),
    (["doctor", "--host-key-policy", "maybe"], "--host-key-policy", "'maybe' is not one of"),
    (["up", "--parallel", "0"], "--parallel", "got '0'"),
    (["logs", "--rank", "x"], "--rank", "got 'x'"),
    (["plan", "configs/local.yaml", "--bogus"], "--bogus", "No such option"),
    (["migrate", "configs/local.yaml"], "--sglang", "Missing option"),
    (["stage", "configs/local.yaml"], "--from", "Missing option"),
    (["stage", "configs/local.yaml", "--from", "/tmp", "--to", "rel"], "--to", "expected an absolute path"),
    (["stage", "configs/local.yaml", "--from", "/no/such/dir"], "--from", "no such directory here"),
    (["image", "push", "--fanout", "0"], "--fanout", "got '0'"),
    (["image", "push", "configs/local.yaml"], "runtime", "needs `runtime: docker`"),
    (["image", "build", "-f", "/no/Dockerfile", "--tag", "x:1"], "-f", "no such file"),
]


@pytest.mark.parametrize(
    ("args", "option", "says"), BAD_COMMAND_LINES, ids=[" ".join(a) for a, _, _ in BAD_COMMAND_LINES]
)
def test_a_bad_command_line_is_one_line_and_exit_2(args: list[str], option: str, says: str) -> None:
    proc = launcher(*args)
    assert_no_traceback(proc)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ") and option in lines[0] and says in lines[0], lines[0]
    assert proc.stdout == ""


def test_an_unreachable_docker_engine_is_one_line_and_exit_1() -> None:
    env = dict(os.environ, DOCKER_HOST="unix:///nonexistent/docker.sock")
    proc = subprocess.run(
        [LAUNCHER, "image", "build", "-f", "Dockerfile.wideep", "--tag", "x:1"],
        capture_output=True, text=True, timeout=120, cwd=REPO, env=env,
    )  # fmt: skip
    assert_no_traceback(proc)
    assert proc.returncode == 1, proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("error: cannot reach the local Docker engine (unix:///nonexistent/docker.sock): ")
