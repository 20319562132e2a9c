"""README promises that need SSH or Docker, on the testbed (needs 4 nodes: LAUNCHER_TESTBED_NODES=5 is plenty).

Host keys under `--host-key-policy`, HTTP health checks that reach the nodes only through SSH,
`logs --rank` and `logs --since` on the docker runtime, and `--parallel` over SSH.
"""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.helpers import REPO, STATE_DIR, launcher_on

pytestmark = pytest.mark.testbed

SMALL = REPO / "configs" / "testbed-small.yaml"


def launcher(*args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "launcher", *args], cwd=cwd, capture_output=True, text=True, timeout=timeout
    )


def wait_for(condition, what: str, timeout: float = 60.0, every: float = 0.3):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


# -- host keys: accept-new, and the command line over the files -------------------------------------


def known_key(testbed, i: int) -> tuple[str, str]:
    """(type, base64) of node i's host key, as the testbed recorded it."""
    address = testbed.nodes[i][1]
    for line in testbed.known_hosts.read_text().splitlines():
        hosts, kind, key = line.split()[:3]
        if address in hosts.split(","):
            return kind, key
    raise AssertionError(f"no key for {address} in {testbed.known_hosts}")


def inventory_with(testbed, tmp_path: Path, known_hosts: Path, **ssh) -> Path:
    inv = yaml.safe_load(testbed.inventory.read_text())
    inv["ssh"]["known_hosts"] = str(known_hosts)
    inv["ssh"].update(ssh)
    path = tmp_path / f"inventory-{len(list(tmp_path.glob('inventory-*')))}.yaml"
    path.write_text(yaml.safe_dump(inv, sort_keys=False))
    return path


def exec_node0(inventory: Path, cwd: Path, *flags: str) -> subprocess.CompletedProcess:
    return launcher("exec", "-c", str(SMALL), "-i", str(inventory), "--node", "0", *flags, "--", "uname", "-n", cwd=cwd)


def test_accept_new_records_an_unknown_host_and_still_refuses_a_changed_key(testbed, tmp_path):
    """README: "`--host-key-policy strict|accept-new`"; "Host keys are checked against `known_hosts`"."""
    name, address = testbed.nodes[0]
    known = tmp_path / "known_hosts"  # does not exist yet: every node is unknown
    inventory = inventory_with(testbed, tmp_path, known)

    strict = exec_node0(inventory, tmp_path)
    assert strict.returncode == 255 and "host key unknown" in strict.stdout, strict.stdout + strict.stderr
    assert not known.exists() or known.read_text() == ""

    accepted = exec_node0(inventory, tmp_path, "--host-key-policy", "accept-new")
    assert accepted.returncode == 0 and f"\n{name}\n" in accepted.stdout, accepted.stdout + accepted.stderr
    recorded = [line.split() for line in known.read_text().splitlines()]
    assert recorded == [[address, *known_key(testbed, 0)]], recorded  # exactly the node's real key

    again = exec_node0(inventory, tmp_path)  # now known: strict accepts it
    assert again.returncode == 0, again.stdout + again.stderr

    other_kind, other_key = known_key(testbed, 1)  # node 0 "reinstalled": another key at its address
    known.write_text(f"{address} {other_kind} {other_key}\n")
    changed = exec_node0(inventory, tmp_path, "--host-key-policy", "accept-new")
    assert changed.returncode == 255 and "host key changed" in changed.stdout, changed.stdout + changed.stderr
    assert known.read_text() == f"{address} {other_kind} {other_key}\n", "accept-new overwrote a changed key"
    assert "Traceback" not in changed.stdout + changed.stderr


def test_the_command_line_host_key_policy_wins_over_the_files(testbed, tmp_path):
    """README: "given on the command line they win over the files' `ssh:` settings"."""
    known = tmp_path / "known_hosts"
    inventory = inventory_with(testbed, tmp_path, known, host_key_policy="accept-new")
    overridden = exec_node0(inventory, tmp_path, "--host-key-policy", "strict")
    assert overridden.returncode == 255 and "host key unknown" in overridden.stdout, overridden.stdout
    assert not known.exists() or known.read_text() == ""
    from_file = exec_node0(inventory, tmp_path)  # the file's accept-new applies
    assert from_file.returncode == 0, from_file.stdout + from_file.stderr
    assert known.read_text().split()[0] == testbed.nodes[0][1]


# -- --parallel over SSH ---------------------------------------------------------------------------------


def test_parallel_bounds_the_nodes_worked_on_at_once_over_ssh(testbed, tmp_path):
    """README: "`--parallel N` (nodes worked on at once, default 32)": each node notes its start, waits
    (3 s at most) until a node started after it (the last one waits for none), and notes its end; the nodes
    share this filesystem. So two nodes allowed at once always overlap, and with --parallel 2 the nodes hand on
    to each other in turn, no one waiting out its 3 s; unbounded, all would be running at once."""
    log = tmp_path / "events"
    n = len(testbed.nodes)
    assert n > 2
    script = (
        f"me=$(flock {log}.lock sh -c 'echo start >> {log}; grep -c start {log}'); i=0; "
        f'while [ "$(grep -c start {log})" -lt $((me < {n} ? me + 1 : {n})) ] && [ $i -lt 30 ]; do '
        f"sleep 0.1; i=$((i+1)); done; echo end >> {log}"
    )
    r = launcher_on(testbed, SMALL, "exec", "--all", "--parallel", "2", "--", script, cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    events = log.read_text().split()
    assert events.count("start") == events.count("end") == len(testbed.nodes), events
    running = peak = 0
    for event in events:
        running += 1 if event == "start" else -1
        peak = max(peak, running)
    assert peak == 2, events


# -- health checks through SSH: the operator has no route to the nodes' ports ------------------------


def operator_address(testbed) -> str:
    """This machine's address as the nodes see it (the source of its packets to node 0)."""
    route = subprocess.run(["ip", "route", "get", testbed.nodes[0][1]], capture_output=True, text=True, check=True)
    return re.search(r"\bsrc (\S+)", route.stdout).group(1)


def reachable(address: str, port: int) -> bool:
    try:
        with socket.create_connection((address, port), timeout=3):
            return True
    except OSError:
        return False


def test_health_checks_go_through_ssh_when_the_operator_cannot_reach_the_ports(testbed, tmp_path):
    """README: "HTTP health checks go through the node's SSH connection ...: the operator's machine needs no
    route to the nodes' ports". Every node drops TCP from this machine except SSH; nodes still reach
    each other. `up` (probes, registry, smoke test) and `status` must see the deployment healthy."""
    me = operator_address(testbed)
    rule = ["INPUT", "-s", me, "-p", "tcp", "!", "--dport", "22", "-j", "DROP"]
    firewalled = []
    try:
        for i in range(len(testbed.nodes)):
            r = testbed.ssh(i, "iptables -I " + " ".join(rule))
            assert r.returncode == 0, r.stderr
            firewalled.append(i)
        up = launcher_on(testbed, SMALL, "up", "--skip-doctor", cwd=tmp_path)
        assert up.returncode == 0, up.stdout + up.stderr
        assert "smoke test: 200 OK: '" in up.stderr, up.stderr
        frontend = testbed.nodes[0][1]
        # The frontend listens (its own node reaches it), but not for this machine.
        inside = testbed.ssh(1, f"curl -sS -m 5 -o /dev/null -w '%{{http_code}}' http://{frontend}:8000/health")
        assert inside.stdout == "200", inside.stdout + inside.stderr
        assert not reachable(frontend, 8000), "this machine reaches the frontend: the test proves nothing"
        assert not reachable(testbed.nodes[2][1], 9090), "this machine reaches a worker's /health port"
        status = launcher_on(testbed, SMALL, "status", cwd=tmp_path)
        assert status.returncode == 0, status.stdout + status.stderr
        rows = [line.split() for line in status.stdout.splitlines() if re.match(r"\d+ \S+ +\d", line)]
        health = {row[3]: row[-1] for row in rows}
        assert {k: v for k, v in health.items() if k.startswith(("prefill", "decode"))} == {
            "prefill-r0": "healthy",
            "prefill-r1": "healthy",
            "decode-r0": "healthy",
            "decode-r1": "healthy",
        }, status.stdout
        assert "workers registered: prefill 2/2, backend 2/2" in status.stdout, status.stdout
    finally:
        for i in firewalled:
            testbed.ssh(i, "iptables -D " + " ".join(rule))
        down = launcher_on(testbed, SMALL, "down", cwd=tmp_path)
        assert down.returncode == 0, down.stderr


# -- logs --rank and --since on docker -----------------------------------------------------------------


@pytest.fixture
def talking(testbed, tmp_path):
    """Two ranks of a `command` group in Docker: each says `early`, waits for /trigger/go, then says `late`."""
    trigger = tmp_path / "trigger"
    trigger.mkdir()
    data = {
        "deployment": "talking",
        "image": "${TESTBED_IMAGE}",
        "state_dir": STATE_DIR,
        "gpus_per_node": 0,
        "container": {
            "shm_size": "",
            "ulimits": {"memlock": None, "nofile": None},
            "volumes": ["/usr:/usr:ro", f"{trigger}:/trigger:ro"],
        },
        "services": {"etcd": {"enabled": False}, "nats": {"enabled": False}, "frontend": {"enabled": False}},
        "groups": {
            "talk": {
                "engine": "command",
                "nodes": 2,
                "args": [
                    "sh",
                    "-c",
                    'echo "rank $LAUNCHER_RANK early"; while [ ! -e /trigger/go ]; do sleep 0.1; done; '
                    'echo "rank $LAUNCHER_RANK late"; exec sleep infinity',
                ],
            }
        },
    }
    path = tmp_path / "talking.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    up = launcher_on(testbed, path, "up", "--no-wait", "--skip-doctor", cwd=tmp_path)
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        yield path, trigger / "go"
    finally:
        down = launcher_on(testbed, path, "down", cwd=tmp_path)
        assert down.returncode == 0, down.stderr


def logs(testbed, path: Path, *args: str) -> list[str]:
    r = launcher_on(testbed, path, "logs", "--role", "talk", *args, cwd=path.parent)
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout.splitlines()


def test_logs_rank_selects_one_rank_of_a_group(testbed, talking):
    """README: "`launcher logs (--node I | --role R [--rank K])`"; lines prefixed `[node3 decode r2]`."""
    path, _ = talking
    node0, node1 = testbed.nodes[0][0], testbed.nodes[1][0]

    def first_lines():
        lines = logs(testbed, path)
        return lines if len(lines) == 2 else None

    both = wait_for(first_lines, "both ranks' first line")
    assert sorted(both) == [f"[{node0} talk r0] rank 0 early", f"[{node1} talk r1] rank 1 early"], both
    assert logs(testbed, path, "--rank", "1") == [f"[{node1} talk r1] rank 1 early"]
    assert logs(testbed, path, "--rank", "0") == [f"[{node0} talk r0] rank 0 early"]


def test_logs_since_on_docker_shows_only_later_lines(testbed, talking):
    """README: "`--since` needs the docker runtime": there it shows only what came after the given time."""
    path, go = talking
    wait_for(lambda: len(logs(testbed, path)) == 2, "both ranks' first line")
    since = f"{time.time():.6f}"  # after every `early` line (already seen), before any `late` one
    go.touch()
    wait_for(lambda: len(logs(testbed, path)) == 4, "both ranks' second line")
    later = logs(testbed, path, "--since", since)
    assert sorted(line.split("] ", 1)[1] for line in later) == ["rank 0 late", "rank 1 late"], later
    everything = logs(testbed, path, "--since", "10m")
    assert sorted(line.split("] ", 1)[1] for line in everything) == [
        "rank 0 early",
        "rank 0 late",
        "rank 1 early",
        "rank 1 late",
    ], everything
