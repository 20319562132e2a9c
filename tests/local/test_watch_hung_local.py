"""A hung rank on this machine (process runtime, the real Dynamo stack of configs/local.yaml): the decode
mocker runs at a decode speed of almost nothing (`--decode-speedup-ratio`), so under load its process lives,
its `/health` answers and it holds requests, but it makes no token progress. The file gives decode
`watch: {hung_after: 2}`: no longer than `status` waits between its two reads (a one-shot view names hung
only a stall that covers the window; a longer one is `stalled`: tests/pure/test_watch_policy.py). Prefill has
none: its request waits on the stuck decode to take its KV, so it too holds work without progress; the file
leaves it to the decode's restart. `status` and `top` name decode hung (and not while it is idle), `watch
--dry-run` says it would restart it and does nothing, and `watch` restarts its group, and only it.
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
import yaml

from tests.helpers import ChatLoad, Lines, free_port, local_stack, wait_for

pytestmark = pytest.mark.slow

LAUNCHER = [sys.executable, "-m", "launcher"]


def stack(tmp_path: Path) -> tuple[Path, dict[str, str], int]:
    data, _ = local_stack(tmp_path, "hung")
    data["groups"]["decode"]["args"] = {"speedup-ratio": 10, "decode-speedup-ratio": 0.00001}
    data["groups"]["decode"]["watch"] = {"hung_after": 2}
    path = tmp_path / "hung.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("LAUNCHER_CONFIG", "LAUNCHER_INVENTORY")}
    return path, {**env, "LAUNCHER_PORT": str(port)}, port


def launcher(*args: str, cwd: Path, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([*LAUNCHER, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def rows(path: Path, cwd: Path, env: dict[str, str]) -> dict[str, dict]:
    status = launcher("status", str(path), "--json", cwd=cwd, env=env)
    assert "Traceback" not in status.stderr, status.stderr
    return {s["service"]: s for s in json.loads(status.stdout)["services"]}


def status_ok(path: Path, cwd: Path, env: dict[str, str]) -> dict | None:
    status = launcher("status", str(path), "--json", cwd=cwd, env=env)
    return json.loads(status.stdout) if status.returncode == 0 else None


def watching(path: Path, cwd: Path, env: dict[str, str], *extra: str) -> tuple[subprocess.Popen, Lines]:
    proc = subprocess.Popen(
        [*LAUNCHER, "watch", str(path), "--interval", "0.5", *extra],
        cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    return proc, Lines(proc.stderr)


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def test_a_rank_stalled_under_load_is_named_hung_and_its_group_restarted(tmp_path):
    path, env, port = stack(tmp_path)
    audit = tmp_path / "state" / "hung" / "audit.log"
    try:
        began_up = time.monotonic()
        # --no-wait: up's own smoke request would wait on this decode for minutes; ready is checked here
        up = launcher("up", str(path), "--skip-doctor", "--no-wait", cwd=tmp_path, env=env, timeout=240)
        assert up.returncode == 0, up.stdout + up.stderr
        print(f"\nup --no-wait: {time.monotonic() - began_up:.1f}s")
        ready = wait_for(lambda: status_ok(path, tmp_path, env), 120, interval=1, what="the stack to serve")
        print(f"serving: {time.monotonic() - began_up:.1f}s")
        idle = {s["service"]: s for s in ready["services"]}
        assert idle["decode-r0"]["health"] in ("healthy", "running"), idle  # idle: nothing in flight, not hung
        started = time.monotonic()
        load = ChatLoad(f"http://127.0.0.1:{port}", workers=2, max_tokens=20, limit=120)
        try:
            load.__enter__()
            seen = wait_for(
                lambda: (r := rows(path, tmp_path, env))["decode-r0"]["health"].startswith("hung") and r,
                60, what="status to name decode hung",
            )  # fmt: skip
            print(f"status named decode hung {time.monotonic() - started:.1f}s into the load")
            assert "request(s) running, no token progress for" in seen["decode-r0"]["health"], seen
            assert seen["prefill-r0"]["health"] == "healthy", seen  # no window in the file: not judged
            first = seen["decode-r0"]["id"]
            top = launcher("top", str(path), "--json", "--interval", "2", cwd=tmp_path, env=env)
            states = {r["service"]: r["state"] for r in json.loads(top.stdout)["rows"]}
            assert states["decode-r0"].startswith("hung (") and states["prefill-r0"] == "up", states
            audit_before = audit.read_text()

            print(f"top named it too {time.monotonic() - started:.1f}s into the load")
            dry, lines = watching(path, tmp_path, env, "--dry-run")
            try:
                said = lines.until(lambda line: "group decode: saw" in line, 40)
            finally:
                stop(dry)
            assert said is not None and "would restart it (1/5); dry run: nothing done" in said, lines.text()
            assert "decode r0 hung (" in said and "Traceback" not in lines.text(), said
            assert rows(path, tmp_path, env)["decode-r0"]["id"] == first  # nothing restarted
            assert audit.read_text() == audit_before and not (tmp_path / "state" / "hung" / "lock").exists()

            print(f"dry run said it {time.monotonic() - started:.1f}s into the load")
            proc, lines = watching(path, tmp_path, env)
            try:
                began = time.monotonic()
                done = lines.until(lambda line: "group decode: saw" in line and "restarted it" in line, 90)
                print(f"watch restarted the hung group in {time.monotonic() - began:.1f}s")
            finally:
                stop(proc)
        finally:
            load.stop.set()  # its requests stuck on the slow decode end with the stack (threads are daemons)
        text = lines.text()
        assert done is not None and "decode r0 hung (" in done and "(1/5, back-off 5s before another)" in done, text
        assert "group decode: policy 5 restart(s), back-off 5s doubling, hung after 2s" in text, text
        assert "restarting group prefill" not in text and "Traceback" not in text, text
        assert rows(path, tmp_path, env)["decode-r0"]["id"] != first
        assert "watch: restarting group decode (1/5): local decode r0 hung" in audit.read_text()
    finally:
        # --now: requests still stuck on the slow decode are not drained (up to drain_timeout) first
        down = launcher("down", str(path), "--now", cwd=tmp_path, env=env)
    assert down.returncode == 0, down.stderr
