"""Ctrl-C during `up`: a clean stop that says what was started and how to remove it; the lock is released."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
import yaml

from tests.helpers import Lines, free_port, local_stack

pytestmark = pytest.mark.slow


def test_ctrl_c_during_up(tmp_path):
    data, _ = local_stack(tmp_path, "interrupt-test")
    # the decode mocker never finds etcd: it runs but never registers, so `up` keeps waiting
    data["groups"]["decode"]["env"] = {"ETCD_ENDPOINTS": "http://127.0.0.1:9"}
    cfg = tmp_path / "interrupt.yaml"
    cfg.write_text(yaml.safe_dump(data, sort_keys=False))
    env = {**os.environ, "LAUNCHER_PORT": str(free_port())}
    argv = [sys.executable, "-m", "launcher"]
    proc = subprocess.Popen(
        [*argv, "up", str(cfg), "--skip-doctor"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        # Interrupted while it waits: every service started, the frontend still short of the decode worker.
        progress = Lines(proc.stderr)
        waiting = progress.until(lambda line: "frontend registry: waiting for" in line and "`backend`" in line, 60)
        assert waiting and proc.poll() is None, progress.text()
        proc.send_signal(signal.SIGINT)
        err = progress.rest(30)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    try:
        assert proc.returncode == 130, err
        assert "Traceback" not in err
        assert "interrupted: up stopped" in err and "interrupt-test-decode-r0 on node 0" in err
        assert f"launcher down -c {cfg}" in err
        assert not (tmp_path / "state" / "interrupt-test" / "lock").exists(), "the lock was left behind"
    finally:
        down = subprocess.run(
            [*argv, "down", str(cfg)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
        )
    assert down.returncode == 0, down.stderr
