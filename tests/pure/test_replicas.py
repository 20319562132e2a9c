"""`replicas: N` on a group (LeaderWorkerSet's meaning): N complete instances, each with its own leader,
rendezvous, ports, service names and spec hash; the plan, its errors, and what a user sees of them."""

from __future__ import annotations

import functools
import json
import subprocess
import sys

import jsonschema
import pytest
import yaml

from launcher.config.load import load as load_config
from launcher.plan.build import REPLICA_PORT_STEP
from launcher.plan.build import build as build_plan
from launcher.plan.engines import args as A
from launcher.plan.types import split_unit
from tests.helpers import CONFIGS, REPO, fresh_env, run_cli, write
from tests.seeds import SEEDS, manifests

CRD_FILE = "leaderworkerset.x-k8s.io_leaderworkersets.yaml"

SIX_NODES = """\
deployment: rep
image: example/image:1
gpus_per_node: 8
model: {path: /models/x, name: x}
nodes:
  - {address: 10.9.0.1}
  - {address: 10.9.0.2}
  - {address: 10.9.0.3}
  - {address: 10.9.0.4}
  - {address: 10.9.0.5}
  - {address: 10.9.0.6}
groups:
"""


def plan_of(tmp_path, groups: str):
    return build_plan(load_config(write(tmp_path, SIX_NODES + groups)))


def plan_cli(tmp_path, text: str, *extra: str) -> subprocess.CompletedProcess:
    """`launcher plan FILE` as a user runs it: a fresh process."""
    path = write(tmp_path, text)
    argv = [sys.executable, "-m", "launcher", "plan", str(path), *extra]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, env=fresh_env(), cwd=REPO)


def ranks_of(plan, unit: str):
    return [s for s in plan.services if s.group == unit]


@pytest.mark.parametrize("engine", ["dynamo-sglang", "sglang", "dynamo-vllm", "vllm"])
def test_packed_replicas_are_complete_instances(tmp_path, engine):
    """`nodes: 2, replicas: 2`: two instances of two nodes, packed in inventory order, each with its own
    leader in its dist-init address, its own names and labels, and the same ports (distinct nodes)."""
    args = "{tp: 16}" if "vllm" not in engine else "{data-parallel-size: 16, enable-expert-parallel: true}"
    port = "    port: 8100\n" if engine == "vllm" else ""  # `vllm serve`'s own 8000 is the frontend's
    plan = plan_of(
        tmp_path, f"  decode:\n    engine: {engine}\n    nodes: 2\n    replicas: 2\n{port}    args: {args}\n"
    )
    assert [g.name for g in plan.groups] == ["decode", "decode.1"]
    assert [g.node_indices for g in plan.groups] == [[0, 1], [2, 3]]
    assert [(g.base, g.replica, g.replicas) for g in plan.groups] == [("decode", 0, 2), ("decode", 1, 2)]
    assert [s.service for s in plan.services if s.group] == ["decode-r0", "decode-r1", "decode.1-r0", "decode.1-r1"]
    for unit, leader in (("decode", "10.9.0.1"), ("decode.1", "10.9.0.3")):
        ranks = ranks_of(plan, unit)
        assert {s.replica for s in ranks} == {split_unit(unit)[1]}
        for s in ranks:
            text = " ".join(s.command)
            assert leader in text, (unit, text)  # every rank meets its own replica's leader
            other = "10.9.0.3" if leader == "10.9.0.1" else "10.9.0.1"
            assert f"{other}:" not in text
            labels = plan.labels(s)
            assert labels["launcher.replica"] == str(split_unit(unit)[1])
            assert labels["launcher.group"] == unit
            assert labels["launcher.group-spec"] == plan.group_hash(unit)
    assert plan.group_hash("decode") != plan.group_hash("decode.1")
    assert ranks_of(plan, "decode")[0].ports == ranks_of(plan, "decode.1")[0].ports  # distinct nodes: same ports
    rendezvous = [(p.owner, p.users) for p in plan.peers if p.what == "dist-init"]
    assert rendezvous == [(0, (1,)), (2, (3,))]  # each replica's rendezvous apart


def test_dynamo_sglang_replicas_register_as_instances(tmp_path):
    """The frontend waits for one `backend` instance per replica."""
    plan = plan_of(
        tmp_path, "  decode:\n    engine: dynamo-sglang\n    nodes: 2\n    replicas: 3\n    args: {tp: 16}\n"
    )
    assert sum(g.expected_instances["backend"] for g in plan.groups) == 3
    assert A.flags(ranks_of(plan, "decode.2")[1].command)["--dist-init-addr"] == ["10.9.0.5:29500"]


def test_explicit_per_replica_lists(tmp_path):
    """`nodes: [[a, b], [c, d]]`: each replica on the nodes its list names, in that order."""
    plan = plan_of(
        tmp_path,
        "  decode:\n    engine: dynamo-sglang\n    nodes: [[5, 4], [node1, 10.9.0.1]]\n    replicas: 2\n"
        "    args: {tp: 16}\n",
    )
    assert [g.node_indices for g in plan.groups] == [[5, 4], [1, 0]]
    assert A.flags(ranks_of(plan, "decode.1")[0].command)["--dist-init-addr"] == ["10.9.0.2:29500"]


def test_flat_list_is_packed_and_groups_stay_apart(tmp_path):
    plan = plan_of(
        tmp_path,
        "  prefill:\n    engine: dynamo-sglang\n    nodes: [5, 4, 3, 2]\n    replicas: 2\n    args: {tp: 16}\n"
        "  decode:\n    engine: dynamo-sglang\n    nodes: 1\n    replicas: 2\n    args: {tp: 8}\n",
    )
    assert {g.name: g.node_indices for g in plan.groups} == {
        "prefill": [5, 4],
        "prefill.1": [3, 2],
        "decode": [0],
        "decode.1": [1],
    }


def test_plans_without_replicas_carry_no_replica_fields(tmp_path):
    plan = plan_of(tmp_path, "  decode:\n    engine: dynamo-sglang\n    nodes: 2\n    args: {tp: 16}\n")
    assert all(s.replica is None and "launcher.replica" not in plan.labels(s) for s in plan.services)
    assert [g.name for g in plan.groups] == ["decode"]


def test_local_replicas_share_the_machine_on_ports_apart(tmp_path):
    """configs/local.yaml with `replicas: 2` on decode (its `nodes: [local]` unchanged): both mockers on
    127.0.0.1, replica 1 on the group's ports + REPLICA_PORT_STEP; the plan says so."""
    data = yaml.safe_load((CONFIGS / "local.yaml").read_text().replace("${CONFIG_DIR}", str(CONFIGS)))
    data["groups"]["decode"]["replicas"] = 2
    path = tmp_path / "local.yaml"
    path.write_text(yaml.safe_dump(data))
    plan = build_plan(load_config(path, environ={}))
    argv = [sys.executable, "-m", "launcher", "plan", str(path)]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=60, env=fresh_env(), cwd=tmp_path)
    first, second = ranks_of(plan, "decode")[0], ranks_of(plan, "decode.1")[0]
    assert first.node is second.node
    assert first.env["DYN_SYSTEM_PORT"] == "19091"
    assert second.env["DYN_SYSTEM_PORT"] == str(19091 + REPLICA_PORT_STEP)
    assert second.probe.url == f"http://127.0.0.1:{19091 + REPLICA_PORT_STEP}/health"
    assert not set(first.ports) & set(second.ports)
    assert out.returncode == 0, out.stderr
    assert "decode 2 replicas x1" in out.stdout
    assert f"replica 1 of 2 of group decode; its ports are group decode's + {REPLICA_PORT_STEP}" in out.stdout


def test_shared_prefill_replicas_get_their_own_bootstrap_port(tmp_path):
    """A mocker prefill with no bootstrap_port: replica 1's is the engine's default moved, not the same."""
    text = (CONFIGS / "local.yaml").read_text().replace("${CONFIG_DIR}", str(CONFIGS))
    data = yaml.safe_load(text)
    data["groups"]["prefill"].pop("bootstrap_port")
    data["groups"]["prefill"]["replicas"] = 3
    path = tmp_path / "local.yaml"
    path.write_text(yaml.safe_dump(data))
    plan = build_plan(load_config(path, environ={}))
    ports = [A.flags(ranks_of(plan, u)[0].command)["--bootstrap-ports"] for u in ("prefill", "prefill.1", "prefill.2")]
    assert ports == [[str(30001 + k * REPLICA_PORT_STEP)] for k in range(3)]  # 30001: the mocker's default
    assert [ranks_of(plan, u)[0].ports[0] for u in ("prefill", "prefill.1", "prefill.2")] == [30001, 30101, 30201]


def test_plan_json_shows_replicas(tmp_path):
    out = plan_cli(
        tmp_path,
        SIX_NODES + "  decode:\n    engine: dynamo-sglang\n    nodes: 2\n    replicas: 2\n    args: {tp: 16}\n",
        "--format",
        "json",
    )
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    groups = [(g["name"], g["group"], g["replica"], g["replicas"], g["nodes"]) for g in data["groups"]]
    assert groups == [("decode", "decode", 0, 2, [0, 1]), ("decode.1", "decode", 1, 2, [2, 3])]
    workers = [(s["service"], s["replica"], s["labels"]["launcher.replica"]) for s in data["services"] if s["group"]]
    assert workers == [("decode-r0", 0, "0"), ("decode-r1", 0, "0"), ("decode.1-r0", 1, "1"), ("decode.1-r1", 1, "1")]


BAD = [
    ("replicas: 0", "groups.decode.replicas: input should be greater than or equal to 1"),
    ("replicas: -3", "groups.decode.replicas: input should be greater than or equal to 1"),
    ("replicas: two", "groups.decode.replicas: expected a whole number, got 'two'"),
    ("replicas: 1.5", "groups.decode.replicas: expected a whole number"),
    ("replicas: true", "groups.decode.replicas: expected a whole number"),
    ("replicas: '2'", "groups.decode.replicas: expected a whole number"),
    ("replicas: 1001", "groups.decode.replicas: input should be less than or equal to 1000"),
    ("replicas: 4", "asks for 4 replicas of 2 node(s) but the inventory has 6 and only 6 are free"),
]


def plan_error(tmp_path, capsys, text: str) -> str:
    """`launcher plan FILE` through the CLI's entry point in this process: exit 2 and one line, returned."""
    code, out, err = run_cli(["plan", str(write(tmp_path, text))], capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, (out, err)
    return lines[0]


def test_a_bad_replicas_value_as_a_user_runs_it(tmp_path):
    """The same in a fresh `launcher` process: one line naming the file, the line and the key, exit 2."""
    out = plan_cli(tmp_path, SIX_NODES + "  decode:\n    engine: dynamo-sglang\n    nodes: 2\n    replicas: 0\n")
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2 and len(lines) == 1, out.stderr
    assert lines[0].startswith(f"error: {tmp_path / 'deploy.yaml'}:16: groups.decode.replicas: "), lines[0]


BAD_NODES = [
    ("nodes: [0, 1, 2]", "2 replicas need the same number of nodes each: the list has 3 node(s)"),
    ("nodes: [0, 0, 1, 2]", "the same node is listed twice"),
    ("nodes: [0, 1, 1, 2]", "node 1 (node1 10.9.0.2) is in replicas 0 and 1"),
    ("nodes: [[0, 1], [1, 2]]", "node 1 (node1 10.9.0.2) is in replicas 0 and 1; replicas of a group never share"),
    ("nodes: [[0, 1], [2]]", "every replica needs the same number of nodes; the lists have [1, 2] nodes"),
    ("nodes: [[0, 1], [2, 3], [4, 5]]", "nodes has 3 per-replica lists but replicas is 2: expected one each"),
    ("nodes: [[0, 1], 2]", "expected a list of nodes or one list of nodes per replica, not both mixed"),
    ("nodes: [[0, 1], []]", "a replica's node list is empty"),
    ("nodes: [[0, 1], [2, 9]]", "no node 9"),
    ("nodes: []", "groups.decode.nodes: the list is empty: expected at least one node"),  # was a traceback
]


@pytest.mark.parametrize(
    ("nodes", "replicas", "expected"),
    [("nodes: 2", line, expected) for line, expected in BAD] + [(n, "replicas: 2", e) for n, e in BAD_NODES],
)
def test_bad_replicas_or_replica_nodes_are_one_line_exit_2(tmp_path, capsys, nodes, replicas, expected):
    text = SIX_NODES + f"  decode:\n    engine: dynamo-sglang\n    {nodes}\n    {replicas}\n"
    assert expected in plan_error(tmp_path, capsys, text)


def test_a_replica_never_takes_another_groups_node(tmp_path, capsys):
    text = SIX_NODES + "  prefill:\n    engine: dynamo-sglang\n    nodes: [2]\n    args: {tp: 8}\n"
    text += "  decode:\n    engine: dynamo-sglang\n    nodes: [0, 1, 2, 3]\n    replicas: 2\n    args: {tp: 16}\n"
    assert "node 2 (node2 10.9.0.3) is in groups prefill and decode" in plan_error(tmp_path, capsys, text)


# -- LeaderWorkerSet `replicas` there and back ------------------------------------------------------------


def seed_002_with_replicas(replicas: int) -> str:
    """Seed 002's manifests (SGLang TP16 on 2 nodes, one LeaderWorkerSet) with spec.replicas set."""
    docs = [d for d in yaml.safe_load_all(manifests("002_5075cd10cd9de433.txt")) if d]
    lws = next(d for d in docs if d["kind"] == "LeaderWorkerSet")
    lws["spec"]["replicas"] = replicas
    return yaml.safe_dump_all(docs, sort_keys=False)


@functools.cache
def crd_validator() -> jsonschema.Draft4Validator:
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # the CRD is large: the C parser, once
    crd = yaml.load((SEEDS.parent / "reference" / "schemas" / CRD_FILE).read_text(), Loader=loader)
    (v1,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    return jsonschema.Draft4Validator(v1["schema"]["openAPIV3Schema"])


def test_lws_replicas_import_plan_export_round_trip(tmp_path):
    """An LWS with replicas 3 imports as ONE group with `replicas: 3` (not three groups), plans as three
    complete instances, and exports as one LeaderWorkerSet with spec.replicas 3, valid against the CRD and
    with the same pod templates as the one-replica manifest's export."""

    def launcher(*args: str) -> subprocess.CompletedProcess:
        argv = [sys.executable, "-m", "launcher", *args]
        return subprocess.run(argv, capture_output=True, text=True, timeout=120, env=fresh_env(), cwd=tmp_path)

    exports = {}
    for replicas in (1, 3):
        manifest = tmp_path / f"lws-{replicas}.yaml"
        manifest.write_text(seed_002_with_replicas(replicas))
        config = tmp_path / f"deploy-{replicas}.yaml"
        run = launcher("import", str(manifest), "-o", str(config))
        assert run.returncode == 0, run.stderr
        groups = yaml.safe_load(config.read_text())["groups"]
        assert len(groups) == 1, groups
        (group,) = groups.values()
        assert group.get("replicas") == (replicas if replicas > 1 else None) and group["nodes"] == 2
        plan = launcher("plan", str(config), "--format", "json")
        assert plan.returncode == 0, plan.stderr
        units = [(g["name"], g["nodes"]) for g in json.loads(plan.stdout)["groups"]]
        name = units[0][0]
        expected = [(name, [0, 1]), (f"{name}.1", [2, 3]), (f"{name}.2", [4, 5])][:replicas]
        assert units == expected
        export = launcher("export", str(config), "--to", "lws")
        assert export.returncode == 0 and "each valid against the CRD's schema" in export.stderr, export.stderr
        (lws,) = [d for d in yaml.safe_load_all(export.stdout) if d and d["kind"] == "LeaderWorkerSet"]
        assert list(crd_validator().iter_errors(lws)) == []
        exports[replicas] = lws
    assert exports[3]["spec"]["replicas"] == 3 and exports[1]["spec"]["replicas"] == 1
    assert exports[3]["spec"]["leaderWorkerTemplate"] == exports[1]["spec"]["leaderWorkerTemplate"]


def test_local_replicas_export_as_one_leaderworkerset_on_the_groups_ports(tmp_path):
    """Replicas that share a node on ports apart are, on Kubernetes, pods of their own: the export is one
    LeaderWorkerSet of replicas 2 whose pods use the group's own ports (replica 0's)."""
    from launcher.plan.kube.exporter import to_manifests

    data = yaml.safe_load((CONFIGS / "local.yaml").read_text().replace("${CONFIG_DIR}", str(CONFIGS)))
    data["groups"]["decode"]["replicas"] = 2
    data.update(runtime="docker", image="example/dynamo:1")
    path = tmp_path / "local.yaml"
    path.write_text(yaml.safe_dump(data))
    objects = to_manifests(build_plan(load_config(path, environ={})))
    lws = {o["metadata"]["name"]: o for o in objects if o["kind"] == "LeaderWorkerSet"}
    assert sorted(lws) == ["local-decode", "local-prefill"]
    assert lws["local-decode"]["spec"]["replicas"] == 2 and lws["local-prefill"]["spec"]["replicas"] == 1
    pod = lws["local-decode"]["spec"]["leaderWorkerTemplate"]["workerTemplate"]["spec"]["containers"][0]
    assert {"name": "DYN_SYSTEM_PORT", "value": "19091"} in pod["env"]
    assert list(crd_validator().iter_errors(lws["local-decode"])) == []


def test_slurm_export_places_each_replica(tmp_path):
    """`export --to slurm`: every replica's ranks are steps on its own nodes of the job, each rank meeting
    its own replica's leader; the job waits for one registered instance per replica."""
    path = write(
        tmp_path,
        SIX_NODES + "  decode:\n    engine: dynamo-sglang\n    nodes: 2\n    replicas: 3\n    args: {tp: 16}\n",
    )
    out = tmp_path / "job.sbatch"
    argv = [sys.executable, "-m", "launcher", "export", str(path), "--to", "slurm", "-o", str(out)]
    run = subprocess.run(argv, capture_output=True, text=True, timeout=60, env=fresh_env(), cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    script = out.read_text()
    assert subprocess.run(["bash", "-n", str(out)], capture_output=True, timeout=30).returncode == 0
    steps = {}
    for block in script.split("\nlaunch ")[1:]:
        line = block.replace("\\\n  ", "").split("\n", 1)[0]
        steps[line.split(" ", 1)[0]] = line
    assert "#SBATCH --nodes=6" in script
    for unit, leader in (("decode", 0), ("decode.1", 2), ("decode.2", 4)):
        for rank in (0, 1):
            step = steps[f"{unit}-r{rank}"]
            assert step.startswith(f"{unit}-r{rank} {leader + rank} ")
            assert f'--dist-init-addr "${{ADDR[{leader}]}}":29500' in step
    assert '"expected":{"backend":3}' in script


def test_the_fabric_check_proves_each_replicas_rendezvous(tmp_path):
    """Each replica is a rendezvous of its own for the fabric check: its ranks meet at its own leader."""
    from launcher.plan import fabric

    plan = plan_of(
        tmp_path, "  decode:\n    engine: dynamo-sglang\n    nodes: 2\n    replicas: 2\n    args: {tp: 16}\n"
    )
    checked = fabric.checked_groups(plan)
    assert [g.name for g in checked] == ["decode", "decode.1"]
    jobs = fabric.jobs(plan, checked)
    meets = {i: [(j.spec["rendezvous"]["group"], j.spec["rendezvous"]["leader"]) for j in jobs[i]] for i in jobs}
    assert meets == {
        0: [("decode", "10.9.0.1")],
        1: [("decode", "10.9.0.1")],
        2: [("decode.1", "10.9.0.3")],
        3: [("decode.1", "10.9.0.3")],
    }
    assert all(j.spec["rendezvous"]["world"] == 2 for js in jobs.values() for j in js)


def test_top_totals_each_replica():
    """`top`: besides the totals per role, one per replica of a replicated group (and none for a group
    without replicas)."""
    from rich.console import Console

    from launcher.output.top_view import table, to_json
    from launcher.plan import observe

    def row(node: int, service: str, group: str, rank: int, tps: float | None, role: str = "decode"):
        figures = None if tps is None else observe.Figures(running=1, output_tps=tps)
        state = "up" if tps is not None else "exited (exit code 1)"
        return observe.TopRow(node, f"n{node}", service, role, group, rank, "worker", state, figures)

    rows = [
        row(0, "decode-r0", "decode", 0, 10.0),
        row(1, "decode-r1", "decode", 1, 20.0),
        row(2, "decode.1-r0", "decode.1", 0, 5.0),
        row(3, "decode.1-r1", "decode.1", 1, None),
        row(4, "prefill-r0", "prefill", 0, 7.0, role="prefill"),
    ]
    per_replica = observe.replica_totals(rows)
    assert sorted(per_replica) == ["decode", "decode.1"]
    assert per_replica["decode"]["output_tps"] == 30.0 and per_replica["decode"]["answering"] == 2
    assert per_replica["decode.1"]["output_tps"] == 5.0 and per_replica["decode.1"]["answering"] == 1
    assert observe.totals(rows)["decode"]["output_tps"] == 35.0
    console = Console(width=220, record=True)
    console.print(table(rows, "top"))
    text = console.export_text()
    assert "decode replica 0 total" in text and "decode replica 1 total" in text and "1/2 up" in text
    assert "prefill replica" not in text
    assert to_json("d", 2.0, "now", rows)["replica_totals"]["decode.1"]["ranks"] == 2


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--role", "decode", "--replica", "1"], "error: --replica: no replica 1 of decode: expected 0"),
        (["--role", "etcd", "--replica", "0"], "error: --replica: no replica 0 of etcd: none is a group's"),
    ],
)
def test_logs_replica_that_names_nothing_is_one_line_exit_2(args, says):
    """`logs --replica K` is checked against the plan before any node is asked (configs/local.yaml has one
    replica per group)."""
    argv = [sys.executable, "-m", "launcher", "logs", "-c", str(CONFIGS / "local.yaml"), *args]
    run = subprocess.run(argv, capture_output=True, text=True, timeout=60, env=fresh_env(), cwd=REPO)
    assert run.returncode == 2 and run.stderr.strip() == says, run.stderr


def test_the_sglang_router_routes_to_every_replica(tmp_path):
    """Plain SGLang P/D behind its router: each decode replica is a worker of its own (its leader's URL)."""
    services = (
        "services:\n  etcd: {enabled: false}\n  nats: {enabled: false}\n  frontend: {enabled: false}\n"
        "  router: {enabled: true, node: 0, port: 9000}\n"
    )
    text = SIX_NODES.replace("groups:\n", services + "groups:\n").replace(
        "gpus_per_node: 8\n", 'gpus_per_node: 8\nversions: {sglang: "0.5.21", sglang_router: "0.3.2"}\n'
    )
    text += "  prefill: {engine: sglang, nodes: 2, args: {tp: 16}, port: 30000}\n"
    text += "  decode: {engine: sglang, nodes: 2, replicas: 2, args: {tp: 16}, port: 30000}\n"
    plan = build_plan(load_config(write(tmp_path, text)))
    router = next(s for s in plan.services if s.role == "router")
    decode = [router.command[i + 1] for i, word in enumerate(router.command) if word == "--decode"]
    assert decode == ["http://10.9.0.3:30000", "http://10.9.0.5:30000"]


def test_command_replicas_learn_their_replica(tmp_path):
    """A `command` group's ranks learn their replica from LAUNCHER_REPLICA (set only with `replicas`)."""
    from tests.helpers import local_command_deployment

    path = local_command_deployment(tmp_path, "cmd", "work", "sleep 1", replicas=3)
    plan = build_plan(load_config(path, environ={}))
    assert [(s.service, s.env["LAUNCHER_REPLICA"]) for s in plan.services] == [
        ("work-r0", "0"),
        ("work.1-r0", "1"),
        ("work.2-r0", "2"),
    ]
    single = build_plan(load_config(local_command_deployment(tmp_path, "one", "work", "sleep 1"), environ={}))
    assert "LAUNCHER_REPLICA" not in single.services[0].env


def test_shared_node_ports_past_their_range_are_one_line_exit_2(tmp_path):
    """Replica K on a shared node listens on the group's ports + K x 100: past Dynamo's 32767 for a
    system port, that is refused in one line naming the group's `replicas`."""
    data = yaml.safe_load((CONFIGS / "local.yaml").read_text().replace("${CONFIG_DIR}", str(CONFIGS)))
    data["groups"]["decode"].update(replicas=2, system_port=32700)
    path = tmp_path / "local.yaml"
    path.write_text(yaml.safe_dump(data))
    argv = [sys.executable, "-m", "launcher", "plan", str(path)]
    run = subprocess.run(argv, capture_output=True, text=True, timeout=60, env=fresh_env(), cwd=tmp_path)
    lines = run.stderr.strip().splitlines()
    assert run.returncode == 2 and len(lines) == 1, run.stderr
    assert "groups.decode.replicas: the replicas share a node, so replica 1's system_port is 32800" in lines[0]
    assert "above 32767" in lines[0]


def test_replica_and_rank_labels_a_node_reports_are_never_trusted_into_a_crash():
    """What `docker inspect` (or the process runtime's listing) says comes from the node: `²` is a digit
    to str.isdigit but not to int(), and 5,000 digits are refused by int() too; either was a traceback
    in `status` (a container not in the plan) and `logs --replica`. Now: not a number, so unknown."""
    from launcher.runtime.base import parse_list

    huge = "9" * 5000
    group = "launcher.group"
    listed = [
        {"Id": "a", "Name": "/rep-x", "Config": {"Labels": {group: "decode.²", "launcher.replica": "¹"}}},
        {"Id": "b", "Name": "/rep-y", "Config": {"Labels": {group: f"decode.{huge}", "launcher.rank": huge}}},
        {"Id": "c", "Name": "/rep-z", "Config": {"Labels": {group: "decode.1", "launcher.replica": "../x"}}},
        {"Id": "d", "Name": "/rep-w", "Config": {"Labels": {group: "decode.1", "launcher.rank": "³"}}},
    ]
    a, b, c, d = parse_list(0, json.dumps(listed))
    assert (a.replica, a.rank, split_unit(a.group)) == (0, None, ("decode", 0))
    assert (b.replica, b.rank, split_unit(b.group)) == (0, None, ("decode", 0))
    assert (c.replica, d.replica, d.rank) == (1, 1, None)  # the group's own unit name says which replica
    assert split_unit("decode.12") == ("decode", 12)
