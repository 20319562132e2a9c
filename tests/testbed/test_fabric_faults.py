"""The fabric check's faults on the smallest testbed shape that shows each (4 nodes: dsr1-104gpu's
dynamo-sglang groups cut down to a 1-node prefill and a 3-node decode group, LAUNCHER_TESTBED_NODES=4; the
104-GPU shape itself is proven healthy in tests/testbed/test_fabric_testbed.py): a blocked dist-init port named
without waiting out `fabric.timeout`, and `up` then starting nothing anywhere; a group whose leader is down; a
rank routed to its leader through another interface; `up` proving the fabric before it starts the ranks; a
decode node cut off from the mockers' bootstrap ports (configs/testbed-small.yaml); a
fabric python missing from the image and one without torch named as exactly that, and the check's
containers: labelled, their token nowhere in `docker inspect`, removed within 5 s of a Ctrl-C, and a killed
run's leftovers removed by `down` and by the next check. Each test prints its times. (Each rank is a torch
import, about 2.5 CPU-s: the faults were shown on 13 nodes before, at three times the cost and nothing more
to see.)"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

from tests.helpers import REPO, STATE_DIR, launcher_on
from tests.testbed.test_fabric_testbed import containers, doctor, failing, firewall, label

pytestmark = pytest.mark.testbed

DSR1 = REPO / "configs" / "testbed-dsr1.yaml"
MOCKERS = REPO / "configs" / "testbed-small.yaml"  # prefill mockers on nodes 0-1, decode on 2-3
DECODE_LEADER = 1
REFUSE = "OUTPUT -p tcp -d {} --dport 29500 -j REJECT --reject-with tcp-reset"  # refused: a leader not started yet


@pytest.fixture(scope="module")
def small(testbed, fabric_python):
    if len(testbed.nodes) < 4:
        pytest.fail(f"these tests need 4 testbed nodes (LAUNCHER_TESTBED_NODES), got {len(testbed.nodes)}")
    return testbed


def small_config(tmp_path: Path, name: str, **fabric: object) -> Path:
    """testbed-dsr1.yaml on 4 nodes: prefill on node 0 alone, decode on nodes 1-3 (its leader node 1)."""
    data = yaml.safe_load(DSR1.read_text())
    data["deployment"] = name
    for group, nodes in (("prefill", 1), ("decode", 3)):
        data["groups"][group]["nodes"] = nodes
        data["groups"][group]["args"].update({"tp-size": 8 * nodes, "dp-size": 8 * nodes})
    data["fabric"].update(fabric)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def fabric_containers(tb, deployment: str, nodes: int = 4) -> dict[int, list[str]]:
    """Per node of the 4-node shape (the others never run it), the fabric check's containers of `deployment`
    (by their label), all nodes at once."""

    def one(i: int) -> list[str]:
        which = f"label=launcher.fabric.deployment={deployment}"
        cmd = f"docker ps -a --filter {which} --format '{{{{.Label \"launcher.fabric\"}}}}'"
        return tb.ssh(i, cmd, timeout=30).stdout.split()

    with ThreadPoolExecutor(nodes) as pool:
        return dict(zip(range(nodes), pool.map(one, range(nodes)), strict=True))


def start_doctor(tb, config: Path, cwd: Path) -> subprocess.Popen:
    argv = [sys.executable, "-m", "launcher", "doctor", "-c", str(config), "-i", str(tb.inventory), "--fabric",
            "--no-args"]  # fmt: skip
    return subprocess.Popen(argv, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_containers(tb, deployment: str, count: int, limit: float = 120) -> dict[int, list[str]]:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        found = fabric_containers(tb, deployment)
        if sum(len(v) for v in found.values()) >= count:
            return found
        time.sleep(0.3)
    raise AssertionError(f"the check's {count} containers never all ran: {found}")


def inspect_running(tb, node: int, deployment: str, limit: float = 120) -> list[dict]:
    """`docker inspect` of the check's running containers on one node, once there is one. Listing and inspecting
    happen in one command: counting containers across nodes first let a CI run inspect node 1 before its
    container had started (an empty `docker inspect`)."""
    cmd = f"docker ps -q --filter label=launcher.fabric.deployment={deployment} | xargs -r docker inspect"
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        out = tb.ssh(node, cmd, timeout=30).stdout.strip()
        if out.startswith("["):
            return json.loads(out)
        time.sleep(0.3)
    raise AssertionError(f"no running fabric container of {deployment} on node {node} within {limit:.0f}s")


def test_a_blocked_dist_init_port_is_named_without_waiting_out_the_timeout(small, tmp_path):
    """Node 3 drops what it sends to the decode leader's dist-init port: it is named with the leader, the
    other ranks are not waited for, and the check ends long before `fabric.timeout` (30 s)."""
    tb = small
    config = small_config(tmp_path, "fabric-blocked")
    leader = tb.nodes[DECODE_LEADER][1]
    with firewall(tb, 3, f"OUTPUT -p tcp -d {leader} --dport 29500 -j DROP"):
        code, data, took = doctor(tb, config, tmp_path)
    print(f"\nblocked dist-init port named after {took:.1f}s in all (fabric check {data['fabric']['seconds']:.1f}s)")
    assert code == 1
    lines = failing(data, "rendezvous:decode")
    (cut,) = [c for c in lines if c["node"] == 3 and "cannot reach" in c["detail"]]
    assert (
        f"rank 2 on {label(tb, 3)} cannot reach the leader {label(tb, DECODE_LEADER)} at {leader}:29500"
        in (cut["detail"])
    )
    assert "no answer" in cut["detail"] and "open TCP 29500 from" in cut["fix"]
    (others,) = [c for c in lines if "not waited for" in c["detail"]]
    assert f"stopped once rank 2 on {label(tb, 3)} had failed" in others["detail"]
    (peer,) = failing(data, "peer")  # the peer-port check, before any rank, says the same
    assert peer["node"] == 3
    assert f"cannot reach {label(tb, DECODE_LEADER)} port 29500 (dist-init of decode-r0)" in peer["detail"]
    assert [(g["name"], g["ok"]) for g in data["fabric"]["groups"]] == [("decode", False)]  # 1-node prefill: none
    assert data["fabric"]["seconds"] < 30  # the rendezvous timeout was not waited out
    assert fabric_containers(tb, "fabric-blocked") == {i: [] for i in range(4)}
    # `up` runs the same check first and starts nothing anywhere, not even etcd and NATS.
    with firewall(tb, 3, f"OUTPUT -p tcp -d {leader} --dport 29500 -j DROP"):
        began = time.monotonic()
        up = launcher_on(tb, config, "up", "--skip-doctor", cwd=tmp_path, timeout=600)
    print(f"up stopped by the fabric check after {time.monotonic() - began:.1f}s")
    assert up.returncode == 1 and "nothing was started" in up.stderr, up.stderr[-3000:]
    assert f"rank 2 on {label(tb, 3)} cannot reach the leader" in up.stderr
    assert containers(tb, "fabric-blocked") == []


def test_a_group_whose_leader_is_down(small, tmp_path):
    """The decode leader's link is cut: its rank never starts, every other decode rank is named once,
    either as having waited for it or (fail fast) as not waited for once the first of those had failed,
    and the command ends by the check's own bounds (the prefill group still meets)."""
    tb = small
    config = small_config(tmp_path, "fabric-leader-down", timeout=10)  # the ranks wait for it this long
    decode = [1, 2, 3]
    tb.run("cut", str(DECODE_LEADER))
    try:
        code, data, took = doctor(tb, config, tmp_path, "--connect-timeout", "3")
    finally:
        tb.run("heal", str(DECODE_LEADER))
    print(f"\nleader down: the waiting ranks named after {took:.1f}s (fabric check {data['fabric']['seconds']:.1f}s)")
    assert code == 1
    lines = failing(data, "rendezvous:decode")
    assert lines[0]["node"] == DECODE_LEADER and "never started" in lines[0]["detail"]
    # Fail fast: the members that said so first are named as waiting for it (a line each), the rest in one
    # line as not waited for, stopped once one of the waiting ranks had failed. ("not waited for" contains
    # "waited": the two kinds are told apart explicitly.)
    removed = [c for c in lines[1:] if "not waited for" in c["detail"]]
    waited = [c for c in lines[1:] if c not in removed]
    assert waited and len(removed) <= 1 and len(waited) + len(removed) == len(lines) - 1, lines
    for c in waited:
        assert "waited" in c["detail"] and f"for the leader {label(tb, DECODE_LEADER)}" in c["detail"], c
        assert "which never started" in c["detail"] and f"bring {tb.nodes[DECODE_LEADER][0]} back" in c["fix"], c
    not_waited = {n for c in removed for n in decode if f"({tb.nodes[n][0]})" in c["detail"]}
    if removed:  # the group was stopped by a rank that is itself named as waiting for the leader
        assert any(
            f"stopped once rank {decode.index(c['node'])} on {label(tb, c['node'])} had failed" in removed[0]["detail"]
            for c in waited
        ), lines
    # Every member named exactly once, either way; the leader not among them.
    assert sorted([c["node"] for c in waited] + list(not_waited)) == decode[1:], lines
    assert [(g["name"], g["ok"]) for g in data["fabric"]["groups"]] == [("decode", False)]


def test_a_node_routing_to_its_leader_through_another_interface(small, tmp_path):
    """Node 3 gets a dummy interface and a route to the decode leader through it: doctor flags node 3's
    interface, the plan gives that rank GLOO_SOCKET_IFNAME=fab0, and its rendezvous fails naming node 3."""
    tb = small
    config = small_config(tmp_path, "fabric-interface")
    ns, leader = tb.nodes[3][0], tb.nodes[DECODE_LEADER][1]
    net = f"ip netns exec {ns} ip"
    # A veth pair inside the node, both ends up, neither with an address: what leaves by fab0 goes nowhere.
    setup = (
        f"{net} link add fab0 type veth peer name fab1 && {net} link set fab0 up && {net} link set fab1 up"
        f" && {net} route add {leader}/32 dev fab0"
    )
    subprocess.run(setup, shell=True, check=True, timeout=30)
    try:
        plain = launcher_on(tb, config, "doctor", "--no-args", "--json", cwd=tmp_path, timeout=300)
        code, data, took = doctor(tb, config, tmp_path)
    finally:
        subprocess.run(f"{net} link del fab0", shell=True, check=True, timeout=30)
    (flag,) = [c for c in json.loads(plain.stdout)["checks"] if c["name"] == "interface" and c["status"] != "ok"]
    assert flag["node"] == 3 and flag["status"] == "warn"
    assert flag["detail"].startswith(f"decode: fab0 to leader {leader}") and "other nodes use eth0" in flag["detail"]
    print(f"\na rank routed through the wrong interface named after {took:.1f}s")
    assert code == 1
    rank = next(r for g in data["fabric"]["groups"] for r in g["ranks"] if r["node"] == 3)
    assert not rank["ok"]
    assert any(c["node"] == 3 for c in failing(data, "rendezvous:decode"))


def test_up_proves_the_fabric_before_starting_the_ranks(small, tmp_path):
    """Two 2-node groups as `command` ranks that ask for the check (the testbed has no SGLang to start): `up`
    runs the rendezvous of both groups, then starts etcd, NATS and the 4 ranks, and logs the figures."""
    tb = small
    data = yaml.safe_load(small_config(tmp_path, "fabric-up").read_text())
    data["services"]["frontend"] = {"enabled": False}
    for group in data["groups"].values():  # prefill on nodes 0-1, decode on 2-3
        group.update(engine="command", fabric=True, args=["sleep", "600"], timeout=120, nodes=2)
        group.pop("system_port")
        group.pop("bootstrap_port")
    config = tmp_path / "fabric-up-command.yaml"
    config.write_text(yaml.safe_dump(data, sort_keys=False))
    try:
        began = time.monotonic()
        up = launcher_on(tb, config, "up", cwd=tmp_path, timeout=600)
        took = time.monotonic() - began
        log = up.stderr
        check = next(line for line in log.splitlines() if "fabric: the check took" in line)
        print(f"\nup with the fabric check on 4 nodes: {took:.1f}s to ready; {check.split('] ')[-1]}")
        assert up.returncode == 0, log[-3000:]
        assert log.index("fabric: decode: 2 ranks met") < log.index("started 4 container(s) on 4 node(s)")
        assert "fabric: prefill: 2 ranks met" in log and "ready: fabric-up on " in up.stdout
        audit = Path(STATE_DIR, "fabric-up", "audit.log").read_text()
        assert "fabric check (up) ok" in audit and "decode: rendezvous" in audit
    finally:
        launcher_on(tb, config, "down", cwd=tmp_path, timeout=300)
    assert containers(tb, "fabric-up") == []


def test_a_missing_fabric_python_and_one_without_torch_are_named_as_such(small, tmp_path):
    tb = small
    missing = small_config(tmp_path, "fabric-nopython", python="/opt/no-such/bin/python3")
    code, data, took = doctor(tb, missing, tmp_path)
    print(f"\nmissing fabric python named after {took:.1f}s (fabric check {data['fabric']['seconds']:.1f}s)")
    assert code == 1
    lines = failing(data, "rendezvous:decode")
    named = [c for c in lines if "never started" in c["detail"]]
    assert named, lines
    for c in named:
        assert "fabric.python /opt/no-such/bin/python3 cannot be run there" in c["detail"]
        assert "docker run --help" not in c["detail"]
        assert c["fix"].startswith("fabric.python (/opt/no-such/bin/python3) must be a python with torch")
    plain = small_config(tmp_path, "fabric-notorch", python="python3")  # the image's own: no torch
    code, data, took = doctor(tb, plain, tmp_path)
    print(f"a python without torch named after {took:.1f}s (fabric check {data['fabric']['seconds']:.1f}s)")
    assert code == 1
    lines = failing(data, "rendezvous:decode")
    named = [c for c in lines if "torch does not import" in c["detail"]]
    assert named and all("must be a python with torch" in c["fix"] for c in named), lines
    assert "No module named 'torch'" in named[0]["detail"]


def test_ctrl_c_removes_the_checks_containers_on_every_node_within_5_s(small, tmp_path):
    """While the check waits: `docker inspect` of its container shows the job, not the run's token; then Ctrl-C
    removes its containers on every node within 5 s."""
    tb = small
    config = small_config(tmp_path, "fabric-ctrlc", timeout=120)
    # Node 3 is refused by the leader (a node not started yet, for all it knows): the check waits.
    with firewall(tb, 3, REFUSE.format(tb.nodes[DECODE_LEADER][1])):
        proc = start_doctor(tb, config, tmp_path)
        try:
            inspect = inspect_running(tb, DECODE_LEADER, "fabric-ctrlc")
            found = wait_for_containers(tb, "fabric-ctrlc", 3)
            run = {v for vs in found.values() for v in vs}
            proc.send_signal(signal.SIGINT)
            sent = time.monotonic()
            # The launcher leaves only once it has removed them on every node: its exit is the moment they are
            # gone (a poll over SSH after it would add its own latency on a loaded machine), then checked.
            out, err = proc.communicate(timeout=60)
            gone = time.monotonic() - sent
            left = fabric_containers(tb, "fabric-ctrlc")
        finally:
            proc.kill()
    (c,) = inspect
    args = " ".join(c["Args"]) + " ".join(c["Config"]["Env"] or [])
    assert '"rendezvous"' in args and "FABRIC_TOKEN" in args  # the job and the bootstrap that reads the token
    assert re.search(r"[0-9a-f]{64}", args) is None  # the token itself (64 hex digits) is nowhere
    print(f"\nCtrl-C: every fabric container gone after {gone:.1f}s; exit {proc.returncode}")
    assert len(run) == 1 and next(iter(run)).startswith("fabric-ctrlc/")  # launcher.fabric=<deployment>/<run id>
    assert not any(left.values()), left
    assert gone <= 5.0
    assert proc.returncode == 130 and "Traceback" not in err


def test_a_killed_checks_leftovers_are_removed_by_down_and_by_the_next_check(small, tmp_path):
    tb = small
    config = small_config(tmp_path, "fabric-killed", timeout=120)
    leader = tb.nodes[DECODE_LEADER][1]
    for then in ("down", "next check"):
        with firewall(tb, 3, REFUSE.format(leader)):
            proc = start_doctor(tb, config, tmp_path)
            wait_for_containers(tb, "fabric-killed", 3)
            proc.send_signal(signal.SIGKILL)
            proc.wait(30)
            time.sleep(1)
            left = fabric_containers(tb, "fabric-killed")
        assert sum(len(v) for v in left.values()) >= 3  # SIGKILL: nothing could clean up; the labels remain
        if then == "down":
            r = subprocess.run([sys.executable, "-m", "launcher", "down", "-c", str(config), "-i", str(tb.inventory)],
                               cwd=tmp_path, capture_output=True, text=True, timeout=300)  # fmt: skip
            assert r.returncode == 0, r.stderr[-2000:]
        else:
            code, data, _ = doctor(tb, config, tmp_path)
            assert code == 0 and data["fabric"]["ok"], [c for c in data["checks"] if c["status"] == "fail"]
        print(f"\nleftovers of a killed check removed by {then}")
        assert fabric_containers(tb, "fabric-killed") == {i: [] for i in range(4)}


def test_a_decode_node_cut_off_from_the_prefill_bootstrap_ports(small, tmp_path):
    """With the mockers (every prefill rank serves its own bootstrap port, no group rendezvous), decode node
    3 cannot reach port 30001: each of the two prefill nodes is named, pair by pair, and nothing else."""
    tb = small
    # The prefill nodes' port servers wait out fabric.timeout for the pair that never connects (the check
    # does not yet end once every client has reported): 15 s here instead of the default 60.
    data = yaml.safe_load(MOCKERS.read_text())
    data["fabric"] = {"timeout": 15}
    config = tmp_path / "mockers.yaml"
    config.write_text(yaml.safe_dump(data, sort_keys=False))
    with firewall(tb, 3, "OUTPUT -p tcp --dport 30001 -j DROP"):
        code, data, took = doctor(tb, config, tmp_path)
    print(f"\nbootstrap pairs named after {took:.1f}s (fabric check {data['fabric']['seconds']:.1f}s)")
    assert code == 1
    fails = failing(data, "peer")
    assert [c["node"] for c in fails] == [3, 3]
    for c, owner in zip(sorted(fails, key=lambda c: c["detail"]), (0, 1), strict=True):
        assert (
            f"{label(tb, 3)} cannot reach {label(tb, owner)} port 30001 (bootstrap of prefill-r{owner})" in c["detail"]
        )
        assert f"a firewall drops TCP 30001 between {tb.nodes[3][0]} and {tb.nodes[owner][0]}" in c["fix"]
    assert [c for c in data["checks"] if c["status"] == "fail" and c["name"] != "peer"] == []
    peers = data["fabric"]["peers"]
    assert data["fabric"]["groups"] == [] and len([p for p in peers if not p["ok"]]) == 2 < len(peers)


def test_a_rolled_multi_node_replica_meets_first_and_one_that_cannot_is_rolled_back(small, tmp_path):
    """decode as 2 replicas of a 2-node `command` group that asks for the check (replica 0 on nodes 0-1,
    replica 1 on nodes 2-3), started with --skip-fabric. A changed flag rolls them: replica 0's ranks meet
    in the fabric check between its old ranks stopping and its new ones starting; replica 1's member drops
    what it sends to its leader's dist-init port, so its step fails the check, is rolled back before its
    new spec starts (exit 1 naming the node and the cause) and runs its previous spec again."""
    tb = small
    data = yaml.safe_load(DSR1.read_text())
    data["deployment"] = "fabric-roll"
    data["services"]["frontend"] = {"enabled": False}
    decode = data["groups"]["decode"]
    ranks = ["sh", "-c", "trap 'exit 0' TERM; sleep 600 & wait"]  # stops at once (a bare sleep waits out the grace)
    decode.update(engine="command", fabric=True, args=ranks, timeout=120, nodes=2, replicas=2)
    decode.pop("system_port")
    decode.pop("bootstrap_port")
    data["groups"] = {"decode": decode}
    config = tmp_path / "fabric-roll.yaml"
    config.write_text(yaml.safe_dump(data, sort_keys=False))
    try:
        up = launcher_on(tb, config, "up", "--skip-doctor", "--skip-fabric", cwd=tmp_path, timeout=300)
        assert up.returncode == 0, up.stderr[-3000:]
        decode["args"] = [*ranks[:2], ranks[2].replace("600", "601")]
        config.write_text(yaml.safe_dump(data, sort_keys=False))
        plan = subprocess.run([sys.executable, "-m", "launcher", "plan", str(config), "-i", str(tb.inventory)],
                              capture_output=True, text=True, timeout=60)  # fmt: skip
        assert "rolling: each replica of decode meets in the fabric check before its new spec starts" in plan.stdout
        leader = tb.nodes[2][1]  # replica 1's leader; node 3 its other rank
        with firewall(tb, 3, f"OUTPUT -p tcp -d {leader} --dport 29500 -j DROP"):
            began = time.monotonic()
            rolled = launcher_on(tb, config, "up", "--skip-doctor", cwd=tmp_path, timeout=600)
        print(f"\nroll with a blocked replica: exit {rolled.returncode} after {time.monotonic() - began:.1f}s")
        log = rolled.stderr
        assert rolled.returncode == 1, log[-3000:]
        first = log[log.index("rolling decode: draining") :]
        assert first.index("fabric: decode: 2 ranks met") < first.index("rolled decode: replaced")
        (failed,) = [line for line in log.splitlines() if "rolling up failed on replica" in line]
        # the seconds it waited are the silence's, as the node measured it: 3 s, 4 on a loaded machine
        said = re.sub(r"no answer in \d+ s", "no answer in N s", failed)
        assert said == (
            f"error: rolling up failed on replica decode.1: the fabric check failed: {label(tb, 3)} cannot reach"
            f" {label(tb, 2)} port 29500 (dist-init of decode.1-r0) at {leader}:29500: no answer in N s (packets"
            " dropped?)"
        ), log[-3000:]
        assert "rendezvous:decode.1  rank 1 on node 3 (" in log, log[-3000:]  # the table: its ranks did not meet
        assert "fabric: decode.1: rendezvous FAILED (2 of 2 ranks)" in log
        assert "log lines of the new" not in log  # it never started: no logs of it to show
        assert "rolled back: decode.1 runs the previous spec again" in log
        status = json.loads(launcher_on(tb, config, "status", "--json", cwd=tmp_path).stdout)
        replicas = {r["name"]: r for r in status["replicas"]}
        assert replicas["decode"]["state"] == "current" and replicas["decode"]["running"] == 2
        assert replicas["decode.1"]["state"] == "outdated" and replicas["decode.1"]["running"] == 2
        audit = Path(STATE_DIR, "fabric-roll", "audit.log").read_text()
        assert "fabric check (roll) ok" in audit and "fabric check (roll) FAILED" in audit
    finally:
        launcher_on(tb, config, "down", "--now", cwd=tmp_path, timeout=300)
    assert containers(tb, "fabric-roll") == []
    assert fabric_containers(tb, "fabric-roll") == {i: [] for i in range(4)}
