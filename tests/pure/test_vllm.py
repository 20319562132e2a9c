"""The dynamo-vllm engine and configs/vllm-wideep-16gpu.yaml (seed 003): per-node argv and env, ports,
the all-to-all backend by vLLM version, refused topology flags. Pure: no servers."""

from __future__ import annotations

import json
import re
import shlex

import pytest

from launcher.config.load import load as load_config
from launcher.config.schema import GroupSpec, ModelSpec, SSHSettings, VersionsSpec
from launcher.errors import ConfigError
from launcher.plan.build import build as build_plan
from launcher.plan.engines import args as A
from launcher.plan.engines.base import GroupContext
from launcher.plan.engines.dynamo_vllm import ENGINE, canonical
from launcher.plan.types import Node
from tests.helpers import CONFIGS, run_cli, write
from tests.seeds import SEEDS

NIXL = {"kv_connector": "NixlConnector", "kv_role": "kv_both"}


def flags_of(service) -> dict[str, list[str]]:
    assert service.command[:3] == ["python3", "-m", "dynamo.vllm"]
    return A.flags(service.command[3:])


@pytest.fixture(scope="module")
def wideep():
    return build_plan(load_config(CONFIGS / "vllm-wideep-16gpu.yaml", environ={}))


def test_config_renders_one_process_per_node_with_its_dp_ranks(wideep):
    prefill, decode = (next(s for s in wideep.services if s.group == g) for g in ("prefill", "decode"))
    assert (prefill.node.index, decode.node.index) == (0, 1)
    assert {s.role for s in wideep.services if s.node.index == 0} == {"etcd", "nats", "frontend", "prefill"}
    for s, backend in ((prefill, "deepep_high_throughput"), (decode, "deepep_low_latency")):
        f = flags_of(s)
        assert f["--model"] == ["/model"] and f["--served-model-name"] == ["deepseek-ai/DeepSeek-R1-0528"]
        assert f["--disaggregation-mode"] == [s.role]
        assert f["--data-parallel-hybrid-lb"] == [] and f["--enable-expert-parallel"] == []
        assert f["--data-parallel-size"] == ["8"] and f["--data-parallel-size-local"] == ["8"]
        assert f["--data-parallel-start-rank"] == ["0"]
        assert f["--data-parallel-address"] == [s.node.address]  # each group's own leader
        assert f["--data-parallel-rpc-port"] == ["5555"] and f["--tensor-parallel-size"] == ["1"]
        assert json.loads(f["--kv-transfer-config"][0]) == NIXL
        assert f["--all2all-backend"] == [backend]  # vLLM 0.31.0: the flag; the env var is ignored
        assert "VLLM_ALL2ALL_BACKEND" not in s.env
        assert s.env["VLLM_NIXL_SIDE_CHANNEL_HOST"] == s.node.address
        assert s.env["VLLM_NIXL_SIDE_CHANNEL_PORT"] == "5600"
        assert s.env["DYN_SYSTEM_PORT"] == "9090" and s.env["DYN_TCP_RPC_HOST"] == s.node.address
        assert s.env["ETCD_ENDPOINTS"] == "http://192.0.2.40:2379" and s.env["NATS_SERVER"] == "nats://192.0.2.40:4222"
        assert s.env["VLLM_USE_DEEP_GEMM"] == "1" and s.env["NVSHMEM_REMOTE_TRANSPORT"] == "ibgda"
        assert s.ports == [5555, *range(5600, 5608), 9090]
        assert s.probe.url == f"http://{s.node.address}:9090/health"
        # every flag once: the launcher's block and the user's args never both write one
        flat = [t for t in s.command if t.startswith("--")]
        assert len(flat) == len(set(flat))
    assert json.loads(flags_of(decode)["--compilation-config"][0]) == {"cudagraph_mode": "FULL_DECODE_ONLY"}
    assert "--compilation-config" not in flags_of(prefill)
    assert {g.name: g.expected_instances for g in wideep.groups} == {
        "prefill": {"prefill": 1},
        "decode": {"backend": 1},
    }
    c = decode.container
    assert c.network == "host" and c.ipc == "host" and "IPC_LOCK" in c.cap_add and "/dev/infiniband" in c.devices
    assert not wideep.warnings


# -- a group over several nodes, and two groups on one node ---------------------------------------

BASE = """\
deployment: v
image: x:1
versions: {vllm: "0.31.0"}
model: {path: /model, name: m}
nodes: [{address: 10.9.0.1}, {address: 10.9.0.2}, {address: 10.9.0.3}]
groups:
"""

TWO_NODES = (
    BASE
    + """\
  prefill: {engine: dynamo-vllm, nodes: [0, 1], gpus: [0, 1, 2, 3], system_port: 9090}
  decode: {engine: dynamo-vllm, nodes: [2], args: {tensor-parallel-size: 2}}
"""
)


def test_start_ranks_and_leader_across_nodes(tmp_path):
    p = build_plan(load_config(write(tmp_path, TWO_NODES), environ={}))
    r0, r1 = (s for s in p.services if s.group == "prefill")
    for s, start in ((r0, "0"), (r1, "4")):
        f = flags_of(s)
        assert f["--data-parallel-size"] == ["8"] and f["--data-parallel-size-local"] == ["4"]
        assert f["--data-parallel-start-rank"] == [start]
        assert f["--data-parallel-address"] == ["10.9.0.1"] and f["--data-parallel-rpc-port"] == ["29500"]
        assert s.env["VLLM_NIXL_SIDE_CHANNEL_HOST"] == s.node.address
        assert s.probe.url == f"http://{s.node.address}:9090/health"  # every node registers its ranks
        assert s.container.gpus == "0,1,2,3"
    # the DP handshake only on the leader; one NIXL listener per global DP rank
    assert r0.ports == [29500, 5600, 5601, 5602, 5603, 9090]
    assert r1.ports == [5604, 5605, 5606, 5607, 9090]
    (d,) = (s for s in p.services if s.group == "decode")
    f = flags_of(d)
    assert f["--tensor-parallel-size"] == ["2"] and f["--data-parallel-size-local"] == ["4"]
    assert d.probe.kind == "running"  # no system_port: alive is all we can know
    assert {g.name: g.expected_instances for g in p.groups} == {"prefill": {"prefill": 2}, "decode": {"backend": 1}}


def split_node(a: dict[str, int], b: dict[str, int]) -> str:
    def ports(d):
        return ", ".join(f"{k}: {v}" for k, v in d.items())

    return (
        BASE
        + f"""\
  prefill: {{engine: dynamo-vllm, nodes: [0]}}
  decode-a: {{engine: dynamo-vllm, mode: decode, nodes: [1], gpus: [0, 1, 2, 3], {ports(a)}}}
  decode-b: {{engine: dynamo-vllm, mode: decode, nodes: [1], gpus: [4, 5, 6, 7], {ports(b)}}}
"""
    )


DISTINCT_A = {"dist_init_port": 5555, "bootstrap_port": 5600, "system_port": 9090}
DISTINCT_B = {"dist_init_port": 5556, "bootstrap_port": 5610, "system_port": 9091}


def test_two_groups_share_a_node_with_distinct_ports(tmp_path):
    p = build_plan(load_config(write(tmp_path, split_node(DISTINCT_A, DISTINCT_B)), environ={}))
    a, b = (next(s for s in p.services if s.group == g) for g in ("decode-a", "decode-b"))
    assert a.node.index == b.node.index == 1
    assert (a.container.gpus, b.container.gpus) == ("0,1,2,3", "4,5,6,7")
    for s, ports in ((a, DISTINCT_A), (b, DISTINCT_B)):
        f = flags_of(s)
        # two independent DP4 instances, each starting at rank 0 on the same leader address
        assert f["--data-parallel-size"] == f["--data-parallel-size-local"] == ["4"]
        assert f["--data-parallel-start-rank"] == ["0"] and f["--data-parallel-address"] == ["10.9.0.2"]
        assert f["--data-parallel-rpc-port"] == [str(ports["dist_init_port"])]
        assert s.env["VLLM_NIXL_SIDE_CHANNEL_PORT"] == str(ports["bootstrap_port"])
        assert s.env["DYN_SYSTEM_PORT"] == str(ports["system_port"])
    assert not set(a.ports) & set(b.ports)


@pytest.mark.parametrize(
    "clash, port",
    [
        ({"system_port": 9090}, 9090),
        ({"dist_init_port": 5555}, 5555),
        ({"bootstrap_port": 5602}, 5602),  # 5602-5605 overlaps decode-a's 5600-5603
    ],
)
def test_two_groups_on_one_node_with_the_same_port_are_refused(tmp_path, capsys, clash, port):
    path = write(tmp_path, split_node(DISTINCT_A, {**DISTINCT_B, **clash}))
    with pytest.raises(ConfigError) as err:
        build_plan(load_config(path, environ={}))
    assert f"decode-a-r0 and decode-b-r0 both want port {port}" in str(err.value)
    code, _, stderr = run_cli(["plan", str(path)], capsys)
    assert code == 2 and "groups.decode-b" in stderr and "Traceback" not in stderr


# -- refused topology flags (exit 2, one line naming the key) ---------------------------------------


@pytest.mark.parametrize(
    "args, flag",
    [
        ("{data-parallel-size: 16}", "--data-parallel-size"),
        ("{data_parallel_size_local: 4}", "--data-parallel-size-local"),  # vLLM accepts snake_case too
        ("'-dpp 6000'", "--data-parallel-rpc-port"),  # and short aliases
        ("{data-parallel-start-rank: 4}", "--data-parallel-start-rank"),
        ("{data-parallel-address: 10.9.0.9}", "--data-parallel-address"),
        ("{data-parallel-external-lb: true}", "--data-parallel-external-lb"),
        ("{headless: true}", "--headless"),
        ("{tensor-parallel-size: 3}", "--tensor-parallel-size"),
        ("{disaggregation-mode: prefill}", "--disaggregation-mode"),
    ],
)
def test_conflicting_topology_flag_is_a_config_error(tmp_path, capsys, args, flag):
    text = BASE + f"  decode: {{engine: dynamo-vllm, nodes: [0], args: {args}}}\n"
    path = write(tmp_path, text)
    code, out, err = run_cli(["plan", str(path)], capsys)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1, err
    assert lines[0].startswith(f"error: {path}") and "groups.decode.args" in lines[0] and flag in lines[0]


def test_the_computed_value_written_by_hand_is_accepted_once(tmp_path):
    text = (
        BASE + "  decode: {engine: dynamo-vllm, nodes: [0], args: {data-parallel-size: 8, tensor-parallel-size: 1}}\n"
    )
    (s,) = (s for s in build_plan(load_config(write(tmp_path, text), environ={})).services if s.group)
    assert s.command.count("--data-parallel-size") == 1 and s.command.count("--tensor-parallel-size") == 1


def test_side_channel_port_comes_from_bootstrap_port(tmp_path):
    text = BASE + "  decode: {engine: dynamo-vllm, nodes: [0], env: {VLLM_NIXL_SIDE_CHANNEL_PORT: 7000}}\n"
    with pytest.raises(ConfigError) as err:
        build_plan(load_config(write(tmp_path, text), environ={}))
    assert err.value.key == "groups.decode.env.VLLM_NIXL_SIDE_CHANNEL_PORT" and "bootstrap_port" in err.value.message


def test_canonical_flag_names():
    assert canonical(["-tp", "2", "-dp=4", "--kv_transfer_config", "{}", "-1", "--x-y_z=a_b"]) == [
        "--tensor-parallel-size", "2", "--data-parallel-size=4", "--kv-transfer-config", "{}", "-1", "--x-y-z=a_b",
    ]  # fmt: skip


# -- all-to-all backend by vLLM version -----------------------------------------------------------


def context(mode: str, vllm: str | None, argv=(), env=None) -> GroupContext:
    nodes = [Node(index=0, name="n0", address="10.9.0.1", ssh=SSHSettings(), gpus=8)]
    return GroupContext(
        deployment="v", file="v.yaml", name=mode, mode=mode, argv=list(argv), nodes=nodes, gpus=list(range(8)),
        spec=GroupSpec(engine="dynamo-vllm", nodes=1, env=env or {}), model=ModelSpec(path="/m"),
        etcd_endpoint=None, nats_url=None, versions=VersionsSpec(vllm=vllm),
    )  # fmt: skip


@pytest.mark.parametrize("mode, backend", [("prefill", "deepep_high_throughput"), ("decode", "deepep_low_latency")])
@pytest.mark.parametrize("vllm, form", [("0.10.1.1", "env"), ("0.11.0", "env"), ("0.11.1", "flag"),
                                        ("0.17.0", "flag"), ("0.31.0", "flag"), (None, "flag")])  # fmt: skip
def test_all2all_default_in_the_form_the_version_reads(mode, backend, vllm, form):
    ctx = context(mode, vllm)
    assert ENGINE.validate(ctx) == []
    flag = A.value(ENGINE.command(ctx, 0), "--all2all-backend")
    env = ENGINE.env(ctx, 0).get("VLLM_ALL2ALL_BACKEND")
    assert (flag, env) == ((None, backend) if form == "env" else (backend, None))


@pytest.mark.parametrize(
    "ctx, flag",
    [
        (context("decode", "0.31.0", argv=["--all2all-backend", "naive"]), "naive"),
        (context("decode", "0.11.0", env={"VLLM_ALL2ALL_BACKEND": "pplx"}), None),  # plan adds the user's env
        (context("agg", "0.31.0"), None),  # agg keeps vLLM's own default
    ],
)
def test_all2all_left_alone_when_the_user_chose_one_or_for_agg(ctx, flag):
    command = ENGINE.command(ctx, 0)
    assert command.count("--all2all-backend") == (flag is not None) and A.value(command, "--all2all-backend") == flag
    assert "VLLM_ALL2ALL_BACKEND" not in ENGINE.env(ctx, 0)


def test_all2all_in_the_wrong_form_for_the_version():
    with pytest.raises(ConfigError) as err:
        ENGINE.validate(context("decode", "0.11.0", argv=["--all2all-backend", "deepep_low_latency"]))
    assert err.value.key == "groups.decode.args" and "--all2all-backend does not exist in vLLM 0.11.0" in str(err.value)
    with pytest.raises(ConfigError) as err:
        ENGINE.validate(context("decode", "0.31.0", env={"VLLM_ALL2ALL_BACKEND": "deepep_low_latency"}))
    assert err.value.key == "groups.decode.env.VLLM_ALL2ALL_BACKEND" and "ignores" in err.value.message
    # 0.11.1 to 0.16: the env var still works, with vLLM's deprecation warning: ours says so too
    (warning,) = ENGINE.validate(context("decode", "0.12.0", env={"VLLM_ALL2ALL_BACKEND": "deepep_low_latency"}))
    assert warning.startswith("groups.decode.env.VLLM_ALL2ALL_BACKEND: deprecated")


def test_declared_version_reaches_the_engine_through_plan(tmp_path):
    text = BASE.replace('"0.31.0"', '"0.11.0"') + "  decode: {engine: dynamo-vllm, nodes: [0]}\n"
    (s,) = (s for s in build_plan(load_config(write(tmp_path, text), environ={})).services if s.group)
    assert s.env["VLLM_ALL2ALL_BACKEND"] == "deepep_low_latency" and "--all2all-backend" not in s.command


# -- seed 003 -------------------------------------------------------------------------------------

REFERENCE = SEEDS.parent / "reference" / "sglang-and-vllm.md"


def seed_003_manifest(dp_size: int, dp_local: int, leader: str) -> tuple[list[str], dict[str, str]]:
    """The vLLM argv and env of the seed's manifests (llm-d's wide-ep-lws decode.yaml, quoted in the shared
    reference §5.2), with LeaderWorkerSet's placeholders filled in for one instance of DP `dp_size`."""
    text = REFERENCE.read_text().split("### 5.2 llm-d `guides/wide-ep-lws`", 1)[1].split("\n### ", 1)[0]
    block = re.search(r"```\n(.*?)```", text, re.S).group(1)
    command = block.split("vllm serve ", 1)[1].replace("\\\n", " ")
    for placeholder, value in {
        "$((LWS_GROUP_SIZE * DP_SIZE_LOCAL))": str(dp_size), "$DP_SIZE_LOCAL": str(dp_local),
        "$TP_SIZE": "1", "${LWS_LEADER_ADDRESS}": leader, "$START_RANK": "0",
    }.items():  # fmt: skip
        assert placeholder in command, placeholder
        command = command.replace(placeholder, value)
    argv = canonical(shlex.split(command))  # vLLM reads --kv_transfer_config as --kv-transfer-config
    env_text = text.split("* Env:", 1)[1].split("\n* ", 1)[0]
    env = {}
    for item in re.findall(r"`([^`=]+)=([^`]*)`", env_text):
        for name in item[0].split(" / "):
            env[name.strip()] = item[1]
    return argv, env


def test_seed_003_wide_ep_lws(wideep):
    """The seed's topology (its README) and its manifests' flags and env, value by value, against the plan;
    each difference asserted on both sides with its reason."""
    seed = (SEEDS / "003_b6720daf1fd9fa50.txt").read_text()
    gpus, nodes = re.search(r"(\d+)xH200 GPUs split across (\w+) nodes", seed).groups()
    workers = {role.lower(): (int(n), int(dp)) for n, dp, role in re.findall(r"(\d+) DP=(\d+) (Prefill|Decode)", seed)}
    assert (gpus, nodes, workers) == ("16", "two", {"prefill": (1, 8), "decode": (2, 4)})
    # the two decode pods are one LWS group (leader decode-0, worker decode-0-1), not two instances
    assert re.search(r"decode-0 ", seed) and re.search(r"decode-0-1 ", seed)
    (model,) = set(re.findall(r'"model": "([^"]+)"', seed))

    assert len(wideep.nodes) == 2 and all(n.gpus == 8 for n in wideep.nodes)
    assert wideep.model_name == model == "deepseek-ai/DeepSeek-R1-0528"
    groups = {g.name: g for g in wideep.groups}
    assert sum(len(g.node_indices) * len(g.gpus) for g in groups.values()) == int(gpus)
    assert groups["prefill"].node_indices != groups["decode"].node_indices
    assert {g: groups[g].expected_instances for g in groups} == {"prefill": {"prefill": 1}, "decode": {"backend": 1}}

    for role in ("prefill", "decode"):
        (s,) = (s for s in wideep.services if s.group == role)
        pods, dp_local = workers[role]
        # Seed: decode is 2 pods x 4 local DP ranks, one LWS group, so one DP8 instance. Here that instance is
        # one process with 8 local ranks on one node (a launcher group runs one process per node).
        theirs, seed_env = seed_003_manifest(pods * dp_local, dp_local, s.node.address)
        theirs = A.flags(theirs[1:]) | {"--model": [theirs[0]]}  # `vllm serve MODEL`: the model is positional
        ours = flags_of(s)
        assert theirs.pop("--data-parallel-size-local") == [str(dp_local)]
        assert ours.pop("--data-parallel-size-local") == ["8"] and s.container.gpus == "all"
        # The model: the seed serves it by its hub name; here a local path served under that name.
        assert theirs.pop("--model") == [model] and ours.pop("--served-model-name") == [model]
        assert ours.pop("--model") == [wideep.model_path] == ["/model"]
        # API port: each vLLM served its own API on :8200 behind llm-d's gateway; under Dynamo the workers serve
        # no HTTP and the frontend routes P/D on :8000.
        assert theirs.pop("--port") == ["8200"] and "http://0.0.0.0:8200" in seed and "--port" not in ours
        assert wideep.endpoint == f"http://{wideep.nodes[0].address}:8000"
        # Dynamo's P/D role (llm-d told pods apart by label).
        assert ours.pop("--disaggregation-mode") == [role]
        # The all-to-all backend: env VLLM_ALL2ALL_BACKEND in the manifests (vLLM of mid-2025); vLLM 0.31.0,
        # which ai-dynamo 1.6.1 pins, ignores the env var: the flag, same value.
        backend = {"decode": "deepep_low_latency", "prefill": "deepep_high_throughput"}[role]
        assert seed_env.pop("VLLM_ALL2ALL_BACKEND") == "deepep_low_latency"  # the decode manifest's
        assert ours.pop("--all2all-backend") == [backend] and "VLLM_ALL2ALL_BACKEND" not in s.env
        # From the manifests' values.yaml (not in the reference's excerpt).
        assert ours.pop("--trust-remote-code") == []
        # JSON values compared as JSON; the reference elides the EPLB config but its redundant experts.
        for flag in ("--kv-transfer-config", "--compilation-config"):
            if flag in ours:
                assert json.loads(ours.pop(flag)[0]) == json.loads(theirs.pop(flag)[0]), flag
        assert '"num_redundant_experts":"32"' in theirs.pop("--eplb-config")[0]
        assert json.loads(ours.pop("--eplb-config")[0]) == {"num_redundant_experts": 32}
        if role == "prefill":
            # The excerpt is the decode manifest: its decode-only settings (full CUDA graphs for decode, the
            # decode batch threshold of dual batch overlap) are not on prefill.
            assert theirs.pop("--compilation-config") and theirs.pop("--dbo-decode-token-threshold") == ["32"]
        assert ours == theirs, role

        env = dict(s.env)
        # Computed by the launcher: the node's address where the manifests said status.podIP, Dynamo's plumbing.
        assert seed_env.pop("VLLM_NIXL_SIDE_CHANNEL_HOST") == "status.podIP"
        assert env.pop("VLLM_NIXL_SIDE_CHANNEL_HOST") == s.node.address
        assert env.pop("VLLM_NIXL_SIDE_CHANNEL_PORT") == "5600"
        assert env.pop("ETCD_ENDPOINTS") == f"http://{wideep.nodes[0].address}:2379"
        assert env.pop("NATS_SERVER") == f"nats://{wideep.nodes[0].address}:4222"
        assert env.pop("DYN_SYSTEM_PORT") == "9090" and env.pop("DYN_SYSTEM_USE_ENDPOINT_HEALTH_STATUS")
        assert env.pop("DYN_GRACEFUL_SHUTDOWN_GRACE_PERIOD_SECS") == "60"  # the file's drain_timeout (default)
        for name in [k for k in env if k.startswith("DYN_") and k.endswith("_HOST")]:
            assert env.pop(name) == s.node.address
        assert env == seed_env, role


# -- plain `vllm serve` (engine vllm): the same per-node layout, no Dynamo ----------------------------

PLAIN = """\
deployment: v
image: x:1
model: {path: deepseek-ai/DeepSeek-R1-0528}
nodes: [{address: 10.9.0.1}, {address: 10.9.0.2}]
services: {etcd: {enabled: false}, nats: {enabled: false}, frontend: {enabled: false}}
groups:
  decode: {engine: vllm, nodes: 2, port: 8200, dist_init_port: 5555, args: {trust-remote-code: true}}
"""


def test_plain_vllm_serve_per_node(tmp_path):
    p = build_plan(load_config(write(tmp_path, PLAIN), environ={}))
    for s in (s for s in p.services if s.group == "decode"):
        # `vllm serve MODEL`: the model positional, then the API port, then the layout LWS filled in for llm-d
        assert s.command[:5] == ["vllm", "serve", "deepseek-ai/DeepSeek-R1-0528", "--port", "8200"]
        f = A.flags(s.command[3:])
        assert f["--data-parallel-size"] == ["16"] and f["--data-parallel-size-local"] == ["8"]
        assert f["--data-parallel-start-rank"] == [str(8 * s.rank)] and f["--data-parallel-address"] == ["10.9.0.1"]
        assert f["--data-parallel-rpc-port"] == ["5555"] and "--disaggregation-mode" not in f and "--model" not in f
        assert json.loads(f["--kv-transfer-config"][0]) == NIXL and f["--trust-remote-code"] == []
        # no Dynamo: no etcd/NATS variables, nothing to register; each node's own API answers /health
        assert s.env == {"VLLM_NIXL_SIDE_CHANNEL_HOST": s.node.address, "VLLM_NIXL_SIDE_CHANNEL_PORT": "5600"}
        assert s.probe.url == f"http://{s.node.address}:8200/health" and 8200 in s.ports
    assert p.groups[0].expected_instances == {} and p.endpoint is None


def test_plain_vllm_needs_the_model_as_model_path(tmp_path, capsys):
    path = write(tmp_path, PLAIN.replace("model: {path: deepseek-ai/DeepSeek-R1-0528}\n", ""))
    code, _, err = run_cli(["plan", str(path)], capsys)
    assert code == 2 and "groups.decode.engine" in err and "model.path" in err


def test_leader_env_sets_and_removes_on_rank_0_only(tmp_path):
    text = PLAIN.replace("args: {trust-remote-code: true}", "env: {A: '1', B: '2'}, leader: {env: {A: null, C: '3'}}")
    r0, r1 = (s for s in build_plan(load_config(write(tmp_path, text), environ={})).services if s.group)
    assert (r0.env.get("A"), r0.env.get("B"), r0.env.get("C")) == (None, "2", "3")
    assert (r1.env.get("A"), r1.env.get("B"), r1.env.get("C")) == ("1", "2", None)
