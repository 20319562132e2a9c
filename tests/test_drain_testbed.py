"""`down` drains on the docker runtime (the testbed: an sshd and a dockerd per node): the decode mockers,
in their containers on two nodes, get SIGTERM through `docker kill` over SSH, their in-flight streams
complete through the frontend on node 0, and only then is anything removed."""

from __future__ import annotations

import shlex
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest
import yaml

from launcher.plan.drain import worker_in_flight
from tests.helpers import REPO, launcher_on, stream
from tests.test_drain_local import STREAMS, TOKENS

pytestmark = pytest.mark.testbed

LABEL = "label=launcher.deployment=testbed-small"


def decode_in_flight(testbed, ports: list[tuple[str, int]]) -> list[int | None]:
    out: list[int | None] = []
    for address, port in ports:
        try:
            with urllib.request.urlopen(f"http://{address}:{port}/metrics", timeout=5) as r:
                out.append(worker_in_flight(r.read().decode()))
        except (OSError, ValueError):
            out.append(None)
    return out


def test_down_drains_the_decode_containers_over_ssh(testbed, tmp_path):
    data = yaml.safe_load((REPO / "configs" / "testbed-small.yaml").read_text())
    for group in data["groups"].values():
        group["args"]["speedup-ratio"] = 1  # streams of ~10 s: caught in flight
    config = tmp_path / "small.yaml"
    config.write_text(yaml.safe_dump(data, sort_keys=False))
    up = launcher_on(testbed, config, "up", cwd=tmp_path)
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        frontend = testbed.nodes[0][1]
        # decode ranks are the last two nodes of a 4-node testbed (prefill takes nodes 0 and 1)
        ports = [(testbed.nodes[i][1], data["groups"]["decode"]["system_port"]) for i in (2, 3)]
        progress: list[dict] = [{} for _ in range(STREAMS)]
        with ThreadPoolExecutor(STREAMS) as pool:
            streams = [pool.submit(stream, 8000, i, progress[i], frontend) for i in range(STREAMS)]
            # Every stream has its first tokens (the workers' /metrics read from here may time out on a
            # busy machine: the streams themselves say they are in flight).
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and not all(p.get("chunks") for p in progress):
                time.sleep(0.1)
            assert all(p.get("chunks") for p in progress), f"not every stream started within 60 s: {progress}"
            in_flight = decode_in_flight(testbed, ports)
            down = launcher_on(testbed, config, "down", cwd=tmp_path)
            results = [s.result(timeout=120) for s in streams]
        print(f"\n{down.stdout}\nstreams: {results}")
        assert down.returncode == 0, down.stdout + down.stderr
        for r in results:
            assert r["error"] is None and r["finish"] == "length" and r["chunks"] >= TOKENS, results
        lines = [line for line in down.stdout.splitlines() if line.startswith("drain: decode-r")]
        assert len(lines) == 2 and all("drained in" in line for line in lines), down.stdout
        counted = sum(int(line.split(": ")[2].split()[0]) for line in lines)
        # What down waited for: the streams still running when it read the counts (all of them unless the
        # machine is so busy that some ended first), every one of which then completed (above).
        assert 1 <= counted <= STREAMS, (down.stdout, in_flight)
        for i in range(len(testbed.nodes)):
            assert testbed.ssh(i, f"docker ps -aq --filter {LABEL}").stdout.split() == []
    finally:
        launcher_on(testbed, config, "down", "--now", cwd=tmp_path)


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
