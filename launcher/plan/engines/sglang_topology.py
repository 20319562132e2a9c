"""What every multi-node SGLang instance shares, with or without Dynamo in front.

The launcher owns the per-rank topology flags (--dist-init-addr/--nnodes/--node-rank: a hand-written
value would be wrong on every other node), fills or checks --tp-size (the instance's global GPU count),
and sets the P/D mode and bootstrap port. `dynamo_sglang` and `sglang` differ in the module they run,
their env, their probes and how they register.
"""

from __future__ import annotations

from launcher.plan.engines import args as A
from launcher.plan.engines.base import Engine, GroupContext, int_arg

# Flags the launcher owns per rank: a hand-written value would be wrong on every other node.
MANAGED = ("--dist-init-addr", "--nccl-init-addr", "--nnodes", "--node-rank")
# The torch rendezvous port, then the ZMQ ports SGLang derives from it on the dist-init host.
DIST_INIT_PORTS = 6


class SGLangTopology(Engine):
    """Base of the SGLang engines; subclasses set `name` and `module`."""

    module: tuple[str, ...] = ()
    rendezvous = True

    def validate(self, group: GroupContext) -> list[str]:
        argv = group.argv
        for flag in MANAGED:
            if A.has(argv, flag):
                raise group.error("args", f"{flag} is set by the launcher for each rank; remove it")
        mode = A.value(argv, "--disaggregation-mode")
        if mode is not None and group.mode != "agg" and mode != group.mode:
            raise group.error("args", f"--disaggregation-mode {mode} contradicts the group's mode {group.mode}")
        gpus = group.nnodes * len(group.gpus)
        tp = int_arg(group, group.argv, "--tp-size", "--tp", "--tensor-parallel-size")
        if tp is not None and tp != gpus:
            raise group.error(
                "args",
                f"--tp-size {tp} does not match {group.nnodes} node(s) x {len(group.gpus)} GPU(s) = {gpus};"
                f" SGLang's --tp-size is the instance's global GPU count",
            )
        tp = tp or gpus
        dp = int_arg(group, group.argv, "--dp-size", "--data-parallel-size")
        if dp is not None and (dp < 1 or tp % dp):
            raise group.error("args", f"--dp-size {dp} must divide --tp-size {tp}")
        dp_attention = A.has(argv, "--enable-dp-attention", "--attn-dp-size")
        if dp is not None and dp > 1 and group.nnodes > 1 and not dp_attention:
            raise group.error(
                "args",
                "multi-node --dp-size > 1 needs DP attention (--enable-dp-attention); SGLang refuses it otherwise",
            )
        return []

    def bootstrap_port(self, group: GroupContext) -> int:
        given = A.value(group.argv, "--disaggregation-bootstrap-port")
        if given:
            return int(given)
        return group.spec.bootstrap_port or 8998

    def command(self, group: GroupContext, rank: int) -> list[str]:
        argv = list(group.argv)
        head: list[str] = []
        if group.model and not A.has(argv, "--model-path", "--model"):
            head += ["--model-path", group.model.path]
        if group.model and group.model.name and not A.has(argv, "--served-model-name"):
            head += ["--served-model-name", group.model.name]
        topo: list[str] = []
        if group.mode != "agg" and not A.has(argv, "--disaggregation-mode"):
            topo += ["--disaggregation-mode", group.mode]
        if group.mode != "agg" and not A.has(argv, "--disaggregation-bootstrap-port"):
            topo += ["--disaggregation-bootstrap-port", str(self.bootstrap_port(group))]
        if group.nnodes > 1:
            topo += [
                "--dist-init-addr",
                f"{group.leader.address}:{group.spec.dist_init_port}",
                "--nnodes",
                str(group.nnodes),
                "--node-rank",
                str(rank),
            ]
        if not A.has(argv, "--tp-size", "--tp", "--tensor-parallel-size"):
            topo += ["--tp-size", str(group.nnodes * len(group.gpus))]
        return [*self.module, *head, *topo, *argv]

    def ports(self, group: GroupContext, rank: int) -> list[int]:
        ports: list[int] = []
        if group.nnodes > 1 and rank == 0:
            ports += [group.spec.dist_init_port + i for i in range(DIST_INIT_PORTS)]
        if rank == 0 and group.mode == "prefill":
            ports.append(self.bootstrap_port(group))
        return ports

    def peer_ports(self, group: GroupContext, rank: int) -> list[tuple[str, int]]:
        # The bootstrap server runs on node-rank 0 of a prefill instance only.
        return [("bootstrap", self.bootstrap_port(group))] if rank == 0 and group.mode == "prefill" else []

    def summary(self, group: GroupContext) -> str:
        tp = A.value(group.argv, "--tp-size", "--tp", "--tensor-parallel-size") or str(group.nnodes * len(group.gpus))
        dp = A.value(group.argv, "--dp-size", "--data-parallel-size")
        return f"{group.nnodes} node(s) TP{tp}" + (f"/DP{dp}" if dp else "")
