"""The embedded default from a fresh clone, run by an unprivileged user (uid 65534, no capabilities).

Root only prepares what a sysadmin would: a fresh clone owned by the user and its Python environment
(`uv sync` from the lock file, built on the system's world-readable Python, because uv's own interpreter
and cache live under /root, which the user cannot enter). Everything the launcher does (up, status, logs,
down) and every service it starts then run as that user: the process runtime needs no privilege.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import unavailable
from tests.helpers import (
    REPO,
    assert_gone,
    assert_workers_logged,
    free_port,
    local_ports_moved,
    printed_curl_reply,
    session_members,
)

pytestmark = pytest.mark.slow

NOBODY = 65534
SYSTEM_PYTHON = "/usr/bin/python3"
# What each service of configs/local.yaml runs under its session's wrapper.
SERVICE_PROGRAM = {
    "etcd": "etcd",
    "nats": "nats-server",
    "frontend": "dynamo.frontend",
    "prefill-r0": "dynamo.mocker",
    "decode-r0": "dynamo.mocker",
}


@pytest.fixture
def clone_for_nobody() -> Iterator[tuple[Path, tuple[int, ...]]]:
    if os.geteuid() != 0:
        unavailable("needs root to switch to an unprivileged user")
    setpriv, uv, git = shutil.which("setpriv"), shutil.which("uv"), shutil.which("git")
    if not (setpriv and uv and git and Path(SYSTEM_PYTHON).exists()):
        unavailable("needs setpriv, uv, git and a system Python")
    # Not under pytest's tmp_path: that is 0700 root. A fresh directory in /tmp, the user's own.
    top = Path(tempfile.mkdtemp(prefix="launcher-nobody-", dir="/tmp"))
    try:
        os.chmod(top, 0o755)
        clone = top / "launcher"
        subprocess.run([git, "clone", "--quiet", "--no-hardlinks", str(REPO), str(clone)], check=True, timeout=120)
        env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "UV_PROJECT_ENVIRONMENT")}
        # The runtime needs only the project and the `local` group (Dynamo, etcd, NATS); copies, so that
        # nothing in the environment is a hard link into root's cache.
        subprocess.run(
            [uv, "sync", "--frozen", "--quiet", "--no-dev", "--python", SYSTEM_PYTHON, "--link-mode", "copy"],
            cwd=clone,
            env=env,
            check=True,
            timeout=600,
        )
        # A quickstart of this machine's user may hold configs/local.yaml's fixed ports: the clone's moved.
        local = clone / "configs" / "local.yaml"
        text, ports = local_ports_moved(local.read_text())
        local.write_text(text)
        (top / "home").mkdir()
        subprocess.run(["chown", "-R", f"{NOBODY}:{NOBODY}", str(top)], check=True, timeout=120)
        yield clone, ports
    finally:
        shutil.rmtree(top, ignore_errors=True)


def test_local_up_down_as_an_unprivileged_user(clone_for_nobody: tuple[Path, tuple[int, ...]]) -> None:
    clone, ports = clone_for_nobody
    port = free_port()
    env = {
        "HOME": str(clone.parent / "home"),
        "PATH": f"{clone / '.venv' / 'bin'}:/usr/bin:/bin",
        "LAUNCHER_PORT": str(port),
        "LANG": "C.UTF-8",
    }
    as_nobody = [shutil.which("setpriv"), f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]

    def launcher(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
        argv = [*as_nobody, str(clone / ".venv" / "bin" / "launcher"), *args]
        return subprocess.run(argv, env=env, cwd=clone, capture_output=True, text=True, timeout=timeout)

    started = time.monotonic()
    up = launcher("up", "configs/local.yaml")
    print(f"\nlocal up to ready as uid {NOBODY}: {time.monotonic() - started:.1f}s")
    pids: list[int] = []
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        assert "Traceback" not in up.stderr
        reply = printed_curl_reply(up.stdout)
        # The request crossed prefill and decode: both workers logged its id.
        assert_workers_logged(reply, lambda role, request: launcher("logs", "--role", role, "--grep", request))

        status = launcher("status", "--json")
        assert status.returncode == 0, status.stderr
        running = [s for s in json.loads(status.stdout)["services"] if s["state"] == "running"]
        assert len(running) == 5, running
        # Every process of every service's session (the wrapper leading it, the service under it and whatever
        # that started) runs as the unprivileged user: real, effective, saved and filesystem uid.
        sessions = {s["service"]: session_members(int(s["id"])) for s in running}
        pids = sorted({pid for members in sessions.values() for pid in members})
        for service, members in sessions.items():
            commands = [Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode() for pid in members]
            assert any(SERVICE_PROGRAM[service] in c for c in commands), (service, commands)
            for pid in members:
                uids = next(line for line in Path(f"/proc/{pid}/status").read_text().splitlines() if line[:4] == "Uid:")
                assert uids.split()[1:] == [str(NOBODY)] * 4, f"{service}: pid {pid} is not the user's: {uids}"
        print(f"{len(pids)} processes in {len(sessions)} sessions, all uid {NOBODY}")

        logs = launcher("logs", "--role", "decode", "--tail", "20")
        assert logs.returncode == 0 and "[local decode r0]" in logs.stdout, logs.stderr
    finally:
        down = launcher("down", "configs/local.yaml")
    assert down.returncode == 0, down.stderr
    assert_gone(pids, (port, *ports))
    # State stayed inside the user's clone; nothing was written as root.
    owners = {path.stat().st_uid for path in (clone / ".launcher").rglob("*")}
    assert owners == {NOBODY}, owners
