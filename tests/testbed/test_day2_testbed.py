"""Issue 28, cases 1-5 and `down --now`, under AIPerf's streaming load, on the testbed's docker runtime (an sshd and a
dockerd per node): a mocker deployment of 2 prefill and 2 decode replicas, one node each (nodes 0-3, the services on
node 0; node 4 free for a third decode replica), every mocker taking STARTUP seconds to "load its model"
(`--startup-time`), so that a roll step is slow enough to matter. Each step is a fresh `launcher` subprocess.

The load is the real AIPerf 0.13 client of `launcher bench` (its env: scripts/bench-env), run here against the
frontend on node 0: streamed chat completions of exactly OSL tokens at a fixed concurrency, its per-request
records exported (`--export-level records`). A case starts it, waits until requests flow, makes its change,
waits until requests that began after it have completed, then ends it with Ctrl-C (SIGINT: AIPerf stops
sending and writes its results; the CONCURRENCY requests in flight at that moment, begun after the change, it
drops: they are in neither its records nor its error count, so the case ends a fixed time after its change, not
a --benchmark-duration chosen to outlast it). What is asserted comes from AIPerf's own export: its error count
0, every recorded request streamed all its OSL tokens, and the load covered the change (requests began before,
during and after it).

1. a decode flag changed, rolling `up` (one replica at a time, each drained first): 0 failed, 0 truncated;
   p99 TTFT during the roll against before it (printed); both decode containers on the new spec after;
2. `scale decode=3` (a replica on the free node), then `scale decode=2` (drained first): 0 failed;
3. a change that makes the new replica exit: rolled back, exit 1 naming the replica and the cause, 0 failed,
   the previous containers running again;
4. `down` with AIPerf's requests in flight (long streams): every one completes whole, each worker drained
   first; nothing is left on any node;
5. the deployment up again: a decode replica's container killed under AIPerf (`docker kill` on its node), with
   migration on (the default): 0 failed, 0 truncated, the requests it held mid-stream (and those routed to it
   before the frontend noticed) counted in the frontend's log, each completed on the other replica;
and case 4's `down --now`, last (the one decode replica left serving), with AIPerf's long streams in flight: no
drain, every one cut at once. Two `down`s on one deployment cost one more `up`, not a second deployment."""

from __future__ import annotations

import shlex
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from launcher.plan.drain import worker_in_flight
from tests.aiperf_load import CONCURRENCY, OSL, AIPerf, check_load, judge, summary_line
from tests.bench_env import bench_env  # noqa: F401
from tests.helpers import REPO, STREAM_SPEEDUP, Migration, launcher_on, migrations, wait_for

pytestmark = pytest.mark.testbed

NAME = "testbed-small"
STARTUP = 3  # seconds each mocker takes to start (--startup-time); the rolled spec takes STARTUP + 1
# ~13 s: streams still running when `down` (its start-up, then the prefill phase) reads the decode workers'
# counts, on a busy machine too (375 tokens at this speed, 1,500 at speedup 1, once ended first in a CI run at load 20)
LONG_OSL = 500
MIGRATE_OSL = 100  # ~2.7 s a stream (case 5): decode-r0 always holds some mid-stream when it is killed
FRONTEND_PORT = 8000
DECODE_PORT = 9090  # the decode mockers' system port (/metrics): replicas on nodes of their own share it
DECODE_NODES = (2, 3)  # prefill's 2 replicas take nodes 0 and 1, decode's the next two
SPARE = 4  # the free node `scale decode=3` puts the third decode replica on
LABEL = f"label=launcher.deployment={NAME}"


@dataclass
class Deployment:
    testbed: object
    config: Path
    data: dict
    dir: Path
    aiperf: Path

    def write(self) -> None:
        self.config.write_text(yaml.safe_dump(self.data, sort_keys=False))

    def launcher(self, *args: str) -> subprocess.CompletedProcess:
        return launcher_on(self.testbed, self.config, *args, cwd=self.dir)

    def load(self, name: str, **kw) -> AIPerf:
        return AIPerf(self.aiperf, f"http://{self.testbed.nodes[0][1]}:{FRONTEND_PORT}", self.dir / name, **kw)


@pytest.fixture(scope="module")
def deployed(testbed, bench_env, tmp_path_factory):  # noqa: F811
    work = tmp_path_factory.mktemp("day2")
    data = yaml.safe_load((REPO / "configs" / "testbed-small.yaml").read_text())
    for group in ("prefill", "decode"):
        data["groups"][group].update(nodes=1, replicas=2)
        data["groups"][group]["args"] = {"speedup-ratio": STREAM_SPEEDUP, "startup-time": STARTUP}
    data["drain_timeout"] = 60
    d = Deployment(testbed, work / "small.yaml", data, work, bench_env)
    d.write()
    up = d.launcher("up")
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        yield d
    finally:
        d.launcher("down", "--now")


def decode_containers(testbed, nodes: tuple[int, ...]) -> dict[str, str]:
    """name -> 'state spec' of the deployment's decode containers on these nodes (held ones included)."""
    out = {}
    for i in nodes:
        listing = testbed.ssh(
            i,
            f"docker ps -a --filter {LABEL} --filter label=launcher.role=decode"
            " --format '{{.Names}} {{.State}} {{.Label \"launcher.spec\"}}'",
        ).stdout
        for line in listing.splitlines():
            name, state, spec = line.split()
            out[name] = f"{state} {spec}"
    return out


# -- the cases ------------------------------------------------------------------------------------------


def test_rolling_up_a_decode_flag_under_aiperf(deployed):
    d = deployed
    before = decode_containers(d.testbed, DECODE_NODES)
    assert sorted(before) == [f"{NAME}-decode-r0", f"{NAME}-decode.1-r0"], before
    assert all(v.startswith("running ") for v in before.values()), before

    d.data["groups"]["decode"]["args"]["startup-time"] = STARTUP + 1
    d.write()
    with d.load("roll") as load:
        roll, window = load.during(lambda: d.launcher("up"))
        took = (window[1] - window[0]) / 1e9
        load.stop()
    judged = judge(load)
    print(summary_line("rolling up of 2 decode replicas", judged, took, [window]))
    check_load(load, judged, [window])
    out = roll.stdout + roll.stderr
    assert roll.returncode == 0, out
    assert out.count("rolled decode") == 2 and "smoke request(s) until one reached it" in out, out
    after = decode_containers(d.testbed, DECODE_NODES)
    assert sorted(after) == sorted(before), after  # the held ones removed
    assert all(after[n].startswith("running ") and after[n] != before[n] for n in after), (before, after)


def test_scale_decode_out_and_in_under_aiperf(deployed):
    d = deployed
    third = f"{NAME}-decode.2-r0"
    with d.load("scale") as load:
        out3, grow = load.during(lambda: d.launcher("scale", "decode=3"))
        added = decode_containers(d.testbed, (SPARE,))
        out2, shrink = load.during(lambda: d.launcher("scale", "decode=2"))
        load.stop()
    judged = judge(load)
    print(summary_line("scale decode=3", judged, (grow[1] - grow[0]) / 1e9, [grow]))
    print(summary_line("scale decode=2", judged, (shrink[1] - shrink[0]) / 1e9, [shrink]))
    check_load(load, judged, [grow, shrink])
    assert out3.returncode == 0, out3.stdout + out3.stderr
    assert list(added) == [third] and added[third].startswith("running "), added
    assert out2.returncode == 0, out2.stdout + out2.stderr
    assert f"drain: decode.2-r0 on node {SPARE}: " in out2.stdout + out2.stderr, out2.stdout + out2.stderr
    assert decode_containers(d.testbed, (SPARE,)) == {}
    assert "replicas: 2" in d.config.read_text()


def test_a_new_replica_that_exits_is_rolled_back_under_aiperf(deployed):
    d = deployed
    before = decode_containers(d.testbed, DECODE_NODES)
    d.data["groups"]["decode"]["args"]["extra-engine-args"] = "/nonexistent/engine.json"
    d.write()
    with d.load("rollback") as load:
        bad, window = load.during(lambda: d.launcher("up"))
        load.stop()
    judged = judge(load)
    print(summary_line("rolled back", judged, (window[1] - window[0]) / 1e9, [window]))
    check_load(load, judged, [window])
    out = bad.stdout + bad.stderr
    assert bad.returncode == 1, out
    assert "rolling up failed on replica decode: " in out and "/nonexistent/engine.json" in out, out
    assert "rolled back: decode runs the previous spec again" in out, out
    assert decode_containers(d.testbed, DECODE_NODES) == before  # the previous containers, running
    del d.data["groups"]["decode"]["args"]["extra-engine-args"]
    d.write()


def decode_in_flight(testbed, nodes: tuple[int, ...] = DECODE_NODES) -> int:
    """The requests in flight on the decode workers of these nodes together; -1 while one cannot be read."""
    total = 0
    for i in nodes:
        try:
            with urllib.request.urlopen(f"http://{testbed.nodes[i][1]}:{DECODE_PORT}/metrics", timeout=5) as r:
                total += worker_in_flight(r.read(4 << 20).decode())
        except (OSError, ValueError):
            return -1
    return total


def test_down_lets_aiperf_requests_in_flight_complete(deployed):
    d = deployed
    with d.load("down", osl=LONG_OSL, count=CONCURRENCY) as load:
        # every stream on a decode worker (the frontend's round robin spreads them over both)
        wait_for(lambda: decode_in_flight(d.testbed) == CONCURRENCY, 180, 0.3, f"{CONCURRENCY} streams on decode")
        down = d.launcher("down")
        code = load.finish()
    judged = judge(load)
    print(f"\n{down.stdout}\nAIPerf ({CONCURRENCY} streams of {LONG_OSL} tokens): exit {code}, {len(judged.whole)}"
          f" whole, {len(judged.bad)} failed or truncated")  # fmt: skip
    assert down.returncode == 0, down.stdout + down.stderr
    assert code == 0, load.tail()
    assert judged.bad == [] and len(judged.whole) == CONCURRENCY, judged.bad
    assert load.summary().get("error_request_count", {}).get("avg", 0) == 0, load.summary().get("error_summary")
    lines = [line for line in down.stdout.splitlines() if line.startswith("drain: decode")]
    assert len(lines) == 2 and all("drained in" in line for line in lines), down.stdout
    counted = sum(int(line.split(": ")[2].split()[0]) for line in lines)
    # What down waited for: the streams still running when it read the counts (all of them unless the
    # machine is so busy that some ended first), every one of which then completed (above).
    assert 1 <= counted <= CONCURRENCY, down.stdout
    for i in range(SPARE + 1):
        assert d.testbed.ssh(i, f"docker ps -aq --filter {LABEL}").stdout.split() == []


def frontend_log(testbed) -> str:
    """The frontend's log lines about request migration (what `launcher logs --role frontend --grep
    migration` shows), read on node 0."""
    return testbed.ssh(0, f"docker logs {NAME}-frontend 2>&1 | grep -F migration").stdout


def test_a_decode_replica_killed_under_aiperf_its_requests_complete_on_the_other(deployed):
    """Case 5, on the module's deployment brought up again after case 4's `down` (an `up`, not a second
    deployment): decode-r0's container killed (`docker kill`: no drain, no goodbye) while AIPerf streams
    through both decode replicas. The frontend (migration on by default) moves the streams it held to
    decode.1 mid-stream, and the requests it still routes to the dead one before it notices: AIPerf sees 0
    errors and every request whole; the frontend's log counts the migrated ones, each completed on decode.1."""
    d = deployed
    began = time.monotonic()
    again = d.launcher("up")
    print(f"\nup again after case 4: {time.monotonic() - began:.1f}s")
    assert again.returncode == 0, again.stdout + again.stderr
    node = DECODE_NODES[0]
    assert "Request migration enabled (limit: 3)" in frontend_log(d.testbed)

    def cut() -> dict[str, Migration]:
        return {k: m for k, m in migrations(frontend_log(d.testbed)).items() if m.reason == "disconnected"}

    def kill() -> int:
        held = wait_for(lambda: max(decode_in_flight(d.testbed, (node,)), 0), 60, 0.2, "streams on decode-r0")
        killed = d.testbed.ssh(node, f"docker kill {NAME}-decode-r0")
        assert killed.returncode == 0, killed.stderr
        # until the streams it held have left it and completed elsewhere (~2.7 s a stream)
        wait_for(lambda: (c := cut()) and all(m.on for m in c.values()), 60, 0.5, "the cut streams completed")
        return held

    with d.load("migrate", osl=MIGRATE_OSL) as load:
        held, window = load.during(kill)
        load.stop()
    judged = judge(load)
    moved = migrations(frontend_log(d.testbed))
    mid = [m for m in moved.values() if m.reason == "disconnected"]
    recorded = {r["metadata"].get("x_request_id"): r for r in judged.whole + judged.bad}
    seen = [m for m in moved.values() if m.client_id in recorded]  # not those AIPerf's Ctrl-C dropped
    print(summary_line("decode-r0 killed", judged, (window[1] - window[0]) / 1e9, [window]).replace(
        f"OSL {OSL}", f"OSL {MIGRATE_OSL}") + f"; decode-r0 held {held} streams; migrated: {len(mid)} cut"
        f" mid-stream, {len(moved) - len(mid)} routed to it after its death; of them {len(seen)} recorded by"
        f" AIPerf, {sum(m.on not in (None, m.left) for m in seen)} completed on the other replica")  # fmt: skip
    check_load(load, judged, [window])
    assert len(mid) >= 1 and len({m.left for m in moved.values()}) == 1, moved  # all from decode-r0
    assert all(m.on not in (None, m.left) for m in mid + seen), moved  # completed on decode.1 (none retried on r0)
    assert all(recorded[m.client_id] in judged.whole for m in seen), moved  # whole, as AIPerf counts (again)
    containers = decode_containers(d.testbed, DECODE_NODES)
    assert containers[f"{NAME}-decode-r0"].startswith("exited "), containers
    assert containers[f"{NAME}-decode.1-r0"].startswith("running "), containers


def test_down_now_cuts_aiperf_requests_in_flight_at_once(deployed):
    """Case 4's `down --now`, the deployment's last use (decode.1 serving alone since case 5): with every
    AIPerf stream in flight it returns without draining, and AIPerf reports every one cut."""
    d = deployed
    serving = tuple(i for i in DECODE_NODES if "running" in str(decode_containers(d.testbed, (i,))))
    with d.load("down-now", osl=LONG_OSL, count=CONCURRENCY) as load:
        every = lambda: decode_in_flight(d.testbed, serving) == CONCURRENCY  # noqa: E731
        wait_for(every, 180, 0.3, f"{CONCURRENCY} streams on decode")
        began = time.monotonic()
        down = d.launcher("down", "--now")
        took = time.monotonic() - began
        code = load.finish()
    judged = judge(load)
    # Cut: each record an error (the stream broken mid-chunk) or short of its tokens (closed between chunks:
    # no usage came, so AIPerf has no token count); none whole. All failed: AIPerf exits 1 with no summary.
    cut = [(r.get("error") or {}).get("type") or f"{(r.get('metrics') or {}).get('output_sequence_length')} tokens"
           for r in judged.bad]  # fmt: skip
    print(f"\n{down.stdout}\ndown --now: {took:.1f}s; AIPerf ({CONCURRENCY} streams of {LONG_OSL} tokens): exit"
          f" {code}, {len(judged.whole)} whole, {len(judged.bad)} cut: {cut}")  # fmt: skip
    assert down.returncode == 0, down.stdout + down.stderr
    assert "down --now: drain skipped, in-flight requests are cut" in down.stdout, down.stdout
    assert "drain:" not in down.stdout and "draining" not in down.stdout, down.stdout
    assert judged.whole == [] and len(judged.bad) == CONCURRENCY, (judged.whole, judged.bad)
    for i in range(SPARE + 1):
        assert d.testbed.ssh(i, f"docker ps -aq --filter {LABEL}").stdout.split() == []


# A hostile /metrics on the node's loopback: connections that send nothing (the readiness probe) are
# closed; the first request is answered one byte every 0.2 s, for 30 s at most.
TRICKLE = """
import socket, sys, time
server = socket.socket()
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind(("127.0.0.1", int(sys.argv[1])))
server.listen(4)
for _ in range(20):
    conn, _ = server.accept()
    if not conn.recv(65536):
        conn.close()
        continue
    conn.sendall(b"HTTP/1.1 200 OK\\r\\nContent-Length: 1000\\r\\n\\r\\n")
    deadline = time.monotonic() + 30
    try:
        while time.monotonic() < deadline:
            conn.sendall(b"#")
            time.sleep(0.2)
    except OSError:
        pass
    break
"""


def test_a_metrics_peer_trickling_through_the_ssh_channel_is_cut_off_at_the_deadline(testbed, tmp_path):
    """The drain's /metrics read goes through the node's SSH connection. Its cut at the deadline, a
    `shutdown`, only feigned the end of reading on a paramiko channel: the trickle went on being read."""
    from launcher.config.schema import SSHSettings
    from launcher.plan.types import Node
    from launcher.transport.host import Options
    from launcher.transport.ssh import SSHHost
    from tests.helpers import free_port, wait_for

    name, address = testbed.nodes[1]
    ssh = SSHSettings(user="root", key=str(testbed.key), known_hosts=str(testbed.known_hosts), connect_timeout=5)
    host = SSHHost(Node(1, name, address, ssh, 0), Options())
    (tmp_path / "trickle.py").write_text(TRICKLE)
    port = free_port()
    script = shlex.quote(str(tmp_path / "trickle.py"))
    started = host.run(f"setsid python3 {script} {port} >/dev/null 2>&1 < /dev/null & echo $!")
    try:
        probe = f"python3 -c 'import socket; socket.create_connection((\"127.0.0.1\", {port}), 1).close()'"
        wait_for(lambda: host.run(probe).ok, 30, 0.2, "the trickling server")
        began = time.monotonic()
        with pytest.raises(ConnectionError, match="no whole answer"):
            host.http("GET", f"http://127.0.0.1:{port}/metrics", timeout=1.0, limit=1000)
        took = time.monotonic() - began
        assert took < 5, f"the read took {took:.1f}s"
    finally:
        host.run(f"kill {shlex.quote(started.stdout.strip())} 2>/dev/null || true")
        host.close()
