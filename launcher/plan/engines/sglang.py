"""`python3 -m sglang.launch_server`: plain SGLang, one multi-node instance per group, no Dynamo.

Same topology rules as dynamo-sglang (the launcher owns --dist-init-addr/--nnodes/--node-rank, fills
or checks --tp-size). Every rank gets `--host 0.0.0.0` and the group's `--port`: rank 0 serves the
OpenAI API there, ranks >= 1 a health server, which must be reachable to tell them alive. Rank 0 is
ready when its /health answers 200 (503 until the warm-up is done, from 0.5.1), or, on older
versions, when it logs that it is "fired up".
"""

from __future__ import annotations

from packaging.version import Version

from launcher.plan.engines import args as A
from launcher.plan.engines.base import GroupContext
from launcher.plan.engines.sglang_topology import SGLangTopology
from launcher.plan.types import Probe

DEFAULT_PORT = 30000
FIRED_UP = "The server is fired up and ready to roll!"  # rank 0, after the warm-up, in every version


class SGLang(SGLangTopology):
    name = "sglang"
    module = ("python3", "-m", "sglang.launch_server")

    def port(self, group: GroupContext) -> int:
        given = A.value(group.argv, "--port")
        return int(given) if given and given.isdigit() else (group.spec.port or DEFAULT_PORT)

    def command(self, group: GroupContext, rank: int) -> list[str]:
        argv = super().command(group, rank)
        extra: list[str] = []
        if not A.has(group.argv, "--host"):
            extra += ["--host", "0.0.0.0"]
        if not A.has(group.argv, "--port"):
            extra += ["--port", str(self.port(group))]
        return argv + extra

    def env(self, group: GroupContext, rank: int) -> dict[str, str]:
        # SGLang falls back to this when it advertises its own address (bootstrap, metrics).
        return {"SGLANG_HOST_IP": group.nodes[rank].address}

    def ports(self, group: GroupContext, rank: int) -> list[int]:
        ports = super().ports(group, rank)
        return [*ports, self.port(group)]

    def probe(self, group: GroupContext, rank: int) -> Probe:
        sglang = group.versions.parsed("sglang")
        if rank == 0 and sglang is not None and sglang < Version("0.5.1"):
            # Before 0.5.1 rank 0's /health says 200 as soon as HTTP is up, before the warm-up: only
            # this line (logged after the warm-up, which needs every rank) means the instance serves.
            return Probe(kind="log", expect={"line": FIRED_UP})
        # /health answers 200 once the engine can serve (rank 0) or the rank is up (dummy server).
        return Probe(kind="http", url=f"http://{group.nodes[rank].address}:{self.port(group)}/health")

    def expected_instances(self, group: GroupContext) -> dict[str, int]:
        return {}  # no Dynamo frontend to register with


ENGINE = SGLang()
