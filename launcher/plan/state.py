"""What the nodes report running: each container (or process-runtime service) of the deployment,
identified by the launcher's labels. The runtime parses node output into these; `reconcile` compares
them with the plan. Pure data.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime

from launcher.plan.types import LABEL, small_whole, split_unit

# A rolling `up` keeps a replaced service's stopped container (or run directory) under this suffix until
# its replacement proved itself, to start it again on a rollback (see `launcher.plan.reconcile.held`).
HELD_SUFFIX = ".held"


def held_name(name: str) -> str:
    return name + HELD_SUFFIX


def held_base(name: str) -> str | None:
    """The service whose held copy NAME is, or None: NAME is not one."""
    return name[: -len(HELD_SUFFIX)] if name.endswith(HELD_SUFFIX) and len(name) > len(HELD_SUFFIX) else None


@dataclass
class Container:
    """A container as a node reports it, identified by the launcher's labels."""

    node_index: int
    id: str
    name: str
    labels: dict[str, str]
    state: str  # running | exited | created | restarting | dead ...
    exit_code: int
    started_at: str = ""
    finished_at: str = ""
    restarts: int = 0
    # can it be stopped and started again as it was (a roll's hold)? Not a docker container run with --rm
    # (a stop removes it), nor a process-runtime service whose run directory has no recorded command
    holdable: bool = True

    @property
    def service(self) -> str:
        return self.labels.get(f"{LABEL}.service", self.name)

    @property
    def role(self) -> str:
        return self.labels.get(f"{LABEL}.role", "?")

    @property
    def group(self) -> str | None:
        return self.labels.get(f"{LABEL}.group")

    @property
    def rank(self) -> int | None:
        raw = self.labels.get(f"{LABEL}.rank")
        return None if raw is None else small_whole(raw)

    @property
    def replica(self) -> int | None:
        """Which replica of its group (0 for a group without `replicas:`); None outside groups."""
        raw = self.labels.get(f"{LABEL}.replica")
        if raw is not None and (number := small_whole(raw)) is not None:
            return number
        return None if self.group is None else split_unit(self.group)[1]

    @property
    def spec(self) -> str:
        return self.labels.get(f"{LABEL}.spec", "")

    @property
    def running(self) -> bool:
        return self.state == "running"

    def uptime(self, now: datetime) -> float | None:
        if not self.running:
            return None
        match = re.match(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)", self.started_at)
        if not match:
            return None
        started = datetime.fromisoformat(match.group(1)).replace(tzinfo=UTC)
        return max(0.0, (now - started).total_seconds())
