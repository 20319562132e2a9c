"""`python3 -m dynamo.sglang`: one multi-node SGLang instance per group, Dynamo runtime on every rank."""

from __future__ import annotations

from launcher.plan.engines.base import GroupContext, component_for, dynamo_env, system_env, system_probe
from launcher.plan.engines.sglang_topology import SGLangTopology
from launcher.plan.types import Probe


class DynamoSGLang(SGLangTopology):
    name = "dynamo-sglang"
    module = ("python3", "-m", "dynamo.sglang")

    def env(self, group: GroupContext, rank: int) -> dict[str, str]:
        node = group.nodes[rank]
        env = dynamo_env(node.address, group.etcd_endpoint, group.nats_url)
        # SGLang falls back to this when it advertises the bootstrap host.
        env["SGLANG_HOST_IP"] = node.address
        if rank == 0:  # only node-rank 0 registers `generate`
            env.update(system_env(group))
        return env

    def ports(self, group: GroupContext, rank: int) -> list[int]:
        ports = super().ports(group, rank)
        if rank == 0 and group.spec.system_port:
            ports.append(group.spec.system_port)
        return ports

    def probe(self, group: GroupContext, rank: int) -> Probe:
        if rank == 0:
            return system_probe(group, 0)
        # Ranks >= 1 serve nothing (Dynamo's non-leader nodes): alive is all we can know.
        return Probe(kind="running")

    def expected_instances(self, group: GroupContext) -> dict[str, int]:
        # Only node-rank 0 registers `generate`: one instance per multi-node group.
        return {component_for(group.mode): 1}


ENGINE = DynamoSGLang()
