"""`command`: run the group's `args` as-is on every rank (any program; benchmarks and custom workers).

The launcher adds only what it adds for every service: labels, env, mounts. Ranks learn their place
from the environment: LAUNCHER_RANK, LAUNCHER_NNODES, LAUNCHER_LEADER (and LAUNCHER_REPLICA with `replicas`).
"""

from __future__ import annotations

from launcher.plan.engines.base import Engine, GroupContext


class Command(Engine):
    name = "command"
    needs_gpu = False

    def validate(self, group: GroupContext) -> list[str]:
        if not group.argv:
            raise group.error("args", "the command engine needs the program to run in `args` (a list or a string)")
        return []

    def command(self, group: GroupContext, rank: int) -> list[str]:
        return list(group.argv)

    def env(self, group: GroupContext, rank: int) -> dict[str, str]:
        env = {
            "LAUNCHER_RANK": str(rank),
            "LAUNCHER_NNODES": str(group.nnodes),
            "LAUNCHER_LEADER": group.leader.address,
        }
        if group.replicas > 1:  # only then: the plans of files without replicas stay as they were
            env["LAUNCHER_REPLICA"] = str(group.replica)
        return env

    def summary(self, group: GroupContext) -> str:
        return f"{group.nnodes} node(s) running {group.argv[0]}"


ENGINE = Command()
