"""Ctrl-C during `up`: a clean stop that says what was started and how to remove it; the lock is released."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import yaml

from tests.helpers import free_port, interrupted, local_stack

pytestmark = pytest.mark.slow


def test_ctrl_c_during_up(tmp_path):
    data, _ = local_stack(tmp_path, "interrupt-test")
    # the decode mocker never finds etcd: it runs but never registers, so `up` keeps waiting
    data["groups"]["decode"]["env"] = {"ETCD_ENDPOINTS": "http://127.0.0.1:9"}
    cfg = tmp_path / "interrupt.yaml"
    cfg.write_text(yaml.safe_dump(data, sort_keys=False))
    env = {**os.environ, "LAUNCHER_PORT": str(free_port())}
    argv = [sys.executable, "-m", "launcher"]
    # Interrupted while it waits: every service started, the frontend still short of the decode worker.
    code, err = interrupted(
        "up", str(cfg), "--skip-doctor", env=env, cwd=tmp_path,
        when=lambda line: "frontend registry: waiting for" in line and "`backend`" in line,
    )  # fmt: skip
    try:
        assert code == 130, err
        assert "Traceback" not in err
        assert "interrupted: up stopped" in err and "interrupt-test-decode-r0 on node 0" in err
        assert f"launcher down -c {cfg}" in err
        assert not (tmp_path / "state" / "interrupt-test" / "lock").exists(), "the lock was left behind"
    finally:
        down = subprocess.run(
            [*argv, "down", str(cfg)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
        )
    assert down.returncode == 0, down.stderr
