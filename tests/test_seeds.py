"""Each seed deployment reproduced: what `plan` renders per rank equals the seed's own commands, except
for differences listed here, each with its reason."""

from __future__ import annotations

from launcher import config, plan
from launcher.engines import args as A
from tests.helpers import CONFIGS
from tests.seeds import lws_commands


def seed_002_env(rank: int) -> dict[str, str]:
    return {"NCCL_IB_GID_INDEX": "3"}  # LWS_WORKER_INDEX is Kubernetes plumbing, replaced by --node-rank


def test_seed_002_sglang_tp16_two_nodes():
    p = plan.build(config.load(CONFIGS / "sglang-tp16-2node.yaml", environ={}))
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
