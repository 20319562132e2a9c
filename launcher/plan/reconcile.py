"""Compare the plan with what runs on the nodes (their labels): what to create, remove, keep.

Pure: the up command feeds it the containers it listed. Rules:
- a service is kept when a container of its name runs on its node with the same spec hash;
- a worker group is recreated whole when any rank must change (a torch.distributed group cannot
  take a new rank into an old group);
- when etcd or NATS is recreated, everything that registered in them is recreated too;
- containers of the deployment that are not in the plan (or on another node) are removed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from launcher.plan.state import Container
from launcher.plan.types import Plan, Service


@dataclass
class Changes:
    create: list[Service] = field(default_factory=list)
    keep: list[Service] = field(default_factory=list)
    remove: list[Container] = field(default_factory=list)  # orphans, and old containers being replaced
    reasons: dict[str, str] = field(default_factory=dict)  # service -> why it is (re)created
    rolled: list[str] = field(default_factory=list)  # replicas replaced one step at a time (plan.roll)

    @property
    def unchanged(self) -> bool:
        return not self.create and not self.remove and not self.rolled


def compute(plan: Plan, containers: list[Container]) -> Changes:
    at = {(c.node_index, c.name): c for c in containers}
    changes = Changes()
    why: dict[str, str] = {}
    for s in plan.services:
        current = at.get((s.node.index, s.name))
        if current is None:
            why[s.service] = "new"
        elif current.spec != s.spec_hash():
            why[s.service] = "spec changed"
        elif not current.running:
            why[s.service] = f"{current.state} (exit {current.exit_code})"
    if any(s.role in ("etcd", "nats") and s.service in why for s in plan.services):
        for s in plan.services:
            if s.role not in ("etcd", "nats"):
                why.setdefault(s.service, "etcd/NATS recreated: must register again")
    for group in plan.groups:
        members = [s for s in plan.services if s.group == group.name]
        first = next((why[s.service] for s in members if s.service in why), None)
        if first is not None:
            for s in members:
                why.setdefault(s.service, f"group {group.name} recreated together ({first} on another rank)")
    planned = {(s.node.index, s.name) for s in plan.services}
    for s in plan.services:
        (changes.create if s.service in why else changes.keep).append(s)
    recreated = {(s.node.index, s.name) for s in changes.create}
    for c in containers:
        if (c.node_index, c.name) not in planned or (c.node_index, c.name) in recreated:
            changes.remove.append(c)
    changes.reasons = why
    return changes
