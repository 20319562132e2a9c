"""The embedded default, for real: etcd, NATS, the Dynamo frontend and two mockers as local processes.

The test runs configs/local.yaml with its fixed ports moved and its state in the test's directory
(tests.helpers.local_stack): a quickstart of this checkout (the same file on its own ports, its state in
the checkout's .launcher/) is left alone, and the `quickstart` fixture proves it."""

from __future__ import annotations

import contextlib
import fcntl
import json
import time
from pathlib import Path

import pytest
import yaml

from tests.helpers import (
    LOCAL_PORTS,
    REPO,
    assert_gone,
    assert_workers_logged,
    chat,
    fresh_env,
    launcher,
    listening,
    local_file,
    printed_curl_reply,
    session_members,
    timed_up,
)

pytestmark = pytest.mark.slow

QUICKSTART_PORT = 8000  # the frontend's port when LAUNCHER_PORT is not set, as in the README's quickstart
# Two suites' quickstarts would hold the same ports: one at a time on this machine.
QUICKSTART_LOCK = Path("/tmp/launcher-test-quickstart.lock")


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory):
    """A quickstart of this checkout running while this module's tests run: `launcher up configs/local.yaml`
    as the README has it (its fixed ports, the frontend on 8000, its state in the checkout's .launcher/).

    Yields ("ours", (env, cwd, {service: id})) for one it started (taken down at the end), or ("user's", ports)
    where a quickstart, a user's, already holds the ports: then that one is the witness, never touched."""
    cwd = tmp_path_factory.mktemp("quickstart")
    env = {k: v for k, v in fresh_env().items() if k != "LAUNCHER_PORT"}
    config = str(REPO / "configs" / "local.yaml")
    with open(QUICKSTART_LOCK, "a") as lock:
        deadline = time.monotonic() + 900
        while True:
            with contextlib.suppress(BlockingIOError):
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            assert time.monotonic() < deadline, f"{QUICKSTART_LOCK} held for 15 minutes"
            time.sleep(1)
        held = tuple(p for p in (QUICKSTART_PORT, *LOCAL_PORTS) if listening(p))
        if held:
            yield "user's", held
            return
        up = launcher("up", config, env=env, cwd=cwd)
        try:
            assert up.returncode == 0, up.stdout + up.stderr
            yield "ours", (env, cwd, running_services(env, cwd))
        finally:
            down = launcher("down", config, env=env, cwd=cwd)
            assert down.returncode == 0, down.stdout + down.stderr
        assert_gone([], (QUICKSTART_PORT, *LOCAL_PORTS))


def running_services(env: dict[str, str], cwd: Path) -> dict[str, str]:
    """`launcher status --json` in cwd: {service: its id (the session leader's pid)} of those running."""
    status = launcher("status", "--json", env=env, cwd=cwd)
    assert status.returncode == 0, status.stdout + status.stderr
    return {s["service"]: s["id"] for s in json.loads(status.stdout)["services"] if s["state"] == "running"}


def test_up_status_down_on_this_machine(tmp_path, quickstart):
    config, _, ports, port, env = local_file(tmp_path, "local-e2e")
    up = timed_up(config, env, tmp_path, "local up")
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
        assert logs.returncode == 0 and "[local decode r0]" in logs.stdout, logs.stdout + logs.stderr

        again = launcher("up", config, env=env, cwd=tmp_path)
        assert again.returncode == 0 and "unchanged" in again.stdout + again.stderr
        check_kept_verdicts(Path(yaml.safe_load(Path(config).read_text())["state_dir"]), config, env, tmp_path)
    finally:
        down = launcher("down", config, env=env, cwd=tmp_path)
    assert down.returncode == 0, down.stderr
    assert_gone(pids, (port, *ports))


def check_kept_verdicts(state: Path, config: str, env: dict[str, str], cwd: Path) -> None:
    """The first `up` kept each role's passing parser verdict (frontend, prefill, decode); the next `up`s
    replay them and judge them as fresh ones: a kept verdict that rejects stops `up` and says it was kept,
    while `doctor` runs the parsers afresh and passes; without the kept files `up` checks and keeps again."""
    kept = sorted((state / "verdicts").iterdir())
    assert len(kept) == 3 and all('"ok": true' in f.read_text() for f in kept), kept
    original = {f: f.read_text() for f in kept}
    for f in kept:
        f.write_text(json.dumps({"ok": False, "engine": "x", "version": "1", "errors": ["planted"]}) + "\n")
    refused = launcher("up", config, env=env, cwd=cwd)
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert "rejects: planted (kept from an earlier check: the same argv on the same engine install)" in refused.stderr
    assert "nothing was started" in refused.stderr
    doctor = launcher("doctor", config, env=env, cwd=cwd)
    assert doctor.returncode == 0 and "planted" not in doctor.stdout + doctor.stderr, doctor.stdout + doctor.stderr
    for f in kept:
        f.unlink()
    again = launcher("up", config, env=env, cwd=cwd)
    assert again.returncode == 0 and "unchanged" in again.stdout + again.stderr, again.stderr
    assert {f: f.read_text() for f in sorted((state / "verdicts").iterdir())} == original


def test_the_checkouts_quickstart_still_serves(quickstart):
    """After the test above (up, a second up, down of its own stack): the quickstart answers as before, its
    services the same processes (nothing reconciled, restarted or taken down)."""
    whose, before = quickstart
    if whose == "user's":
        assert [p for p in before if not listening(p)] == [], f"a port of the running quickstart closed: {before}"
        return
    env, cwd, services = before
    assert len(services) == 5, services
    chat(f"http://127.0.0.1:{QUICKSTART_PORT}")
    assert running_services(env, cwd) == services
