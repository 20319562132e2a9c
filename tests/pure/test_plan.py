"""The plan of the shipped configs: topology, ranks, addresses, the JSON contract."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from launcher.config.load import load as load_config
from launcher.output import plan_views
from launcher.plan.build import build as build_plan
from launcher.plan.engines import args as A
from launcher.runtime import docker
from tests.helpers import CONFIGS, MINIMAL, REPO, run_cli, write

INVENTORY_32 = REPO / "tests" / "data" / "inventory-32.yaml"
GOLDEN = REPO / "tests" / "golden"

# Every shipped config, with the inventory it needs (None: its nodes are in the file).
SHIPPED = {
    "dsr1-104gpu.yaml": None,
    "testbed-104.yaml": INVENTORY_32,
    "testbed-small.yaml": INVENTORY_32,
    "testbed-dsr1.yaml": INVENTORY_32,
    "local.yaml": None,
    "sglang-tp16-2node.yaml": None,
    "sglang-1p1d-32gpu.yaml": None,
    "vllm-wideep-16gpu.yaml": None,
}


def build(name: str, inventory: Path | None = None, environ: dict[str, str] | None = None):
    return build_plan(load_config(CONFIGS / name, inventory, environ=environ or {}))


def test_every_config_is_covered():
    assert set(SHIPPED) == {p.name for p in CONFIGS.glob("*.yaml")}, "add new configs to SHIPPED"


@pytest.fixture(scope="module")
def dsr1():
    return build("dsr1-104gpu.yaml")


def test_dsr1_topology(dsr1):
    assert len(dsr1.nodes) == 13
    prefill = [s for s in dsr1.services if s.group == "prefill"]
    decode = [s for s in dsr1.services if s.group == "decode"]
    assert [s.node.index for s in prefill] == [0, 1, 2, 3]
    assert [s.node.index for s in decode] == list(range(4, 13))
    assert {s.role for s in dsr1.services if s.node.index == 0} == {"etcd", "nats", "frontend", "prefill"}
    for group, leader, nnodes, tp in ((prefill, "192.0.2.10", 4, 32), (decode, "192.0.2.14", 9, 72)):
        for rank, s in enumerate(group):
            flags = A.flags(s.command)
            assert s.command[:3] == ["python3", "-m", "dynamo.sglang"]
            assert flags["--dist-init-addr"] == [f"{leader}:29500"]
            assert flags["--nnodes"] == [str(nnodes)]
            assert flags["--node-rank"] == [str(rank)]
            assert flags["--tp-size"] == [str(tp)] and flags["--dp-size"] == [str(tp)]
            assert flags["--disaggregation-mode"] == [s.role]
            assert flags["--disaggregation-bootstrap-port"] == ["30001"]
            assert s.env["ETCD_ENDPOINTS"] == "http://192.0.2.10:2379"
            assert s.env["NATS_SERVER"] == "nats://192.0.2.10:4222"
            assert s.env["DYN_TCP_RPC_HOST"] == s.node.address
            assert s.rank == rank


def test_dsr1_keeps_every_seed_flag_or_its_port(dsr1):
    """Every rank's argv equals seed 004's command flag by flag, values included, except for what the
    launcher computes per rank and the two flags SGLang renamed, which appear under their new names."""
    from tests.seeds import bash_commands

    seeds = bash_commands("004_70099621d036eea2.txt", "dynamo.sglang")
    assert len(seeds) == 2
    for seed, role, nnodes in zip(seeds, ("prefill", "decode"), (4, 9), strict=True):
        ranks = [s for s in dsr1.services if s.role == role]
        assert [s.rank for s in ranks] == list(range(nnodes))
        leader = ranks[0].node.address
        for s in ranks:
            theirs, ours = A.flags(seed), A.flags(s.command[3:])
            # The seed's placeholders ("run the same command but change --node-rank"), computed per rank.
            head = "HEAD_PREFILL_NODE_IP" if role == "prefill" else "HEAD_DECODE_NODE_IP"
            assert theirs.pop("--dist-init-addr") == [f"${{{head}}}:29500"]
            assert ours.pop("--dist-init-addr") == [f"{leader}:29500"]
            assert theirs.pop("--node-rank") == ["0"] and ours.pop("--node-rank") == [str(s.rank)]
            # Renamed in SGLang 0.5.x: --enable-deepep-moe -> --moe-a2a-backend deepep, --cuda-graph-bs ->
            # --cuda-graph-bs-decode (same values).
            assert theirs.pop("--enable-deepep-moe") == []
            theirs["--moe-a2a-backend"] = ["deepep"]
            if role == "decode":
                theirs["--cuda-graph-bs-decode"] = theirs.pop("--cuda-graph-bs")
            differ = {k: (ours.get(k), theirs.get(k)) for k in ours.keys() | theirs.keys()}
            differ = {k: pair for k, pair in differ.items() if pair[0] != pair[1]}
            assert not differ, f"{s.service}: (ours, seed's) {differ}"


def test_expected_instances():
    p = build("testbed-104.yaml", INVENTORY_32)
    assert {g.name: g.expected_instances for g in p.groups} == {"prefill": {"prefill": 4}, "decode": {"backend": 9}}
    d = build("dsr1-104gpu.yaml")
    assert {g.name: g.expected_instances for g in d.groups} == {"prefill": {"prefill": 1}, "decode": {"backend": 1}}


def test_labels_identify_every_container(dsr1):
    names = set()
    for s in dsr1.services:
        labels = dsr1.labels(s)
        assert labels["launcher.deployment"] == "dsr1-104gpu"
        assert labels["launcher.role"] == s.role
        assert labels["launcher.node"] == str(s.node.index)
        assert len(labels["launcher.spec"]) == 16
        if s.rank is not None:
            assert labels["launcher.rank"] == str(s.rank)
        names.add(s.name)
    assert len(names) == len(dsr1.services)


def test_spec_hash_changes_only_the_edited_group(tmp_path):
    before = build_plan(load_config(write(tmp_path, MINIMAL), environ={}))
    after = build_plan(
        load_config(
            write(tmp_path, MINIMAL.replace("{tp-size: 16}", "{tp-size: 16, page-size: 1}"), "b.yaml"), environ={}
        )
    )

    def hashes(p):
        return {s.service: p.labels(s)["launcher.spec"] for s in p.services}

    h1, h2 = hashes(before), hashes(after)
    changed = {k for k in h1 if h1[k] != h2[k]}
    assert changed == {"decode-r0", "decode-r1"}
    assert before.group_hash("prefill") == after.group_hash("prefill")
    assert before.group_hash("decode") != after.group_hash("decode")


def test_inventory_vars_and_env_interpolation(tmp_path, monkeypatch):
    p = build("testbed-small.yaml", INVENTORY_32)
    assert p.services[0].image == "launcher-testbed:latest"
    assert "/repo/models/tiny:/model:ro" in p.services[0].container.volumes
    # the environment wins over the inventory's vars
    p2 = build("testbed-small.yaml", INVENTORY_32, environ={"TESTBED_IMAGE": "other:2"})
    assert p2.services[0].image == "other:2"


def test_dotenv_beside_the_file(tmp_path):
    path = write(tmp_path, MINIMAL.replace("example/image:1", "${IMG:-fallback:1}"))
    assert build_plan(load_config(path, environ={})).services[0].image == "fallback:1"
    (tmp_path / ".env").write_text("IMG=from-dotenv:3\n")
    assert build_plan(load_config(path, environ={})).services[0].image == "from-dotenv:3"
    assert build_plan(load_config(path, environ={"IMG": "from-env:4"})).services[0].image == "from-env:4"


def test_secrets_are_redacted_everywhere(tmp_path, capsys):
    token = "hf_SeCrEt_value_123"
    path = write(tmp_path, MINIMAL + "secrets: [HF_TOKEN]\ncontainer:\n  env: {OTHER_API_KEY: 'k-${HF_TOKEN}'}\n")
    (tmp_path / ".env").write_text(f"HF_TOKEN={token}\n")
    p = build_plan(load_config(path, environ={}))
    worker = next(s for s in p.services if s.group == "decode")
    assert worker.secret_env["HF_TOKEN"] == token
    assert "OTHER_API_KEY" in worker.secret_env and "HF_TOKEN" not in worker.env
    etcd = next(s for s in p.services if s.role == "etcd")
    assert "HF_TOKEN" not in etcd.secret_env
    for fmt in ("text", "json", "script"):
        code, out, err = run_cli(["plan", str(path), "--format", fmt, "-v"], capsys)
        assert code == 0, err
        assert token not in out and token not in err
        assert "HF_TOKEN" in out
    argv = docker.docker_run(p, worker)
    assert not any(token in a for a in argv)
    assert any(a.endswith(":/run/launcher-secrets.env:ro") for a in argv)


# The shape `plan --format json` promises in docs/commands.md, level by level (more keys may come; none may go).
JSON_KEYS = {
    "plan": {"deployment", "endpoint", "model", "nodes", "groups", "network", "peers", "services"},
    "node": {"index", "address", "name"},
    "group": {"name", "engine", "mode", "nodes", "gpus", "expected_instances", "rendezvous", "dist_init_port"},
    "network": {"interface", "interfaces"},
    "peer": {"owner", "address", "port", "what", "service", "users"},
    "service": {
        "name", "role", "node_index", "rank", "image", "command", "docker_run", "env", "labels", "ports", "probe",
    },
}  # fmt: skip


def documented_json_block() -> str:
    """The shape as the docs' Commands page shows it (the README's section moved there)."""
    text = (REPO / "docs" / "commands.md").read_text()
    return re.search(r"## `plan --format json`\n\n```\n(.*?)```", text, re.S).group(1)


def test_the_docs_document_the_json_keys_the_contract_checks():
    block = documented_json_block()
    documented = set(re.findall(r'(?<!\|)"(\w+)"\s*[:,}]', block))  # keys, not values ("etcd"|..., |"worker")
    assert documented == set().union(*JSON_KEYS.values())
    # null where nothing serves an endpoint (plain SGLang without its router)
    assert '"endpoint": str|null' in block and '"model": str|null' in block and '"rank": int|null' in block


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_json_contract(name, capsys):
    inventory = ["-i", str(SHIPPED[name])] if SHIPPED[name] else []
    code, out, err = run_cli(["plan", str(CONFIGS / name), *inventory, "--format", "json"], capsys)
    assert code == 0, err
    data = json.loads(out)
    spec = load_config(CONFIGS / name, SHIPPED[name], environ={}).spec
    assert JSON_KEYS["plan"] <= data.keys()
    assert data["deployment"] == spec.deployment
    addresses = {n["index"]: n["address"] for n in data["nodes"]}
    assert JSON_KEYS["network"] <= data["network"].keys()
    for peer in data["peers"]:  # a port one node uses on another: its owner's address, used by other nodes
        assert JSON_KEYS["peer"] <= peer.keys()
        assert peer["address"] == addresses[peer["owner"]] and 0 < peer["port"] < 65536, peer
        assert peer["users"] and all(u in addresses for u in peer["users"]), peer

    assert [n["index"] for n in data["nodes"]] == list(range(len(data["nodes"])))
    for node in data["nodes"]:
        assert JSON_KEYS["node"] <= node.keys()
        assert isinstance(node["address"], str) and isinstance(node["name"], str)
    assert len(set(addresses.values())) == len(addresses)

    services = data["services"]
    by_group: dict[str, list[dict]] = {}
    for s in services:
        assert JSON_KEYS["service"] <= s.keys()
        assert isinstance(s["name"], str) and s["name"].startswith(f"{data['deployment']}-")
        assert isinstance(s["role"], str) and s["role"]
        assert s["node_index"] in addresses
        assert s["rank"] is None or isinstance(s["rank"], int)
        assert isinstance(s["image"], str)
        assert s["command"] and all(isinstance(a, str) for a in s["command"])
        assert s["docker_run"][:2] == ["docker", "run"] and s["docker_run"][-len(s["command"]) :] == s["command"]
        assert all(isinstance(k, str) and isinstance(v, str) for k, v in s["env"].items())
        assert all(isinstance(k, str) and isinstance(v, str) for k, v in s["labels"].items())
        assert s["labels"]["launcher.role"] == s["role"] and s["labels"]["launcher.node"] == str(s["node_index"])
        assert all(isinstance(port, int) and 0 < port < 65536 for port in s["ports"])
        assert len(set(s["ports"])) == len(s["ports"]), s["ports"]
        probe = s["probe"]
        assert probe["kind"] in ("running", "http", "log"), probe
        if probe["kind"] == "http":
            # every service is probed on its own node, on a port it binds
            m = re.fullmatch(r"http://([^:/]+):(\d+)/\S*", probe["url"])
            assert m and m.group(1) == addresses[s["node_index"]] and int(m.group(2)) in s["ports"], (s["name"], probe)
            assert probe["expect"] is None or isinstance(probe["expect"], dict)
        elif probe["kind"] == "log":
            assert isinstance(probe["expect"]["line"], str) and probe["expect"]["line"]
        else:
            assert probe["url"] is None and probe["expect"] is None
        if s["labels"].get("launcher.group"):
            by_group.setdefault(s["labels"]["launcher.group"], []).append(s)
    # no two services of a node bind one port
    for index in addresses:
        bound = [port for s in services if s["node_index"] == index for port in s["ports"]]
        assert len(bound) == len(set(bound)), (index, sorted(bound))

    assert [g["name"] for g in data["groups"]] == list(spec.groups) == list(by_group)
    for g in data["groups"]:
        assert JSON_KEYS["group"] <= g.keys()
        ranks = by_group[g["name"]]
        assert [s["rank"] for s in ranks] == list(range(len(ranks)))
        assert g["nodes"] == [s["node_index"] for s in ranks]
        assert g["engine"] == spec.groups[g["name"]].engine and g["mode"] in ("prefill", "decode", "agg")
        assert all(isinstance(i, int) and i >= 0 for i in g["gpus"]) and len(set(g["gpus"])) == len(g["gpus"])
        # Dynamo's workers register with the frontend, which must list them; plain SGLang has no registry
        registers = g["engine"] in ("dynamo-sglang", "dynamo-vllm", "mocker")
        assert bool(g["expected_instances"]) == registers, g
        assert all(isinstance(k, str) and isinstance(v, int) and v > 0 for k, v in g["expected_instances"].items())

    # The endpoint is the frontend's (or the router's) address and port; the model its served name.
    (front,) = [s for s in services if s["role"] in ("frontend", "router")] or [None]
    if front is None:
        assert data["endpoint"] is None
    else:
        assert data["endpoint"] == f"http://{addresses[front['node_index']]}:{front['ports'][0]}"
    assert data["model"] == (spec.model.name if spec.model else None)
    assert data["model"] is None or isinstance(data["model"], str)
    assert data["endpoint"] is None or front is not None


def test_text_shows_all_nodes(capsys):
    code, out, err = run_cli(["plan", str(CONFIGS / "dsr1-104gpu.yaml")], capsys)
    assert code == 0
    for i in range(13):
        assert f"\nnode {i}  h100-{i:02d}  192.0.2.{10 + i}" in out


def test_script_format_writes_one_runnable_script_per_node(tmp_path, capsys):
    code, out, err = run_cli(
        ["plan", str(CONFIGS / "dsr1-104gpu.yaml"), "-f", "script", "--out", str(tmp_path)], capsys
    )
    assert code == 0, err
    scripts = sorted(tmp_path.glob("*.sh"))
    assert len(scripts) == 13
    import subprocess

    for script in scripts:
        assert os.access(script, os.X_OK)
        subprocess.run(["bash", "-n", str(script)], check=True)


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_golden_plan(name):
    """The whole JSON plan of each shipped config; refresh with UPDATE_GOLDEN=1 after a deliberate change."""
    inv = SHIPPED[name]
    # A fixed CONFIG_DIR: the checkout's own path must not make golden files (or spec hashes) machine-specific.
    data = plan_views.to_json(build(name, inv, environ={"CONFIG_DIR": "/repo/configs"}))
    data["file"] = f"configs/{name}"
    text = json.dumps(data, indent=2, sort_keys=True) + "\n"
    golden = GOLDEN / name.replace(".yaml", ".json")
    if os.environ.get("UPDATE_GOLDEN") == "1":
        golden.parent.mkdir(exist_ok=True)
        golden.write_text(text)
    assert golden.exists(), f"run UPDATE_GOLDEN=1 pytest {__file__}"
    assert text == golden.read_text(), f"plan of {name} changed; review the diff and refresh with UPDATE_GOLDEN=1"


def test_gpu_split_groups_share_a_node(tmp_path):
    text = """\
    deployment: split
    image: x:1
    nodes: [{address: 10.9.0.1}]
    groups:
      decode-a: {engine: dynamo-sglang, mode: decode, nodes: [0], gpus: [0, 1, 2, 3], dist_init_port: 29500,
                 bootstrap_port: 30001}
      decode-b: {engine: dynamo-sglang, mode: decode, nodes: [0], gpus: [4, 5, 6, 7], dist_init_port: 29600,
                 bootstrap_port: 30002}
    """
    p = build_plan(load_config(write(tmp_path, text), environ={}))
    a, b = (s for s in p.services if s.group)
    assert a.container.gpus == "0,1,2,3" and b.container.gpus == "4,5,6,7"
    assert '"device=0,1,2,3"' in docker.docker_run(p, a)
    assert A.flags(a.command)["--tp-size"] == ["4"]
