"""Issue 28's case 2 for real on this machine (the local tier: etcd, NATS, the Dynamo frontend and the
mockers as local processes): streams keep flowing through the frontend while `launcher scale decode=3`
adds a replica and `launcher scale decode=2` takes it away again. Not one request fails and not one
stream is cut; the third replica served requests, and was drained (its streams finished) before it
stopped; the file stays the truth (`up` of it afterwards is `unchanged`)."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from launcher.plan.build import REPLICA_PORT_STEP
from tests.helpers import STREAM_TOKENS, StreamLoad, launcher, listening, stream
from tests.local.test_drain_local import DECODE_SYSTEM_PORT, deployment, in_flight, wait_in_flight

pytestmark = pytest.mark.slow

CLIENTS = 4  # streams in flight at any time
MAX_STREAMS_PER_CLIENT = 30  # bounds the load loop whatever happens


def two_decode_replicas(data: dict) -> None:
    data["groups"]["decode"]["replicas"] = 2


def wait_serving(port: int, limit: float = 60) -> int:
    """Until the worker whose /metrics is at this port holds a request; its count."""
    deadline = time.monotonic() + limit
    seen: int | str = "not read"
    while time.monotonic() < deadline:
        seen = in_flight(port)
        if isinstance(seen, int) and seen > 0:
            return seen
        time.sleep(0.2)
    raise AssertionError(f"the third replica never served a request (last read: {seen})")


def test_scale_out_and_in_under_streaming_load_drops_nothing(tmp_path):
    with deployment(tmp_path, "scale-load", two_decode_replicas) as (config, env, port, ports):
        original = Path(config).read_text()
        third = ports[DECODE_SYSTEM_PORT] + 2 * REPLICA_PORT_STEP
        with StreamLoad(port, clients=CLIENTS, per_client=MAX_STREAMS_PER_CLIENT) as load:
            started = time.monotonic()
            out = launcher("scale", "decode=3", config, "--skip-doctor", env=env, cwd=tmp_path)
            scale_out = time.monotonic() - started
            assert out.returncode == 0, out.stdout + out.stderr
            assert Path(config).read_text() == original.replace("replicas: 2", "replicas: 3")
            served = wait_serving(third)
            started = time.monotonic()
            scaled_in = launcher("scale", "decode=2", config, "--skip-doctor", env=env, cwd=tmp_path)
            scale_in = time.monotonic() - started
        said = scaled_in.stdout + scaled_in.stderr
        assert scaled_in.returncode == 0, said
        assert Path(config).read_text() == original
        again = launcher("up", config, "--skip-doctor", env=env, cwd=tmp_path)
        down, held, last = down_after_the_file_lost_a_replica(config, env, port, ports, tmp_path)
        audit = (tmp_path / "state" / "scale-load" / "audit.log").read_text().splitlines()
    drained = [line for line in said.splitlines() if "drain: decode.2-r0 on node 0: " in line]
    results, failed, cut = load.results, load.failed(), load.cut()
    print(
        f"\nscale decode 2->3 under load: {scale_out:.1f}s; 3->2 (drain included): {scale_in:.1f}s; "
        f"{len(results)} streams, {len(failed)} failed, {len(cut)} truncated; the third replica held {served} at once"
        f"\nscale-in: {drained}"
        f"\ndown after replicas: 1 by hand: decode.1 held {held}; streams {[r['finish'] for r in last]}; {down.stdout}"
    )
    assert failed == [] and cut == [], (failed, cut)
    assert "draining 1 worker(s) the file no longer has before removing them" in said, said
    assert len(drained) == 1 and "drained in" in drained[0], said
    actions = [json.loads(line)["action"] for line in audit]
    assert any(a.startswith("drain decode.2-r0 on node 0: ") and "(scale-in" in a for a in actions), actions
    assert not listening(third)  # the third replica is gone
    assert again.returncode == 0 and "unchanged" in again.stdout + again.stderr, again.stdout + again.stderr
    # `down` after `replicas:` was lowered by hand: the replica the file lost is drained with the others.
    assert down.returncode == 0, down.stdout + down.stderr
    assert "down: draining 3 worker(s) first" in down.stdout, down.stdout
    assert f"drain: decode.1-r0 on node 0: {held} request(s) in flight, drained in" in down.stdout, down.stdout
    assert all(r["error"] is None and r["finish"] == "length" and r["chunks"] >= STREAM_TOKENS for r in last), last
    assert any(a.startswith("drain decode.1-r0 on node 0: ") for a in actions), actions


def down_after_the_file_lost_a_replica(config: str, env: dict, port: int, ports: tuple, cwd: Path):
    """`replicas: 1` written by hand (no `scale`: replica 1 keeps running), then `launcher down` while
    streams are on replica 1; (down, how many replica 1 held, the streams' outcomes)."""
    second = ports[DECODE_SYSTEM_PORT] + REPLICA_PORT_STEP
    Path(config).write_text(Path(config).read_text().replace("replicas: 2", "replicas: 1"))
    with ThreadPoolExecutor(CLIENTS) as pool:
        streams = [pool.submit(stream, port, 100 + i) for i in range(CLIENTS)]
        _, held = wait_in_flight(ports[DECODE_SYSTEM_PORT], second, CLIENTS)  # every stream begun, some on each
        down = launcher("down", config, env=env, cwd=cwd)
        return down, held, [s.result(timeout=120) for s in streams]
