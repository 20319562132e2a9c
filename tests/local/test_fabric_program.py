"""launcher/remote/fabric_check.py run for real, as several ranks on this machine (loopback), with the CPU
torch environment of scripts/fabric-env: the rendezvous, the checked all-reduce, the figures, and each way a
rank can fail to meet the others, with the time each run took (bounded, never asserted)."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from launcher.remote.fabric_check import claim_mac
from launcher.runtime.fabric import BOOT, program_stdin
from tests.helpers import REPO, free_port

PROGRAM = REPO / "launcher" / "remote" / "fabric_check.py"
TOKEN = "a1b2c3d4e5f60718293a4b5c6d7e8f90"  # the run's secret, as the launcher sends it: on stdin

pytestmark = pytest.mark.slow


def start(python: Path, job: dict) -> subprocess.Popen:
    """The program as the launcher starts it: `python -c BOOT JOB`, the token and the program on stdin."""
    return subprocess.Popen(
        [str(python), "-c", BOOT, json.dumps(job)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def feed(p: subprocess.Popen) -> None:
    p.stdin.write(program_stdin(TOKEN, PROGRAM.read_text()))
    p.stdin.close()


def answers(procs: list[subprocess.Popen], timeout: float = 180) -> list[dict]:
    for p in procs:
        feed(p)
    out = []
    for p in procs:
        stdout = p.stdout.read()
        p.wait(timeout)
        lines = [line for line in stdout.splitlines() if line.startswith("{")]
        assert lines, f"no answer (exit {p.returncode}): {p.stderr.read()[-2000:]}"
        out.append(json.loads(lines[-1]))
    return out


def group_jobs(world: int, port: int, ranks: list[int], window: float = 5, timeout: float = 30, **extra) -> list[dict]:
    """Jobs for a group of `world` ranks on loopback; rank r plays node r. Only `ranks` are returned."""
    jobs = []
    for r in ranks:
        rdv = {"group": "g", "leader": "127.0.0.1", "port": port, "world": world, "rank": r, "timeout": timeout,
               "gloo_mb": 1, "nccl_mb": 1, "iters": 2}  # fmt: skip
        if r == 0:
            reach = {"listen": [{"port": port, "users": list(range(1, world))}], "connect": [], "window": window}
        else:
            reach = {"listen": [], "connect": [{"address": "127.0.0.1", "port": port}], "window": window}
        jobs.append({"node": r, "reach": reach, "rendezvous": rdv, **extra})
    return jobs


def test_three_ranks_meet_all_reduce_and_measure(fabric_python):
    port = free_port()
    began = time.monotonic()
    result = answers([start(fabric_python, job) for job in group_jobs(3, port, [0, 1, 2])])
    print(f"\n3 ranks on loopback: {time.monotonic() - began:.1f}s; send GB/s per rank:",
          [r["rendezvous"]["bandwidth"]["gloo"].get("ring_gbps") for r in result])  # fmt: skip
    for r in result:
        rdv = r["rendezvous"]
        assert r["ok"] and rdv["ok"] and rdv["phase"] == "done", r
        assert rdv["allreduce"]["gloo"] == {"ok": True, "elements": 4096, "wrong": 0, "first": [12288.0, 12288.0]}
        assert rdv["bandwidth"]["gloo"]["ring_gbps"] > 0 and rdv["bandwidth"]["gloo"]["allreduce_busbw_gbps"] > 0
        assert rdv["backend"] == "gloo" and rdv["gpus"] == 0
    leader = result[0]["listen"][0]
    assert leader["state"] == "temp" and leader["seen"] == [1, 2]  # both members checked in on its port first
    assert all(c["ok"] and c["temp"] for r in result[1:] for c in r["connect"])


def test_a_member_that_never_comes_stops_the_others_by_the_window(fabric_python):
    """World 3, rank 2 never started: the leader's port never hears from node 2, so at the end of the
    peer window the leader says so and the member that came stops too (nobody waits the 60 s timeout)."""
    port = free_port()
    began = time.monotonic()
    leader, member = answers([start(fabric_python, job) for job in group_jobs(3, port, [0, 1], window=3, timeout=60)])
    took = time.monotonic() - began
    print(f"\na missing rank named by the leader after {took:.1f}s (window 3 s, timeout 60 s)")
    assert leader["rendezvous"]["error"] == f"node(s) 2 never reached the dist-init port {port}"
    assert leader["rendezvous"]["aborted"] and member["rendezvous"]["aborted"]
    assert member["rendezvous"]["error"] == f"the leader stopped: node(s) 2 never reached the dist-init port {port}"
    assert took < 60  # bounded by the window, not the rendezvous timeout (the run itself could not end later)


def test_members_wait_for_a_leader_that_never_comes_until_the_timeout(fabric_python):
    """Refused: the leader may only be late (its container started after theirs), so the members keep
    trying its port for the group's timeout (6 s here), then say they waited for it."""
    port = free_port()
    began = time.monotonic()
    one, two = answers([start(fabric_python, job) for job in group_jobs(3, port, [1, 2], window=2, timeout=6)])
    print(f"\nmembers named as waiting after {time.monotonic() - began:.1f}s (timeout 6 s)")
    for r in (one, two):
        rdv = r["rendezvous"]
        assert rdv["phase"] == "reach" and not rdv["ok"] and not rdv["aborted"]
        assert rdv["waited_s"] >= 6 and rdv["error"] == f"cannot reach the leader 127.0.0.1:{port}: connection refused"
        assert r["connect"][0]["kind"] == "refused" and r["connect"][0]["seconds"] >= 5.5


def test_a_late_leader_is_waited_for(fabric_python):
    """The leader starts 4 s after its members, well past their 2 s peer window: they wait for it (it is
    refused, not dropped), and the group meets."""
    port = free_port()
    jobs = group_jobs(2, port, [0, 1], window=2, timeout=30)
    member = start(fabric_python, jobs[1])
    feed(member)
    time.sleep(4)
    leader = start(fabric_python, jobs[0])
    (first,) = answers([leader])
    second = json.loads([x for x in member.stdout.read().splitlines() if x.startswith("{")][-1])
    member.wait(60)
    assert first["rendezvous"]["ok"] and second["rendezvous"]["ok"], (first, second)
    assert second["connect"][0]["ok"] and second["connect"][0]["seconds"] >= 2


def test_a_member_whose_packets_to_its_leader_are_dropped_does_not_wait(fabric_python):
    """The leader's port drops every connection attempt (a listener whose accept queue is full: Linux then
    drops the SYNs, as a firewall's DROP rule would): the member is cut off by its own connection's
    silence at the end of the window, and never opens the store (its timeout is 60 s)."""
    import socket

    with socket.socket() as full:
        full.bind(("127.0.0.1", 0))
        full.listen(0)
        port = full.getsockname()[1]
        fillers = [socket.socket() for _ in range(3)]
        for f in fillers:  # fill the accept queue (without waiting: those beyond it are dropped too)
            f.setblocking(False)
            f.connect_ex(("127.0.0.1", port))
        time.sleep(0.5)
        (job,) = group_jobs(2, port, [1], window=3, timeout=60)
        began = time.monotonic()
        (r,) = answers([start(fabric_python, job)])
        took = time.monotonic() - began
        for f in fillers:
            f.close()
    print(f"\ncut off after {took:.1f}s: {r['connect'][0].get('error')}")
    rdv = r["rendezvous"]
    assert rdv["phase"] == "reach" and rdv["error"].startswith(f"cannot reach the leader 127.0.0.1:{port}: no answer")
    assert r["connect"][0]["kind"] == "timeout"
    assert "waited_s" in rdv and took < 60


def test_a_busy_port_is_tried_as_it_is_and_a_python_without_torch_says_so(fabric_python, tmp_path):
    import socket
    import sys

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(8)
        port = busy.getsockname()[1]
        job = {"node": 0, "reach": {"listen": [{"port": port, "users": [1]}], "connect": [
            {"address": "127.0.0.1", "port": port}], "window": 2}}  # fmt: skip
        (r,) = answers([start(fabric_python, job)])
    assert r["listen"][0]["state"] == "busy" and r["connect"][0]["ok"] and not r["connect"][0]["temp"]
    job = group_jobs(1, free_port(), [0], timeout=5)[0]
    (r,) = answers([start(Path(sys.executable), job)])  # the launcher's own python: no torch
    assert r["rendezvous"]["phase"] == "import" and "torch does not import" in r["rendezvous"]["error"]


def test_a_port_whose_node_starts_late_is_tried_again_while_late_allows(fabric_python):
    """Containers start unevenly on a busy machine: node 1 tries node 0's port, node 0 starts 4 s later,
    past node 1's 2 s window. The refusal is taken for a node not started yet (`late`: 20 s), not for a
    firewall: the port is reached, and node 0's listener sees node 1."""
    port = free_port()
    owner = {"node": 0, "reach": {"listen": [{"port": port, "users": [1]}], "connect": [], "window": 2, "late": 20}}
    user = {"node": 1, "reach": {"listen": [], "connect": [{"address": "127.0.0.1", "port": port}], "window": 2,
                                 "late": 20}}  # fmt: skip
    first = start(fabric_python, user)
    feed(first)
    time.sleep(4)
    (served,) = answers([start(fabric_python, owner)])
    tried = json.loads([x for x in first.stdout.read().splitlines() if x.startswith("{")][-1])
    first.wait(60)
    print(f"\nreached a port whose node started 4 s late after {tried['connect'][0]['seconds']}s")
    assert tried["connect"][0]["ok"] and tried["connect"][0]["temp"] and tried["connect"][0]["seconds"] >= 2
    assert served["listen"][0]["state"] == "temp" and served["listen"][0]["seen"] == [1]


# -- issue 24: the listeners and the claims ------------------------------------------------------------


def _claim(port: int, node: int, mac: str | None, address: str = "127.0.0.1") -> tuple[bytes, bytes]:
    """A hostile peer speaking the check's own protocol: read the greeting, claim to be `node` (with `mac`,
    or none at all), return (greeting, the listener's answer)."""
    import socket

    with socket.create_connection((address, port), timeout=5) as sock:
        sock.settimeout(5)
        greeting = sock.makefile("rb").readline(100)
        nonce = greeting.split()[1].decode()
        word = f"reach {node}" + (
            "" if mac is None else f" {mac if mac != 'right' else claim_mac(TOKEN, nonce, node, port)}"
        )
        sock.sendall(word.encode() + b"\n")
        try:
            return greeting, sock.recv(64)
        except OSError:
            return greeting, b""


def test_a_claim_without_the_runs_token_is_refused():
    """A node that claims to have reached a listener is believed only with the run's token: a claim without
    a proof, and one with a wrong one, are answered `denied` and not counted; the right one is."""
    import sys

    port = free_port()
    job = {"node": 0, "reach": {"listen": [{"address": "127.0.0.1", "port": port, "users": [1, 2]}], "connect": [],
                                "window": 3}}  # fmt: skip
    (proc,) = [start(Path(sys.executable), job)]
    feed(proc)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:  # until the listener is up
        try:
            bare = _claim(port, 1, None)
            break
        except (OSError, IndexError):
            time.sleep(0.1)
    wrong = _claim(port, 2, "0" * 64)
    right = _claim(port, 1, "right")
    answer = json.loads(proc.stdout.read().splitlines()[-1])
    proc.wait(30)
    assert bare[0].startswith(b"launcher-fabric-reach ") and bare[1] == b"denied\n" and wrong[1] == b"denied\n"
    assert right[1] != b"denied\n"
    listener = answer["listen"][0]
    assert listener["seen"] == [1] and listener["denied"] == 2  # node 2's forged claim did not count


def test_a_listener_is_bound_to_its_address_only():
    """The listener serves the address its users connect to (127.0.0.2 here), not every interface: on
    another address of the same machine (127.0.0.1) the port is refused."""
    import socket
    import sys

    port = free_port()
    job = {"node": 0, "reach": {"listen": [{"address": "127.0.0.2", "port": port, "users": [1]}], "connect": [],
                                "window": 3}}  # fmt: skip
    proc = start(Path(sys.executable), job)
    feed(proc)
    deadline = time.monotonic() + 20
    greeting = b""
    while time.monotonic() < deadline and not greeting:
        try:
            greeting = _claim(port, 1, "right", address="127.0.0.2")[0]
        except (OSError, IndexError):
            time.sleep(0.1)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    answer = json.loads(proc.stdout.read().splitlines()[-1])
    proc.wait(30)
    assert greeting.startswith(b"launcher-fabric-reach ")
    assert answer["listen"][0]["seen"] == [1] and answer["listen"][0]["address"] == "127.0.0.2"


def test_the_token_is_in_no_argv():
    """The run's token travels on stdin: the running program's command line does not hold it."""
    import sys

    port = free_port()
    job = {"node": 0, "reach": {"listen": [{"address": "127.0.0.1", "port": port, "users": [1]}], "connect": [],
                                "window": 2}}  # fmt: skip
    proc = start(Path(sys.executable), job)
    feed(proc)
    cmdline, deadline = "", time.monotonic() + 10
    while BOOT not in cmdline and time.monotonic() < deadline:  # until the exec is done
        cmdline = Path(f"/proc/{proc.pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        time.sleep(0.05)
    answer = json.loads(proc.stdout.read().splitlines()[-1])
    proc.wait(30)
    assert str(port) in cmdline and TOKEN not in cmdline
    assert answer["listen"][0]["port"] == port  # the program ran, with its token from stdin
