"""`watch` and `up --watch` on this machine (process runtime, no testbed): giving up on a group, and
supervision.

The group here is the `command` engine running plain shell, so these tests take seconds; the testbed
tests (test_watch_testbed.py) do the same with the real Dynamo stack in Docker.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import Lines, local_command_deployment

pytestmark = pytest.mark.slow

LAUNCHER = [sys.executable, "-m", "launcher"]


def config(tmp_path: Path, script: str) -> Path:
    return local_command_deployment(tmp_path, "watch-local", "worker", script)


def launcher(*args: str, cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([*LAUNCHER, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout)


def worker_pid(path: Path, cwd: Path) -> int | None:
    status = launcher("status", str(path), "--json", cwd=cwd)
    rows = [s for s in json.loads(status.stdout)["services"] if s["role"] == "worker" and s["state"] == "running"]
    return int(rows[0]["id"]) if rows else None


def test_watch_gives_up_on_a_group_past_its_budget_and_goes_on_until_interrupted(tmp_path):
    path = config(tmp_path, "sleep 1; exit 3")
    watch = None
    try:
        up = launcher("up", str(path), "--skip-doctor", cwd=tmp_path)
        assert up.returncode == 0, up.stderr
        started = time.monotonic()
        watch = subprocess.Popen(
            [*LAUNCHER, "watch", str(path), "--interval", "0.5", "--backoff", "0.5", "--max-restarts", "2"],
            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        lines = Lines(watch.stderr)
        gave_up = lines.until(lambda line: "gave up after 2 restart(s)" in line, 60)
        print(f"\nwatch gave up after 2 restarts in {time.monotonic() - started:.1f}s")
        assert gave_up is not None and "restarted no more (`launcher up` recreates it if it died" in gave_up, (
            lines.text()
        )
        time.sleep(2)  # rounds go on: the group is restarted no more, and not said again
        assert watch.poll() is None, lines.text()
        watch.send_signal(signal.SIGINT)
        errs = lines.rest(30)
        assert watch.wait(10) == 0, errs
        assert "restarting group worker (1/2): local worker r0 exited (exit 3)" in errs
        assert "restarting group worker (2/2)" in errs and "restarting group worker (3/" not in errs, errs
        assert errs.count("gave up after") == 1, errs
        stopped = errs.strip().splitlines()[-2:]
        assert "given up on, not restarted since: group worker (after 2 restart(s))" in stopped[0], errs
        assert stopped[1] == "watch stopped" and "Traceback" not in errs, errs
        audit = (tmp_path / "state" / "watch-local" / "audit.log").read_text()
        assert audit.count("watch: restarting group worker") == 2 and audit.count("watch: gave up on") == 1, audit
    finally:
        if watch is not None and watch.poll() is None:
            watch.kill()
            watch.wait(10)
        launcher("down", str(path), cwd=tmp_path)


def test_up_watch_restarts_a_killed_worker_until_interrupted(tmp_path):
    path = config(tmp_path, "exec sleep 600")
    proc = subprocess.Popen(
        [*LAUNCHER, "up", str(path), "--skip-doctor", "--watch"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        first = None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and first is None:
            first = worker_pid(path, tmp_path)
            time.sleep(0.3)
        assert first is not None, "up --watch never started the worker"
        os.killpg(first, signal.SIGKILL)
        killed = time.monotonic()
        second = None
        while time.monotonic() < killed + 30:
            second = worker_pid(path, tmp_path)
            if second not in (None, first):
                break
            time.sleep(0.3)
        assert second not in (None, first), "the killed worker was not restarted"
        print(f"\nup --watch: killed worker running again after {time.monotonic() - killed:.1f}s")
        proc.send_signal(signal.SIGINT)
        out, errs = proc.communicate(timeout=20)
        assert "watch stopped" in errs and "Traceback" not in errs, errs
        assert "ready: watch-local" in out
        assert "restarting group worker (1/5)" in errs
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        launcher("down", str(path), cwd=tmp_path)


def test_down_from_another_shell_ends_watch_instead_of_being_undone(tmp_path):
    path = config(tmp_path, "exec sleep 600")
    assert launcher("up", str(path), "--skip-doctor", cwd=tmp_path).returncode == 0
    watch = subprocess.Popen(
        [*LAUNCHER, "watch", str(path), "--interval", "0.5", "--backoff", "0.5"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        # watch is supervising: a worker killed now is restarted (seen in its output) before the down
        lines = Lines(watch.stderr)
        assert lines.until(lambda line: line.startswith("[") and "watching watch-local" in line, 30), lines.text()
        first = worker_pid(path, tmp_path)
        assert first is not None
        os.killpg(first, signal.SIGKILL)
        assert lines.until(lambda line: "group worker serving again" in line, 30), lines.text()
        assert worker_pid(path, tmp_path) not in (None, first)
        down = launcher("down", str(path), cwd=tmp_path)
        assert down.returncode == 0, down.stderr
        downed = time.monotonic()
        errs = lines.rest(30)
        try:
            watch.wait(10)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"watch goes on after down:\n{errs}") from None
        print(f"\nwatch ended {time.monotonic() - downed:.1f}s after down")
        assert watch.returncode == 0, errs
        assert "watch ends: watch-local was taken down" in errs and "launcher down" in errs, errs
        assert errs.count("restarting") == 1 and "Traceback" not in errs, errs  # the kill's, none after down
        assert worker_pid(path, tmp_path) is None, "watch brought the deployment back after down"
        # `up` clears the mark: a later watch supervises again.
        assert launcher("up", str(path), "--skip-doctor", cwd=tmp_path).returncode == 0
        assert not (tmp_path / "state" / "watch-local" / "down").exists()
    finally:
        if watch.poll() is None:
            watch.kill()
            watch.wait(10)
        launcher("down", str(path), cwd=tmp_path)
