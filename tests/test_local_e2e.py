"""The embedded default, for real: etcd, NATS, the Dynamo frontend and two mockers as local processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import (
    LOCAL_PORTS,
    REPO,
    assert_gone,
    assert_workers_logged,
    free_port,
    printed_curl_reply,
    session_members,
)

pytestmark = pytest.mark.slow

LAUNCHER = [sys.executable, "-m", "launcher"]


def launcher(*args: str, env: dict[str, str], cwd: Path, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([*LAUNCHER, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)


def test_up_status_down_on_this_machine(tmp_path):
    port = free_port()
    env = {**os.environ, "LAUNCHER_PORT": str(port)}
    config = str(REPO / "configs" / "local.yaml")
    started = time.monotonic()
    up = launcher("up", config, env=env, cwd=tmp_path)
    print(f"\nlocal up to ready: {time.monotonic() - started:.1f}s")
    pids: list[int] = []
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        assert "Traceback" not in up.stderr
        reply = printed_curl_reply(up.stdout)
        # The request crossed prefill and decode: both workers logged its id.
        assert_workers_logged(
            reply, lambda role, request: launcher("logs", "--role", role, "--grep", request, env=env, cwd=tmp_path)
        )

        # Without CONFIG: the last `up` in this directory is used.
        status = launcher("status", "--json", env=env, cwd=tmp_path)
        assert status.returncode == 0, status.stderr
        data = json.loads(status.stdout)
        assert data["endpoint"] == f"http://127.0.0.1:{port}"
        running = [s for s in data["services"] if s["state"] == "running"]
        assert len(running) == 5 and {s["role"] for s in running} == {"etcd", "nats", "frontend", "prefill", "decode"}
        # The process runtime reports each service's session-leader pid as its id.
        leaders = [int(s["id"]) for s in running]
        assert all(Path(f"/proc/{p}").exists() for p in leaders)
        # down must end every process of those sessions, not only their leaders
        pids = sorted({pid for leader in leaders for pid in session_members(leader)})
        assert len(pids) > len(leaders), pids

        logs = launcher("logs", "--role", "decode", "--tail", "50", env=env, cwd=tmp_path)
        assert logs.returncode == 0 and "[local decode r0]" in logs.stdout

        again = launcher("up", config, env=env, cwd=tmp_path)
        assert again.returncode == 0 and "unchanged" in again.stdout + again.stderr
    finally:
        down = launcher("down", config, env=env, cwd=tmp_path)
    assert down.returncode == 0, down.stderr
    assert_gone(pids, (port, *LOCAL_PORTS))
