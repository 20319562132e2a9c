"""`down` with requests in flight, for real on this machine (etcd, NATS, the Dynamo frontend and two
mockers as local processes, tests.helpers.local_stack): every streamed chat completion in flight completes
whole; `down --now` cuts them at once. Both as a user runs them: a fresh `launcher down` subprocess while
the streams run, through the frontend, from a thread pool here. And request migration (issue 28, case 5): one
of two decode replicas killed mid-stream, its requests complete on the other one, counted from the
frontend's log (and fail without migration)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml

from launcher.plan.build import REPLICA_PORT_STEP
from launcher.plan.drain import worker_in_flight
from tests.helpers import STREAM_SPEEDUP, STREAM_TOKENS, assert_gone, launcher, local_file, migrations, stream

pytestmark = pytest.mark.slow

STREAMS = 4
TOKENS = STREAM_TOKENS  # ~10 s a stream at STREAM_SPEEDUP (see tests.helpers)
SPREAD = 6  # streams over two decode replicas (the frontend's round robin puts some on each)
DECODE_SYSTEM_PORT = 5  # index in local_stack's ports (configs/local.yaml's 19091)


@contextmanager
def deployment(tmp_path: Path, name: str, edit=None) -> Iterator[tuple[str, dict[str, str], int, tuple[int, ...]]]:
    """The local stack up, its mockers at STREAM_SPEEDUP (streams long enough to be caught in flight); `edit`
    changes the file's data first."""

    def slow(data: dict) -> None:
        for group in data["groups"].values():
            group["args"]["speedup-ratio"] = STREAM_SPEEDUP
        data["drain_timeout"] = 60
        if edit is not None:
            edit(data)

    config, _, ports, port, env = local_file(tmp_path, name, slow)
    try:
        up = launcher("up", config, env=env, cwd=tmp_path)
        assert up.returncode == 0, up.stdout + up.stderr
        yield config, env, port, ports
    finally:
        launcher("down", config, "--now", env=env, cwd=tmp_path)
    assert_gone([], (port, *ports))


def in_flight(port: int) -> int | str:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            return worker_in_flight(r.read().decode())
    except (OSError, ValueError) as exc:
        return repr(exc)


def wait_in_flight(*ports_and_count: int, limit: float = 30) -> list[int | str]:
    """Until the decode mockers at these system ports hold `count` requests in flight together, each at
    least one (every stream has begun); returns each one's count."""
    *ports, count = ports_and_count
    deadline = time.monotonic() + limit
    seen: list[int | str] = []
    while time.monotonic() < deadline:
        seen = [in_flight(p) for p in ports]
        if all(isinstance(n, int) and n > 0 for n in seen) and sum(seen) == count:  # type: ignore[arg-type]
            return seen
        time.sleep(0.1)
    raise AssertionError(f"the decode workers never had {count} requests in flight (last read: {seen})")


def down_while_streaming(tmp_path: Path, name: str, *flags: str) -> tuple[subprocess.CompletedProcess, list]:
    """`launcher down FLAGS` once every stream is in flight; (down, each stream's outcome)."""
    with deployment(tmp_path, name) as (config, env, port, ports):
        with ThreadPoolExecutor(STREAMS) as pool:
            streams = [pool.submit(stream, port, i) for i in range(STREAMS)]
            wait_in_flight(ports[DECODE_SYSTEM_PORT], STREAMS)
            started = time.monotonic()
            down = launcher("down", config, *flags, env=env, cwd=tmp_path)
            took = time.monotonic() - started
            results = [s.result(timeout=120) for s in streams]
        print(f"\n{' '.join(['down', *flags])}: {took:.1f}s; streams: {results}")
        assert down.returncode == 0, down.stdout + down.stderr
        assert_gone([], (port, *ports))
    return down, results


def test_down_lets_every_stream_in_flight_finish_whole(tmp_path):
    down, results = down_while_streaming(tmp_path, "drain-wait")
    for r in results:
        assert r["error"] is None and r["finish"] == "length" and r["chunks"] >= TOKENS, results
    out = down.stdout
    assert "down: draining 2 worker(s) first, up to 60s (drain_timeout; --now skips it)" in out, out
    assert f"drain: decode-r0 on node 0: {STREAMS} request(s) in flight, drained in" in out, out
    assert "drain: prefill-r0 on node 0: " in out and out.index("prefill-r0") < out.index("decode-r0"), out
    assert "removed 5 container(s)" in out, out
    audit = (tmp_path / "state" / "drain-wait" / "audit.log").read_text().splitlines()
    drained = [json.loads(line)["action"] for line in audit if '"drain decode-r0' in line]
    assert len(drained) == 1 and f"{STREAMS} request(s) in flight, drained in" in drained[0], audit


def test_down_now_cuts_the_streams_at_once(tmp_path):
    down, results = down_while_streaming(tmp_path, "drain-now", "--now")
    # Every stream ended short of its tokens, with no finish_reason: cut, not finished.
    for r in results:
        assert r["finish"] is None and r["chunks"] < TOKENS, results
    assert "down --now: drain skipped, in-flight requests are cut" in down.stdout, down.stdout
    assert "drain:" not in down.stdout and "draining" not in down.stdout, down.stdout
    audit = (tmp_path / "state" / "drain-now" / "audit.log").read_text()
    assert "drain skipped (--now)" in audit and '"drain decode-r0' not in audit, audit


MIGRATE_TOKENS = 150  # ~4 s a stream: long enough to be killed mid-stream at KILL_AT tokens, short to wait out
KILL_AT = 25  # tokens every stream has streamed when the decode rank dies


def two_decode_replicas(migration_limit: int | None):
    """Issue 28, case 5's deployment on this machine: decode with `replicas: 2` (decode-r0, decode.1-r0,
    each its own mocker and system port); the frontend's migration limit left at its default (None) or set."""

    def edit(data: dict) -> None:
        data["groups"]["decode"]["replicas"] = 2
        if migration_limit is not None:
            data["services"]["frontend"]["migration_limit"] = migration_limit

    return edit


def kill_decode_r0_while_streaming(tmp_path: Path, name: str, migration_limit: int | None) -> tuple[int, list, str]:
    """Streams spread over two decode replicas; decode-r0's engine is SIGKILLed mid-stream. Returns how
    many streams it held, each stream's outcome, and the frontend's log lines about migration."""
    with deployment(tmp_path, name, two_decode_replicas(migration_limit)) as (config, env, port, ports):
        status = launcher("status", config, "--json", env=env, cwd=tmp_path)
        services = {s["service"]: s for s in json.loads(status.stdout)["services"]}
        second = ports[DECODE_SYSTEM_PORT] + REPLICA_PORT_STEP  # decode.1's system port
        with ThreadPoolExecutor(SPREAD) as pool:
            progress: list[dict] = [{} for _ in range(SPREAD)]
            streams = [pool.submit(stream, port, i, progress[i], max_tokens=MIGRATE_TOKENS) for i in range(SPREAD)]
            held, _ = wait_in_flight(ports[DECODE_SYSTEM_PORT], second, SPREAD)
            # Mid-stream: every stream has its first tokens (a rank dying under load, not at its start).
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and min(p.get("chunks", 0) for p in progress) < KILL_AT:
                time.sleep(0.05)
            os.killpg(int(services["decode-r0"]["id"]), signal.SIGKILL)  # the rank dies: no drain, no goodbye
            results = [s.result(timeout=120) for s in streams]
        logs = launcher("logs", "--role", "frontend", "--grep", "migration", "-c", config, env=env, cwd=tmp_path)
    print(f"\nmigration_limit {migration_limit}: decode-r0 held {held}; streams: {results}")
    return int(held), results, logs.stdout


def test_a_request_on_a_decode_replica_that_dies_continues_on_the_other(tmp_path):
    """Issue 28, case 5, with the default migration limit: every stream completes whole, and the frontend's
    log shows exactly the streams decode-r0 held leaving it and completing on decode.1."""
    held, results, logs = kill_decode_r0_while_streaming(tmp_path, "migrate", None)
    for r in results:
        assert r["error"] is None and r["finish"] == "length" and r["chunks"] >= MIGRATE_TOKENS, results
    # The migrated streams came whole, not a token short or repeated: as many chunks as the others.
    assert len({r["chunks"] for r in results}) == 1, results
    assert "Request migration enabled (limit: 3)" in logs, logs
    moved = migrations(logs)
    left = {m.left for m in moved.values()}
    completed = [request for request, m in moved.items() if m.on is not None and m.on != m.left]
    print(f"on the killed decode-r0: {held}; migrated: {len(moved)} (from worker {left}); completed on the"
          f" other replica: {len(completed)}")  # fmt: skip
    assert len(left) == 1 and len(moved) == held == len(completed) >= 1, (held, moved, logs)


def test_without_migration_the_requests_on_the_dead_worker_fail(tmp_path):
    """The same as above with services.frontend.migration_limit: 0: what the default saves."""
    held, results, logs = kill_decode_r0_while_streaming(tmp_path, "no-migrate", 0)
    failed = [r for r in results if r["error"] is not None or r["finish"] != "length"]
    assert len(failed) == held >= 1, results
    assert migrations(logs) == {}, logs


def test_a_group_moved_off_a_node_its_gpus_exclude_is_drained_first(tmp_path, monkeypatch):
    """`watch` moving the groups of a node whose GPU verdict is `drain` (it still serves, unlike a node lost
    over SSH): the streams in flight on it complete whole before its ranks are removed, and the drain is in
    the audit log. Decode runs on a second node on this machine ("localhost": what Dynamo is told is
    127.0.0.1); its spare refuses SSH, so the start there fails after the drain (what `watch` then does is
    tests/local/test_spares_local.py's)."""
    from launcher.commands import watch
    from launcher.operations import lost
    from launcher.operations.context import Connection, connected, target
    from launcher.plan import spares
    from tests.helpers import free_port

    def edit(data: dict) -> None:
        data["nodes"].append({"name": "gpu-sick", "address": "localhost"})
        data["groups"]["decode"]["nodes"] = ["gpu-sick"]
        data["watch"] = {"lost_after": 5}

    with deployment(tmp_path, "drain-move", edit) as (config, env, port, ports):
        monkeypatch.setenv("LAUNCHER_PORT", env["LAUNCHER_PORT"])  # the file's frontend port, read by target()
        data = yaml.safe_load(Path(config).read_text())  # the spare added once up is done (doctor would refuse it)
        data["nodes"].append(
            {"name": "spare", "address": "127.0.0.2", "ssh": {"port": free_port(), "connect_timeout": 2}}
        )
        Path(config).write_text(yaml.safe_dump(data, sort_keys=False))
        t = target(config)
        said: list[str] = []
        with connected(t, Connection(connect_timeout=2)), ThreadPoolExecutor(STREAMS) as pool:
            streams = [pool.submit(stream, port, i) for i in range(STREAMS)]
            wait_in_flight(ports[DECODE_SYSTEM_PORT], STREAMS)
            w = watch.Watcher(t, type("Said", (), {"log": staticmethod(said.append)})(), watch.units(t.plan))
            outcome = lost.moved(w, 1, t.plan.nodes[2], spares.substitute(t.loaded, t.plan, 1, 2), ["decode"])
            results = [s.result(timeout=120) for s in streams]
    print(f"\n{said}\n{outcome}\n{results}")
    for r in results:
        assert r["error"] is None and r["finish"] == "length" and r["chunks"] >= TOKENS, results
    assert "draining 1 worker(s) before moving their group(s), up to 60s" in said, said
    drained = f"drain: decode-r0 on node 1: {STREAMS} request(s) in flight, drained in"
    assert any(line.startswith(drained) for line in said), said
    assert outcome.startswith("watch: node 2 (spare 127.0.0.2) replaces node 1 (gpu-sick localhost) for decode: failed")
    audit = (tmp_path / "state" / "drain-move" / "audit.log").read_text()
    assert "(watch: moved off, drain_timeout 60s)" in audit and '"drain decode-r0 on node 1: ' in audit, audit
