"""The fabric check on the real testbed (13 nodes, each a network namespace with its own sshd and dockerd):
dsr1-104gpu's own group shapes (prefill on 4 nodes, decode on 9) in configs/testbed-dsr1.yaml, their
torch.distributed rendezvous for real with Gloo across the namespaces (the CPU torch env of scripts/fabric-env
mounted into the containers), and the faults the issue names, each made for real inside a node's namespace:
a firewall rule (iptables), a node whose link is cut, a route through another interface. Each test prints
its figures (times, bandwidth); none asserts a time."""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.conftest import in_ci
from tests.helpers import REPO, STATE_DIR, launcher_on

pytestmark = pytest.mark.testbed

DSR1 = REPO / "configs" / "testbed-dsr1.yaml"
MOCKERS = REPO / "configs" / "testbed-104.yaml"
PREFILL, DECODE = list(range(4)), list(range(4, 13))


@pytest.fixture(scope="module")
def fabric_testbed(testbed, fabric_python):
    """The 13-node testbed with iptables on this machine (for rules inside the nodes' namespaces) and the
    torch env built (the configs mount it)."""
    if len(testbed.nodes) < 13:
        pytest.fail(f"the fabric tests need 13 testbed nodes (LAUNCHER_TESTBED_NODES), got {len(testbed.nodes)}")
    if shutil.which("iptables") is None:
        install = subprocess.run(
            "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq iptables",
            shell=True, capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        if install.returncode != 0 or shutil.which("iptables") is None:
            if in_ci():
                pytest.fail(f"cannot install iptables: {install.stderr[-1000:]}", pytrace=False)
            pytest.skip("iptables is not installed and cannot be")
    return testbed


def doctor(testbed, config: Path, cwd: Path, *extra: str) -> tuple[int, dict, float]:
    began = time.monotonic()
    r = launcher_on(testbed, config, "doctor", "--fabric", "--no-args", "--json", *extra, cwd=cwd, timeout=600)
    took = time.monotonic() - began
    assert r.stdout, r.stderr[-3000:]
    return r.returncode, json.loads(r.stdout), took


def failing(data: dict, name: str) -> list[dict]:
    return [c for c in data["checks"] if c["status"] == "fail" and c["name"] == name]


def label(testbed, i: int) -> str:
    name, address = testbed.nodes[i]
    return f"node {i} ({name} {address})"


@contextlib.contextmanager
def firewall(testbed, i: int, rule: str) -> Iterator[None]:
    """An iptables rule inside node i's network namespace (its own netfilter tables), removed after."""
    ns = testbed.nodes[i][0]
    subprocess.run(f"ip netns exec {ns} iptables -I {rule}", shell=True, check=True, timeout=30)
    try:
        yield
    finally:
        subprocess.run(f"ip netns exec {ns} iptables -D {rule}", shell=True, check=True, timeout=30)


def containers(testbed, deployment: str) -> list[str]:
    found = []
    for i in range(len(testbed.nodes)):
        found += testbed.ssh(i, f"docker ps -aq --filter label=launcher.deployment={deployment}").stdout.split()
    return found


def test_healthy_104_shape_every_group_meets(fabric_testbed, tmp_path):
    tb = fabric_testbed
    code, data, took = doctor(tb, DSR1, tmp_path)
    fabric = data["fabric"]
    print(f"\ndoctor --fabric on 13 nodes: {took:.1f}s in all, the fabric check {fabric['seconds']:.1f}s")
    for g in fabric["groups"]:
        for r in g["ranks"]:
            print(f"  {g['name']} r{r['rank']} {tb.nodes[r['node']][0]}: rendezvous {r['rendezvous_s']}s, "
                  f"send {r['ring_gbps']} GB/s, all-reduce busbw {r['busbw_gbps']} GB/s")  # fmt: skip
    assert code == 0, [c for c in data["checks"] if c["status"] == "fail"]
    assert fabric["ok"] and [(g["name"], len(g["ranks"])) for g in fabric["groups"]] == [("prefill", 4), ("decode", 9)]
    for g, nodes in zip(fabric["groups"], (PREFILL, DECODE), strict=True):
        assert [r["node"] for r in g["ranks"]] == nodes
        for r in g["ranks"]:
            answer = r["answer"]
            assert r["ok"] and answer["allreduce"]["gloo"]["ok"] and answer["allreduce"]["gloo"]["wrong"] == 0
            assert answer["world"] == len(nodes) and r["ring_gbps"] > 0
            assert answer["interface"]["GLOO_SOCKET_IFNAME"] == "eth0"  # network.interface: auto, read on the node
    assert all(p["ok"] for p in fabric["peers"]) and len(fabric["peers"]) == 44
    interfaces = [c for c in data["checks"] if c["name"] == "interface"]
    assert len(interfaces) == 13 and all(c["status"] == "ok" and " eth0 " in c["detail"] for c in interfaces)
    audit = Path(STATE_DIR, "testbed-dsr1", "audit.log").read_text().splitlines()[-1]
    assert "fabric check (doctor --fabric) ok" in audit and f"{tb.nodes[12][0]}=" in audit


def test_one_nodes_dist_init_port_blocked(fabric_testbed, tmp_path):
    """Node 7 (decode rank 3) drops what it sends to its leader's dist-init port: doctor --fabric names node
    7 and the leader (node 4), the other group still meets, and `up` starts nothing anywhere."""
    tb = fabric_testbed
    leader = tb.nodes[4][1]
    with firewall(tb, 7, f"OUTPUT -p tcp -d {leader} --dport 29500 -j DROP"):
        code, data, took = doctor(tb, DSR1, tmp_path)
        print(f"\nblocked dist-init port named after {took:.1f}s (fabric check {data['fabric']['seconds']:.1f}s)")
        assert code == 1
        (cut,) = [c for c in failing(data, "rendezvous:decode") if c["node"] == 7]
        assert f"rank 3 on {label(tb, 7)} cannot reach the leader {label(tb, 4)} at {leader}:29500" in cut["detail"]
        assert "open TCP 29500 from" in cut["fix"]
        (peer,) = failing(data, "peer")
        assert peer["node"] == 7
        assert f"cannot reach {label(tb, 4)} port 29500 (dist-init of decode-r0)" in peer["detail"]
        stopped = next(c for c in failing(data, "rendezvous:decode") if "not waited for" in c["detail"])
        assert f"stopped once rank 3 on {label(tb, 7)} had failed" in stopped["detail"]  # fail fast
        assert [g["ok"] for g in data["fabric"]["groups"]] == [True, False]
        began = time.monotonic()
        up = launcher_on(tb, DSR1, "up", "--skip-doctor", cwd=tmp_path, timeout=600)
        print(f"up stopped by the fabric check after {time.monotonic() - began:.1f}s")
    assert up.returncode == 1 and "nothing was started" in up.stderr, up.stderr[-3000:]
    assert f"rank 3 on {label(tb, 7)} cannot reach the leader" in up.stderr
    assert containers(tb, "testbed-dsr1") == []  # not even etcd and NATS: the check comes before everything


def test_a_decode_node_cut_off_from_the_prefill_bootstrap_ports(fabric_testbed, tmp_path):
    """With the mockers (every prefill rank serves its own bootstrap port, no group rendezvous), decode node
    9 cannot reach port 30001: each of the four prefill nodes is named, pair by pair, and nothing else."""
    tb = fabric_testbed
    with firewall(tb, 9, "OUTPUT -p tcp --dport 30001 -j DROP"):
        code, data, took = doctor(tb, MOCKERS, tmp_path)
    print(f"\nbootstrap pairs named after {took:.1f}s (fabric check {data['fabric']['seconds']:.1f}s)")
    assert code == 1
    fails = failing(data, "peer")
    assert [c["node"] for c in fails] == [9, 9, 9, 9]
    for c, owner in zip(sorted(fails, key=lambda c: c["detail"]), PREFILL, strict=True):
        assert (
            f"{label(tb, 9)} cannot reach {label(tb, owner)} port 30001 (bootstrap of prefill-r{owner})" in c["detail"]
        )
        assert f"a firewall drops TCP 30001 between {tb.nodes[9][0]} and {tb.nodes[owner][0]}" in c["fix"]
    assert [c for c in data["checks"] if c["status"] == "fail" and c["name"] != "peer"] == []
    assert data["fabric"]["groups"] == [] and len(data["fabric"]["peers"]) == 60


def test_a_group_whose_leader_is_down(fabric_testbed, tmp_path):
    """The decode leader's link is cut: its rank never starts, every other decode rank is named once,
    either as having waited for it or (fail fast) as not waited for once the first of those had failed,
    and the command ends by the check's own bounds (the prefill group still meets)."""
    tb = fabric_testbed
    tb.run("cut", "4")
    try:
        code, data, took = doctor(tb, DSR1, tmp_path, "--connect-timeout", "3")
    finally:
        tb.run("heal", "4")
    print(f"\nleader down: the waiting ranks named after {took:.1f}s (fabric check {data['fabric']['seconds']:.1f}s)")
    assert code == 1
    lines = failing(data, "rendezvous:decode")
    assert lines[0]["node"] == 4 and "never started" in lines[0]["detail"]
    # Fail fast: the members that said so first are named as waiting for it (a line each), the rest in one
    # line as not waited for, stopped once one of the waiting ranks had failed. ("not waited for" contains
    # "waited": the two kinds are told apart explicitly.)
    removed = [c for c in lines[1:] if "not waited for" in c["detail"]]
    waited = [c for c in lines[1:] if c not in removed]
    assert waited and len(removed) <= 1 and len(waited) + len(removed) == len(lines) - 1, lines
    for c in waited:
        assert "waited" in c["detail"] and f"for the leader {label(tb, 4)}" in c["detail"], c
        assert "which never started" in c["detail"] and f"bring {tb.nodes[4][0]} back" in c["fix"], c
    not_waited = {n for c in removed for n in DECODE if f"({tb.nodes[n][0]})" in c["detail"]}
    if removed:  # the group was stopped by a rank that is itself named as waiting for the leader
        assert any(
            f"stopped once rank {DECODE.index(c['node'])} on {label(tb, c['node'])} had failed" in removed[0]["detail"]
            for c in waited
        ), lines
    # Every member named exactly once, either way; the leader not among them.
    assert sorted([c["node"] for c in waited] + list(not_waited)) == DECODE[1:], lines
    assert [g["ok"] for g in data["fabric"]["groups"]] == [True, False]


def test_a_node_routing_to_its_leader_through_another_interface(fabric_testbed, tmp_path):
    """Node 6 gets a dummy interface and a route to the decode leader through it: doctor flags node 6's
    interface, the plan gives that rank GLOO_SOCKET_IFNAME=fab0, and its rendezvous fails naming node 6."""
    tb = fabric_testbed
    ns, leader = tb.nodes[6][0], tb.nodes[4][1]
    net = f"ip netns exec {ns} ip"
    # A veth pair inside the node, both ends up, neither with an address: what leaves by fab0 goes nowhere.
    setup = (
        f"{net} link add fab0 type veth peer name fab1 && {net} link set fab0 up && {net} link set fab1 up"
        f" && {net} route add {leader}/32 dev fab0"
    )
    subprocess.run(setup, shell=True, check=True, timeout=30)
    try:
        plain = launcher_on(tb, DSR1, "doctor", "--no-args", "--json", cwd=tmp_path, timeout=300)
        code, data, took = doctor(tb, DSR1, tmp_path)
    finally:
        subprocess.run(f"{net} link del fab0", shell=True, check=True, timeout=30)
    (flag,) = [c for c in json.loads(plain.stdout)["checks"] if c["name"] == "interface" and c["status"] != "ok"]
    assert flag["node"] == 6 and flag["status"] == "warn"
    assert flag["detail"].startswith(f"decode: fab0 to leader {leader}") and "other nodes use eth0" in flag["detail"]
    print(f"\na rank routed through the wrong interface named after {took:.1f}s")
    assert code == 1
    rank = next(r for g in data["fabric"]["groups"] for r in g["ranks"] if r["node"] == 6)
    assert not rank["ok"]
    assert any(c["node"] == 6 for c in failing(data, "rendezvous:decode"))


def test_up_proves_the_fabric_before_starting_the_ranks(fabric_testbed, tmp_path):
    """The same groups as `command` ranks that ask for the check (the testbed has no SGLang to start): `up`
    runs the rendezvous of both groups, then starts etcd, NATS and the 13 ranks, and logs the figures."""
    tb = fabric_testbed
    data = yaml.safe_load(DSR1.read_text())
    data["deployment"] = "testbed-fabric-up"
    data["services"]["frontend"] = {"enabled": False}
    for group in data["groups"].values():
        group.update(engine="command", fabric=True, args=["sleep", "600"], timeout=120)
        group.pop("system_port")
        group.pop("bootstrap_port")
    config = tmp_path / "fabric-up.yaml"
    config.write_text(yaml.safe_dump(data, sort_keys=False))
    try:
        began = time.monotonic()
        up = launcher_on(tb, config, "up", cwd=tmp_path, timeout=600)
        took = time.monotonic() - began
        log = up.stderr
        check = next(line for line in log.splitlines() if "fabric: the check took" in line)
        print(f"\nup with the fabric check on 13 nodes: {took:.1f}s to ready; {check.split('] ')[-1]}")
        assert up.returncode == 0, log[-3000:]
        assert log.index("fabric: decode: 9 ranks met") < log.index("started 13 container(s) on 13 node(s)")
        assert "fabric: prefill: 4 ranks met" in log and "ready: testbed-fabric-up on 13 node(s)" in up.stdout
        audit = Path(STATE_DIR, "testbed-fabric-up", "audit.log").read_text()
        assert "fabric check (up) ok" in audit and "decode: rendezvous" in audit
    finally:
        launcher_on(tb, config, "down", cwd=tmp_path, timeout=300)
    assert containers(tb, "testbed-fabric-up") == []
