"""`down` with requests in flight, for real on this machine (etcd, NATS, the Dynamo frontend and two
mockers as local processes, tests.helpers.local_stack): every streamed chat completion in flight completes
whole; `down --now` cuts them at once. Both as a user runs them: a fresh `launcher down` subprocess while
the streams run, through the frontend, from a thread pool here."""

from __future__ import annotations

import http.client
import json
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml

from launcher.plan.drain import worker_in_flight
from tests.helpers import assert_gone, free_port, fresh_env, local_stack

pytestmark = pytest.mark.slow

STREAMS = 4
# The mocker at speedup 1 makes ~150 tokens/s per stream: ~10 s, longer than a `launcher down` takes to
# start and read the counts on a loaded machine, short enough for the test.
TOKENS = 1500
DECODE_SYSTEM_PORT = 5  # index in local_stack's ports (configs/local.yaml's 19091)


def launcher(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    argv = [sys.executable, "-m", "launcher", *args]
    return subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True, timeout=180)


@contextmanager
def deployment(tmp_path: Path, name: str) -> Iterator[tuple[str, dict[str, str], int, tuple[int, ...]]]:
    """The local stack up, its mockers at speedup 1 (streams long enough to be caught in flight)."""
    data, ports = local_stack(tmp_path, name)
    for group in data["groups"].values():
        group["args"]["speedup-ratio"] = 1
    data["drain_timeout"] = 60
    config = tmp_path / "local.yaml"
    config.write_text(yaml.safe_dump(data, sort_keys=False))
    port = free_port()
    env = {**fresh_env(), "LAUNCHER_PORT": str(port)}
    try:
        up = launcher("up", str(config), env=env, cwd=tmp_path)
        assert up.returncode == 0, up.stdout + up.stderr
        yield str(config), env, port, ports
    finally:
        launcher("down", str(config), "--now", env=env, cwd=tmp_path)
    assert_gone([], (port, *ports))


def stream(port: int, i: int) -> dict:
    """One streamed chat completion: how many chunks came, its finish_reason, any error (None: none)."""
    body = {
        "model": "tiny",
        "messages": [{"role": "user", "content": f"tell me a long story {i}"}],
        "max_tokens": TOKENS,
        "stream": True,
    }
    out: dict = {"chunks": 0, "finish": None, "error": None}
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request("POST", "/v1/chat/completions", json.dumps(body), {"Content-Type": "application/json"})
        response = conn.getresponse()
        if response.status != 200:
            out["error"] = f"HTTP {response.status}"
            return out
        for line in response:
            data = line.strip().removeprefix(b"data:").strip()
            if not data or data == b"[DONE]" or not line.startswith(b"data:"):
                continue
            chunk = json.loads(data)
            if "error" in chunk or not chunk.get("choices"):
                out["error"] = out["error"] or chunk.get("error", chunk)
                continue
            out["chunks"] += 1
            out["finish"] = chunk["choices"][0].get("finish_reason") or out["finish"]
    except (OSError, http.client.HTTPException, ValueError) as exc:
        out["error"] = repr(exc)
    finally:
        conn.close()
    return out


def wait_in_flight(port: int, count: int, limit: float = 30) -> None:
    """Until the decode mocker's /metrics says `count` requests are in flight (every stream has begun)."""
    deadline = time.monotonic() + limit
    seen = None
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                seen = worker_in_flight(r.read().decode())
        except (OSError, ValueError) as exc:
            seen = repr(exc)
        if seen == count:
            return
        time.sleep(0.1)
    raise AssertionError(f"the decode worker never had {count} requests in flight (last read: {seen})")


def down_while_streaming(tmp_path: Path, name: str, *flags: str) -> tuple[subprocess.CompletedProcess, list, float]:
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
    return down, results, took


def test_down_lets_every_stream_in_flight_finish_whole(tmp_path):
    down, results, _ = down_while_streaming(tmp_path, "drain-wait")
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
    down, results, took = down_while_streaming(tmp_path, "drain-now", "--now")
    # Every stream ended short of its tokens, with no finish_reason: cut, not finished.
    for r in results:
        assert r["finish"] is None and r["chunks"] < TOKENS, results
    assert "down --now: drain skipped, in-flight requests are cut" in down.stdout, down.stdout
    assert "drain:" not in down.stdout and "draining" not in down.stdout, down.stdout
    audit = (tmp_path / "state" / "drain-now" / "audit.log").read_text()
    assert "drain skipped (--now)" in audit and '"drain decode-r0' not in audit, audit
