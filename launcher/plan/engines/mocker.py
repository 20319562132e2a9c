"""`python3 -m dynamo.mocker`: Dynamo's CPU-only engine simulator, used by tests and the local default.

Every rank is a standalone mocker in the group's mode (it has no multi-node mode), so a 9-node
decode group registers 9 `backend` instances where SGLang would register one.
"""

from __future__ import annotations

from launcher.plan.engines import args as A
from launcher.plan.engines.base import Engine, GroupContext, component_for, dynamo_env, system_env, system_probe
from launcher.plan.types import Probe


class Mocker(Engine):
    name = "mocker"
    needs_gpu = False
    gpu_free = True
    module = ("python3", "-m", "dynamo.mocker")

    def validate(self, group: GroupContext) -> list[str]:
        if group.spec.fabric:
            raise group.error("fabric", "mocker ranks never rendezvous (each is a standalone worker): remove it")
        if group.model is None and not A.has(group.argv, "--model-path"):
            raise group.error("engine", "the mocker needs `model.path` (a local dir with config.json and tokenizer)")
        workers = A.value(group.argv, "--num-workers")
        if workers is not None and (not workers.isdigit() or int(workers) < 1):
            raise group.error("args", f"--num-workers expects a whole number >= 1, got {workers!r}")
        return []

    def bootstrap_port(self, group: GroupContext) -> int:
        return group.spec.bootstrap_port or 30001

    def command(self, group: GroupContext, rank: int) -> list[str]:
        argv = list(group.argv)
        head: list[str] = []
        if group.model and not A.has(argv, "--model-path"):
            head += ["--model-path", group.model.path]
        if group.model and group.model.name and not A.has(argv, "--model-name"):
            head += ["--model-name", group.model.name]
        if not A.has(argv, "--disaggregation-mode", "--is-prefill-worker", "--is-decode-worker"):
            head += ["--disaggregation-mode", group.mode]
        if group.mode == "prefill" and not A.has(argv, "--bootstrap-ports"):
            head += ["--bootstrap-ports", str(self.bootstrap_port(group))]
        return [*self.module, *head, *argv]

    def env(self, group: GroupContext, rank: int) -> dict[str, str]:
        return {**dynamo_env(group.nodes[rank].address, group.etcd_endpoint, group.nats_url), **system_env(group)}

    def ports(self, group: GroupContext, rank: int) -> list[int]:
        ports = [self.bootstrap_port(group)] if group.mode == "prefill" else []
        if group.spec.system_port:
            ports.append(group.spec.system_port)
        return ports

    def peer_ports(self, group: GroupContext, rank: int) -> list[tuple[str, int]]:
        # Every prefill mocker is an instance of its own, with its own bootstrap server.
        return [("bootstrap", self.bootstrap_port(group))] if group.mode == "prefill" else []

    def probe(self, group: GroupContext, rank: int) -> Probe:
        return system_probe(group, rank)

    def expected_instances(self, group: GroupContext) -> dict[str, int]:
        workers = int(A.value(group.argv, "--num-workers") or 1)
        return {component_for(group.mode): group.nnodes * workers}

    def summary(self, group: GroupContext) -> str:
        return f"{group.nnodes} node(s), standalone mockers"


ENGINE = Mocker()
