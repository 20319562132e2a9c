"""The fabric check's pure parts: which ports each node uses on another and who uses them, which groups
rendezvous, interfaces (read, flagged, put into the plan), what each node runs, and how answers are judged.
The shell pieces run in a real bash here (no node needed)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from launcher.config.load import load as load_config
from launcher.errors import ConfigError
from launcher.plan import fabric
from launcher.plan.build import build as build_plan
from launcher.plan.fabric import Route
from launcher.plan.fabric_verdict import judge, rank_lines, rank_result
from launcher.runtime.fabric import jobs_script, parse_jobs
from launcher.runtime.network import parse_routes, route_script
from tests.helpers import CONFIGS, REPO

INVENTORY_32 = REPO / "tests" / "data" / "inventory-32.yaml"


def build(name: str, inventory: Path | None = None, interfaces=None):
    return build_plan(load_config(CONFIGS / name, inventory, environ={}), interfaces)


def build_data(tmp_path: Path, data: dict, inventory: Path | None = None, interfaces=None):
    path = tmp_path / "deploy.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return build_plan(load_config(path, inventory, environ={}), interfaces)


def peers(plan) -> set[tuple]:
    return {(p.what, p.owner, p.port, p.users) for p in plan.peers}


# -- which ports, which pairs ---------------------------------------------------------------------


def test_dsr1_every_port_used_across_nodes_with_its_users():
    plan = build("dsr1-104gpu.yaml")
    others = tuple(range(1, 13))
    assert peers(plan) == {
        ("dist-init", 0, 29500, (1, 2, 3)),  # prefill's members -> its leader
        ("dist-init", 4, 29500, tuple(range(5, 13))),  # decode's members -> its leader
        ("bootstrap", 0, 30001, tuple(range(4, 13))),  # every decode node -> prefill rank 0 only
        ("etcd", 0, 2379, others),  # every node running a Dynamo process, but the head itself
        ("nats", 0, 4222, others),
    }
    assert {p.address for p in plan.peers if p.owner == 4} == {"192.0.2.14"}


def test_mocker_prefill_ranks_each_serve_bootstrap_and_never_rendezvous():
    plan = build("testbed-104.yaml", INVENTORY_32)
    assert not any(g.rendezvous for g in plan.groups)
    boot = sorted((p.owner, p.users) for p in plan.peers if p.what == "bootstrap")
    assert boot == [(i, tuple(range(4, 13))) for i in range(4)]
    assert not [p for p in plan.peers if p.what == "dist-init"]
    assert fabric.checked_groups(plan) == []


def test_vllm_nixl_side_channels_are_used_by_the_other_role():
    plan = build("vllm-wideep-16gpu.yaml")
    nixl = sorted((p.owner, p.port, p.users) for p in plan.peers if p.what == "nixl")
    assert nixl == [(0, port, (1,)) for port in range(5600, 5608)] + [(1, port, (0,)) for port in range(5600, 5608)]


def test_router_node_uses_every_worker_url_on_another_node():
    plan = build("sglang-1p1d-32gpu.yaml")
    # The router runs on node 0, beside prefill rank 0: only decode rank 0 (node 2) is across the network.
    assert [(p.owner, p.port, p.users) for p in plan.peers if p.what == "worker"] == [(2, 30000, (0,))]
    assert ("bootstrap", 0, 8998, (2, 3)) in peers(plan)


def test_which_groups_rendezvous(tmp_path):
    data = yaml.safe_load((CONFIGS / "dsr1-104gpu.yaml").read_text())
    data["groups"]["prefill"]["fabric"] = False  # opted out
    data["groups"]["decode"]["nodes"] = 7
    data["groups"]["decode"]["args"].update({"tp-size": 56, "dp-size": 56})
    command = {"engine": "command", "args": ["sleep", "1"], "fabric": True}
    data["groups"]["extra"] = {**command, "nodes": [11, 12], "dist_init_port": 29600}
    data["groups"]["one"] = {**command, "nodes": [12], "dist_init_port": 29700}
    plan = build_data(tmp_path, data)
    assert {g.name: g.rendezvous for g in plan.groups} == {
        "prefill": False,
        "decode": True,
        "extra": True,  # a command group that asks
        "one": False,  # one node: nothing to meet
    }
    assert ("dist-init", 11, 29600, (12,)) in peers(plan)
    assert not [p for p in plan.peers if p.what == "dist-init" and p.owner == 0]


def test_a_mocker_group_cannot_ask_for_the_rendezvous(tmp_path):
    data = yaml.safe_load((CONFIGS / "testbed-104.yaml").read_text())
    data["groups"]["decode"]["fabric"] = True
    with pytest.raises(ConfigError) as err:
        build_data(tmp_path, data, INVENTORY_32)
    assert "groups.decode.fabric" in str(err.value) and "never rendezvous" in str(err.value)


# -- interfaces -------------------------------------------------------------------------------------


def test_route_targets_are_each_nodes_group_leaders():
    plan = build("dsr1-104gpu.yaml")
    targets = fabric.route_targets(plan)
    assert targets[0] == ["192.0.2.10"] and targets[3] == ["192.0.2.10"]
    assert all(targets[i] == ["192.0.2.14"] for i in range(4, 13))
    vllm = build("vllm-wideep-16gpu.yaml")  # one node per group: no route to read
    assert fabric.route_targets(vllm) == {}


def test_routes_parsed_from_ip_route_get():
    out = "\n".join(
        [
            "@@route 10.0.0.14 10.0.0.14 dev eth0 src 10.0.0.15 uid 0 cache",
            "@@route 10.0.0.10 local 10.0.0.10 dev lo table local src 10.0.0.10 uid 0 cache owner ens3",
            "@@route leader.example RTNETLINK answers: Network is unreachable",
            "some other line",
        ]
    )
    routes = parse_routes(out)
    assert routes["10.0.0.14"] == Route("eth0", "10.0.0.15")
    assert routes["10.0.0.10"].interface == "ens3"  # this node's own address: the interface that holds it
    assert routes["leader.example"].interface is None and "unreachable" in routes["leader.example"].error


def test_route_script_runs_in_bash():
    script = route_script(["127.0.0.1", "no-such-host.invalid"])
    out = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=30).stdout
    routes = parse_routes(out)
    assert routes["127.0.0.1"].interface == "lo"
    assert routes["no-such-host.invalid"].interface is None and routes["no-such-host.invalid"].error
    assert route_script([]) == ""


def test_a_node_whose_route_differs_from_its_groups_is_flagged():
    plan = build("dsr1-104gpu.yaml")
    routes = {i: {"192.0.2.10": Route("eth0")} for i in range(4)}
    routes.update({i: {"192.0.2.14": Route("ib0")} for i in range(4, 13)})
    routes[6] = {"192.0.2.14": Route("eth0", "192.0.2.16")}  # the odd one out
    routes[2] = {}  # nothing read
    rows = {(r.group, r.node): r for r in fabric.interface_rows(plan, routes)}
    assert [k for k, r in rows.items() if r.flagged] == [("prefill", 2), ("decode", 6)]
    assert rows[("decode", 6)].usual == "ib0" and "other nodes use ib0" in rows[("decode", 6)].detail
    assert rows[("prefill", 2)].interface is None and "cannot tell" in rows[("prefill", 2)].detail


def test_a_tie_is_broken_by_the_leaders_interface(tmp_path):
    data = yaml.safe_load((CONFIGS / "sglang-tp16-2node.yaml").read_text())
    plan = build_data(tmp_path, data)
    leader = plan.nodes[plan.groups[0].leader].address
    rows = fabric.interface_rows(plan, {0: {leader: Route("eth1")}, 1: {leader: Route("eth0")}})
    assert [(r.node, r.flagged) for r in rows] == [(0, False), (1, True)]


def test_the_plan_with_interfaces_read_on_the_nodes():
    plan = build("testbed-dsr1.yaml", INVENTORY_32)  # network.interface: auto
    assert not any("GLOO_SOCKET_IFNAME" in s.env for s in plan.services)  # `launcher plan`: not known
    ifaces = {i: {"10.213.0.10" if i < 4 else "10.213.0.14": "eth0" if i != 7 else "ib3"} for i in range(13)}
    plan = build("testbed-dsr1.yaml", INVENTORY_32, ifaces)
    ranks = {(s.group, s.rank): s.env for s in plan.services if s.group}
    assert ranks[("decode", 3)]["GLOO_SOCKET_IFNAME"] == ranks[("decode", 3)]["NCCL_SOCKET_IFNAME"] == "ib3"
    assert all(env["GLOO_SOCKET_IFNAME"] == "eth0" for key, env in ranks.items() if key != ("decode", 3))
    assert not any("GLOO_SOCKET_IFNAME" in s.env for s in plan.services if s.group is None)


def test_a_named_interface_is_used_as_given_and_not_twice(tmp_path):
    data = yaml.safe_load((CONFIGS / "dsr1-104gpu.yaml").read_text())
    data["network"] = {"interface": "bond0"}
    plan = build_data(tmp_path, data)
    assert {s.env["NCCL_SOCKET_IFNAME"] for s in plan.services if s.group} == {"bond0"}
    data["groups"]["decode"]["env"] = {"GLOO_SOCKET_IFNAME": "eth0"}
    with pytest.raises(ConfigError) as err:
        build_data(tmp_path, data)
    assert "groups.decode.env.GLOO_SOCKET_IFNAME" in str(err.value) and "network.interface" in str(err.value)


# -- what each node runs ------------------------------------------------------------------------------


def test_jobs_serve_and_try_each_nodes_ports():
    plan = build("testbed-dsr1.yaml", INVENTORY_32)
    jobs = fabric.jobs(plan, fabric.checked_groups(plan))
    assert sorted(jobs) == list(range(13)) and all(len(js) == 1 for js in jobs.values())
    head = jobs[0][0]
    assert (head.group, head.rank, head.python) == ("prefill", 0, "/repo/.cache/fabric-env/torch-2.13.0/bin/python")
    listen = {x["port"]: x["users"] for x in head.spec["reach"]["listen"]}
    assert listen == {2379: list(range(1, 13)), 4222: list(range(1, 13)), 29500: [1, 2, 3], 30001: list(range(4, 13))}
    member = jobs[5][0]
    assert member.spec["rendezvous"] | {"timeout": 0} == {
        "group": "decode", "leader": "10.213.0.14", "port": 29500, "world": 9, "rank": 1, "timeout": 0,
        "gloo_mb": 8, "nccl_mb": 256, "iters": 3,
    }  # fmt: skip
    assert {(c["address"], c["port"]) for c in member.spec["reach"]["connect"]} == {
        ("10.213.0.14", 29500), ("10.213.0.10", 30001), ("10.213.0.10", 2379), ("10.213.0.10", 4222),
    }  # fmt: skip
    assert member.service.name == "testbed-dsr1-decode-r1"  # the rank's own container settings


def test_mocker_files_run_only_the_peer_part_and_running_groups_are_skipped():
    mock = build("testbed-104.yaml", INVENTORY_32)
    jobs = fabric.jobs(mock, fabric.checked_groups(mock))
    assert all(len(js) == 1 and js[0].group is None and js[0].python == "python3" for js in jobs.values())
    assert "rendezvous" not in jobs[4][0].spec and len(jobs[4][0].spec["reach"]["connect"]) == 6
    plan = build("testbed-dsr1.yaml", INVENTORY_32)
    running = {"testbed-dsr1-decode-r3"}
    assert [g.name for g in fabric.checked_groups(plan, running)] == ["prefill"]


# -- judging the answers --------------------------------------------------------------------------------


def answer(rank: int, world: int, **rdv) -> dict:
    rendezvous = {"rank": rank, "world": world, **rdv}
    return {"ok": rdv.get("ok", False), "connect": [], "listen": [], "rendezvous": rendezvous}


def decode_outcomes(plan, jobs, per_rank) -> dict:
    g = next(g for g in plan.groups if g.name == "decode")
    out = {}
    for rank, i in enumerate(g.node_indices):
        out[(i, 0)] = per_rank(rank)
    for i in range(4):
        out[(i, 0)] = answer(i, 4, ok=True, phase="done", waited_s=0.2, init_s=0.1, backend="gloo",
                             bandwidth={"gloo": {"ring_gbps": 1.5, "allreduce_busbw_gbps": 1.1}})  # fmt: skip
    return out


def test_a_member_cut_off_from_its_leader_is_named_with_the_leader():
    plan = build("testbed-dsr1.yaml", INVENTORY_32)
    groups = fabric.checked_groups(plan)
    jobs = fabric.jobs(plan, groups)

    def per_rank(rank):
        if rank == 0:
            return answer(0, 9, phase="reach", aborted=True, error="node(s) 7 never reached the dist-init port 29500")
        if rank == 3:
            return answer(3, 9, phase="reach", error="cannot reach the leader 10.213.0.14:29500: no answer in 10 s")
        return answer(rank, 9, phase="reach", aborted=True, error="the leader stopped: node(s) 7 never reached")

    pairs, results = judge(plan, jobs, decode_outcomes(plan, jobs, per_rank), groups)
    prefill, decode = results
    assert prefill.ok and "4 ranks met" in prefill.lines[0].detail and "1.50-1.50 GB/s" in prefill.lines[0].detail
    details = [(ln.node, ln.detail) for ln in decode.lines]
    assert details[0][0] == 4 and "node(s) 7 never reached" in details[0][1]
    cut = next(d for n, d in details if n == 7)
    assert "rank 3 on node 7 (tb7 10.213.0.17) cannot reach the leader node 4 (tb4 10.213.0.14)" in cut
    stopped = next(d for n, d in details if "stopped when it gave up" in d)
    assert "rank 3" not in stopped and "rank 1 (tb5)" in stopped


def test_a_group_cut_short_by_another_groups_failure_is_unproven_not_at_fault():
    """The check stops at the first failing group (operations/fabric_run): prefill, still importing torch
    then, is neither ok nor a failure of its own: one "skip" line says why it did not finish."""
    plan = build("testbed-dsr1.yaml", INVENTORY_32)
    groups = fabric.checked_groups(plan)
    jobs = fabric.jobs(plan, groups)
    why = "ended once rank 3 of decode on node 7 had failed (the check stops at the first)"

    def per_rank(rank):
        if rank == 3:
            return answer(3, 9, phase="reach", error="cannot reach the leader 10.213.0.14:29500: no answer in 3 s")
        return {"stopped": "stopped once rank 3 on node 7 had failed"}

    outcomes = decode_outcomes(plan, jobs, per_rank)
    prefill_group = next(g for g in groups if g.name == "prefill")
    for i in prefill_group.node_indices:
        outcomes[(i, 0)] = {"stopped": why, "cut_short": True}
    outcomes[(prefill_group.node_indices[1], 0)] = answer(1, 4, ok=True, phase="done", waited_s=0.2, init_s=0.1)
    _, (prefill, decode) = judge(plan, jobs, outcomes, groups)
    assert not prefill.ok and [(ln.status, ln.detail) for ln in prefill.lines] == [
        ("skip", f"not finished: the check {why}")
    ]
    assert prefill.to_json()["problems"] == []
    assert not decode.ok and any("rank 3 on node 7" in ln.detail and ln.status == "fail" for ln in decode.lines)


def test_a_leader_that_never_started_leaves_the_others_named_as_waiting():
    plan = build("testbed-dsr1.yaml", INVENTORY_32)
    g = next(g for g in plan.groups if g.name == "decode")
    ranks = [rank_result("decode", 0, 4, "timed out: no answer within the connect timeout")]
    for rank, i in enumerate(g.node_indices[1:], start=1):
        ranks.append(rank_result("decode", rank, i, answer(rank, 9, phase="store", waited_s=30.2, error="timed out")))
    lines = rank_lines(plan, g, ranks)
    assert lines[0].node == 4 and "never started" in lines[0].detail
    waiting = [ln for ln in lines[1:]]
    assert len(waiting) == 8 and all("waited 30 s for the leader node 4 (tb4" in ln.detail for ln in waiting)
    assert all("which never started" in ln.detail and "bring tb4 back" in ln.fix for ln in waiting)


def test_missing_ranks_and_an_unreachable_interface_are_named():
    plan = build("testbed-dsr1.yaml", INVENTORY_32)
    g = next(g for g in plan.groups if g.name == "prefill")
    leader = rank_result("prefill", 0, 0, answer(0, 4, phase="join", waited_s=30.0, missing=[2, 3], error="x"))
    init = rank_result("prefill", 1, 1, answer(1, 4, phase="init", error="Gloo connectFullMesh failed",
                                               gloo_default="vm -> 127.0.0.1"))  # fmt: skip
    lines = rank_lines(plan, g, [leader, init])
    assert "never joined: rank 2 (node 2 (tb2 10.213.0.12)), rank 3 (node 3 (tb3 10.213.0.13))" in lines[0].detail
    assert "127.0.0.1" in lines[1].detail and "network: {interface: auto}" in lines[1].fix


def test_peer_failures_get_a_fix_by_how_they_failed():
    plan = build("testbed-104.yaml", INVENTORY_32)
    jobs = fabric.jobs(plan, [])
    outcomes = {}
    for i, (job,) in jobs.items():
        connects = []
        for c in job.spec["reach"]["connect"]:
            if i == 9 and c["port"] == 30001:
                connects.append({**c, "ok": False, "kind": "timeout", "error": "no answer in 10 s (packets dropped?)"})
            else:
                connects.append({**c, "ok": True, "seconds": 0.01})
        outcomes[(i, 0)] = {"ok": i != 9, "connect": connects, "listen": []}
    outcomes[(5, 0)] = "timed out: no answer within the connect timeout"
    pairs, _ = judge(plan, jobs, outcomes, [])
    failed = [p for p in pairs if p.ok is False]
    assert sorted(p.peer.owner for p in failed) == [0, 1, 2, 3] and {p.user for p in failed} == {9}
    assert all("a firewall drops TCP 30001 between tb9 and" in p.fix for p in failed)
    assert "node 9 (tb9 10.213.0.19) cannot reach node 2 (tb2 10.213.0.12) port 30001" in failed[2].detail
    unknown = [p for p in pairs if p.ok is None]
    assert {p.user for p in unknown} == {5} and "not tried" in unknown[0].detail


# -- the node script -------------------------------------------------------------------------------------


def test_jobs_script_runs_every_job_at_once_and_keeps_their_outputs_apart():
    script = jobs_script(["cat; echo oops >&2; exit 3", "sleep 0.3; printf '{\"ok\": true}'", "true"])
    done = subprocess.run(["bash", "-c", script], input="PROGRAM", capture_output=True, text=True, timeout=30)
    parsed = parse_jobs(done.stdout)
    assert parsed == {0: (3, "PROGRAM", "oops"), 1: (0, '{"ok": true}', ""), 2: (0, "", "")}


def test_jobs_script_passes_on_the_live_lines_and_each_end_as_they_come():
    """A job's `@@fabric-...` lines reach the launcher while the others still run (fail fast), with each
    job's end; the rest of its output only at the end. The cleanup line runs first."""
    script = jobs_script(
        ["printf '@@fabric-fatal {\"ok\": false}\\nnoise\\n'; exit 1", "cat >/dev/null; sleep 2; echo done"],
        cleanup="echo CLEANED",
    )
    proc = subprocess.Popen(["bash", "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    proc.stdin.write("TOKEN\nPROGRAM")
    proc.stdin.close()
    first = [proc.stdout.readline().strip() for _ in range(3)]  # before job 1 ends (it sleeps 2 s)
    rest = proc.stdout.read()
    proc.wait(30)
    assert first == ["CLEANED", '@@fabric-live 0 @@fabric-fatal {"ok": false}', "@@fabric-live 0 @@fabric-end 1"]
    assert "@@fabric-live 1 @@fabric-end 0" in rest and "noise" not in "".join(first)
    assert parse_jobs("\n".join(first) + rest)[1] == (0, "done", "")


def test_a_rolling_steps_peers_are_its_own_ports_and_the_ports_its_nodes_use(tmp_path):
    """dsr1-104gpu with decode as 2 replicas of 4 nodes (prefill on 0-3, decode on 4-7 and 8-11): the step
    that replaces replica 1 proves its own dist-init port from its members, and what its nodes use elsewhere
    (prefill's bootstrap, etcd, NATS) from its nodes only; replica 0's dist-init port is not its to prove."""
    data = yaml.safe_load((CONFIGS / "dsr1-104gpu.yaml").read_text())
    data["groups"]["decode"].update(nodes=4, replicas=2)
    data["groups"]["decode"]["args"].update({"tp-size": 32, "dp-size": 32})
    plan = build_data(tmp_path, data)
    second = [s for s in plan.services if s.group == "decode.1"]
    assert sorted(s.node.index for s in second) == [8, 9, 10, 11]
    step = {(p.what, p.service, p.users) for p in fabric.step_peers(plan, second)}
    assert step == {
        ("dist-init", "decode.1-r0", (9, 10, 11)),
        ("bootstrap", "prefill-r0", (8, 9, 10, 11)),
        ("etcd", "etcd", (8, 9, 10, 11)),
        ("nats", "nats", (8, 9, 10, 11)),
    }
    assert ("dist-init", "decode-r0") in {(p.what, p.service) for p in plan.peers}  # the plan has it; the step not
