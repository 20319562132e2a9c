"""Each seed deployment reproduced: what `plan` renders per rank equals the seed's own commands, except
for differences listed here, each with its reason."""

from __future__ import annotations

from launcher.config.load import load as load_config
from launcher.plan.build import build as build_plan
from launcher.plan.engines import args as A
from tests.helpers import CONFIGS
from tests.seeds import lws_commands


def seed_002_env(rank: int) -> dict[str, str]:
    return {"NCCL_IB_GID_INDEX": "3"}  # LWS_WORKER_INDEX is Kubernetes plumbing, replaced by --node-rank


def test_seed_002_sglang_tp16_two_nodes():
    p = build_plan(load_config(CONFIGS / "sglang-tp16-2node.yaml", environ={}))
    leader_cmd, worker_cmd = lws_commands("002_5075cd10cd9de433.txt")
    ranks = [s for s in p.services if s.group == "serve"]
    assert [s.rank for s in ranks] == [0, 1] and {s.role for s in p.services} == {"serve"}
    leader = p.nodes[0].address
    for s, seed in zip(ranks, (leader_cmd, worker_cmd), strict=True):
        assert s.command[:3] == ["python3", "-m", "sglang.launch_server"]
        ours = A.flags(s.command[3:])
        theirs = A.flags(seed)
        # Kubernetes-only placeholders: LeaderWorkerSet filled them in; the launcher computes them.
        computed = {"--dist-init-addr": [f"{leader}:20000"], "--nnodes": ["2"], "--node-rank": [str(s.rank)]}
        for flag, value in computed.items():
            assert theirs[flag][0].startswith("$(") and ours[flag] == value
        # `--tp 16` is an abbreviation SGLang accepts only with a warning: written out in full.
        assert theirs.pop("--tp") == ours.pop("--tp-size") == ["16"]
        # Every rank serves on --host 0.0.0.0 --port 40000 so the launcher can see rank >= 1 alive.
        if s.rank == 1:
            assert "--host" not in theirs and "--port" not in theirs
            assert ours.pop("--host") == ["0.0.0.0"] and ours.pop("--port") == ["40000"]
        for flag in (*computed,):
            ours.pop(flag)
            theirs.pop(flag)
        assert ours == theirs
        env = {k: v for k, v in s.env.items() if k != "SGLANG_HOST_IP"}  # added: the node's own address
        assert env == seed_002_env(s.rank)
        c = s.container
        assert c.privileged and "IPC_LOCK" in c.cap_add and "/dev/infiniband" in c.devices
        assert c.network == "host" and c.ipc == "host"
        assert any(v.endswith(":/work/models:ro") for v in c.volumes)
    assert p.endpoint is None and not [s for s in p.services if s.role in ("etcd", "nats", "frontend")]


# -- seeds 000/001: SGLang 1P1D (2 + 2 nodes, TP16/DP16) behind the P/D router --------------------

SGL_RENAMED = {"SGL_ENABLE_JIT_DEEPGEMM", "SGL_CHUNKED_PREFIX_CACHE_THRESHOLD"}  # SGL_* -> SGLANG_* (0.5.x)


def _seed_env(env: dict[str, str]) -> dict[str, str]:
    return {("SGLANG_" + k[4:] if k in SGL_RENAMED else k): v for k, v in env.items()}


def test_seeds_000_001_sglang_1p1d_with_router():
    from tests.seeds import lws_pods

    p = build_plan(load_config(CONFIGS / "sglang-1p1d-32gpu.yaml", environ={}))
    pods = lws_pods("001_3bc60c81eb28b8e5.txt")
    engines = [pod for pod in pods if pod["module"] == "sglang.launch_server"]
    (router_pod,) = [pod for pod in pods if pod["module"] == "sglang_router.launch_router"]
    older = [pod for pod in lws_pods("000_6e7791af198eea82.txt") if pod["module"] == "sglang.launch_server"]
    ours = [s for s in p.services if s.group is not None]
    # LWS order: prefill leader, prefill worker, decode leader, decode worker.
    assert [(s.group, s.rank) for s in ours] == [("prefill", 0), ("prefill", 1), ("decode", 0), ("decode", 1)]
    for s, seed, seed_000 in zip(ours, engines, older, strict=True):
        mine, theirs = A.flags(s.command[3:]), A.flags(seed["argv"])
        leader = p.nodes[[g.name for g in p.groups].index(s.group) * 2].address
        # Kubernetes placeholders, computed by the launcher per rank.
        assert theirs.pop("--dist-init-addr") == ["$(LWS_LEADER_ADDRESS):20102"]
        assert mine.pop("--dist-init-addr") == [f"{leader}:20102"]
        assert theirs.pop("--nnodes") == ["$(LWS_GROUP_SIZE)"] and mine.pop("--nnodes") == ["2"]
        assert theirs.pop("--node-rank") == ["$(LWS_WORKER_INDEX)"] and mine.pop("--node-rank") == [str(s.rank)]
        # `--tp 16` (prefill) is an abbreviation SGLang accepts with a warning: written in full.
        if "--tp" in theirs:
            theirs["--tp-size"] = theirs.pop("--tp")
        # --cuda-graph-max-bs became an ambiguous prefix in SGLang 0.5.20: the decode spelling.
        if "--cuda-graph-max-bs" in theirs:
            theirs["--cuda-graph-max-bs-decode"] = theirs.pop("--cuda-graph-max-bs")
        # 001 dropped 000's --deepep-mode (normal for prefill, low_latency for decode): kept from 000.
        assert "--deepep-mode" not in theirs
        assert mine.pop("--deepep-mode") == A.flags(seed_000["argv"])["--deepep-mode"]
        # Added by the launcher: the served name from `model`, the bootstrap port made explicit (it is
        # also what the router is told), and --host/--port on rank 1 too (its health server).
        assert mine.pop("--served-model-name") == ["deepseek-r1"]
        assert mine.pop("--disaggregation-bootstrap-port") == ["8998"]
        if s.rank == 1:
            assert "--host" not in theirs and "--port" not in theirs
            assert mine.pop("--host") == ["0.0.0.0"] and mine.pop("--port") == ["30000"]
        assert mine == theirs, s.service

        env = {k: v for k, v in s.env.items() if k != "SGLANG_HOST_IP"}  # added: the node's own address
        group_union: dict[str, str] = {}
        for pod, svc in zip(engines, ours, strict=True):
            if svc.group == s.group:
                group_union.update(_seed_env(pod["env"]))
        # One env per group (every rank alike): the union of the LWS leader and worker templates, which
        # drifted apart (the prefill leader lacks the DeepEP SM setting its worker has). MC_TE_METRIC was
        # false on the prefill leader only: Mooncake metrics on, as on the other 3 pods.
        assert env == {**group_union, "MC_TE_METRIC": "true"}, s.service
        mine_only = {k for k in env if k not in _seed_env(seed["env"])}
        assert mine_only <= set(group_union), mine_only

        c = s.container
        assert c.privileged and "IPC_LOCK" in c.cap_add and "/dev/infiniband" in c.devices
        assert c.network == "host" and c.ipc == "host" and c.shm_size
        assert any(v.endswith(":/work/models:ro") for v in c.volumes)
        assert any(v.endswith(":/root/.cache") for v in c.volumes)
        assert any(v.endswith("fused_moe_triton/configs") for v in c.volumes)

    (router,) = [s for s in p.services if s.role == "router"]
    seed_router = A.flags(router_pod["argv"])
    mine = A.flags(router.command[router.command.index("--pd-disaggregation") :])
    # Kubernetes Service names -> rank 0 of each instance; the prefill URL carries its bootstrap port
    # (without it the decode side would substitute its own).
    assert seed_router.pop("--prefill") == ["http://deepseekr10528-prefill-main:30000"]
    assert mine.pop("--prefill") == [f"http://{p.nodes[0].address}:30000", "8998"]
    assert seed_router.pop("--decode") == ["http://deepseekr10528-decode-main:30000"]
    assert mine.pop("--decode") == [f"http://{p.nodes[2].address}:30000"]
    # The Prometheus port is set explicitly: a taken one crashes the router.
    assert mine.pop("--prometheus-port") == ["29000"] and mine.pop("--prometheus-host") == ["0.0.0.0"]
    assert mine == seed_router
    assert router.command[:3] == ["sh", "-c", router.command[2]] and router.command[3] == "0.3.2"  # pinned
    # Privileged, IPC_LOCK and /dev/infiniband only where the seed's engines need them, not the router.
    assert not router.container.privileged and not router.container.devices and router.container.gpus == "none"
    assert router.probe.url == f"http://{p.nodes[0].address}:8000/readiness"
    assert p.endpoint == f"http://{p.nodes[0].address}:8000"
