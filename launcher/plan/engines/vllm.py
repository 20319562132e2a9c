"""`vllm serve MODEL`: plain vLLM wide-EP (data + expert parallel) groups, no Dynamo, one process per node.

The same layout as `dynamo-vllm` (hybrid load balancing: each node's process drives its own DP ranks and
serves its own OpenAI API), so the launcher computes the same per-node flags that LeaderWorkerSet filled
in for llm-d (seed 003): DP size, local size, start rank, leader address, RPC port, and the NIXL side
channel. What differs: the model is `vllm serve`'s positional argument, every node serves HTTP on the
group's `port` (vLLM's /health tells it alive and ready), and nothing registers with a Dynamo frontend
(P/D requests need a proxy in front, as llm-d's routing sidecar was).
"""

from __future__ import annotations

from launcher.plan.engines import args as A
from launcher.plan.engines.base import GroupContext
from launcher.plan.engines.dynamo_vllm import DynamoVLLM, canonical
from launcher.plan.types import Probe

DEFAULT_PORT = 8000  # vLLM's own default


class VLLM(DynamoVLLM):
    name = "vllm"
    module = ("vllm", "serve")

    def validate(self, group: GroupContext) -> list[str]:
        if group.model is None:
            raise group.error("engine", "vllm needs `model.path` (what `vllm serve` loads: a directory or a hub id)")
        if A.has(canonical(group.argv), "--model"):
            raise group.error("args", "--model is `vllm serve`'s positional argument here: set model.path instead")
        return super().validate(group)

    def port(self, group: GroupContext) -> int:
        given = A.value(canonical(group.argv), "--port")
        return int(given) if given and given.isdigit() else (group.spec.port or DEFAULT_PORT)

    def command(self, group: GroupContext, rank: int) -> list[str]:
        argv = canonical(group.argv)
        head = [group.model.path if group.model else ""]
        if group.model and group.model.name and not A.has(argv, "--served-model-name"):
            head += ["--served-model-name", group.model.name]
        if not A.has(argv, "--port"):
            head += ["--port", str(self.port(group))]
        return [*self.module, *head, *self.per_node(group, rank, argv)]

    def env(self, group: GroupContext, rank: int) -> dict[str, str]:
        dynamo = super().env(group, rank)
        keep = ("VLLM_NIXL_SIDE_CHANNEL_HOST", "VLLM_NIXL_SIDE_CHANNEL_PORT", "VLLM_ALL2ALL_BACKEND")
        return {k: v for k, v in dynamo.items() if k in keep}

    def ports(self, group: GroupContext, rank: int) -> list[int]:
        return [p for p in super().ports(group, rank) if p != group.spec.system_port] + [self.port(group)]

    def probe(self, group: GroupContext, rank: int) -> Probe:
        # Every node's API server answers /health once its engine cores are up.
        return Probe(kind="http", url=f"http://{group.nodes[rank].address}:{self.port(group)}/health")

    def expected_instances(self, group: GroupContext) -> dict[str, int]:
        return {}  # no Dynamo frontend to register with


ENGINE = VLLM()
