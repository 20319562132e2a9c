"""Compare the plan with what runs on the nodes (their labels): what to create, remove, keep.

Pure: the up command feeds it the containers it listed. Rules:
- a service is kept when a container of its name runs on its node with the same spec hash;
- a worker group is recreated whole when any rank must change (a torch.distributed group cannot
  take a new rank into an old group);
- when etcd or NATS is recreated, everything that registered in them is recreated too;
- containers of the deployment that are not in the plan (or on another node) are removed;
- a held copy (`<name>.held`, a rolling `up`'s previous spec of NAME, see `held`) is never an orphan:
  `up` restores it when NAME is absent or not running, removes it when NAME runs the current spec or is
  no longer planned, keeps it otherwise; it says which.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from launcher.plan.state import Container, held_base
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
        if held_base(c.name) is not None:
            continue  # see `held`: never removed as an orphan
        if (c.node_index, c.name) not in planned or (c.node_index, c.name) in recreated:
            changes.remove.append(c)
    changes.reasons = why
    return changes


@dataclass
class Held:
    """A held copy found on a node, and what `up` does with it first: restore | remove | keep."""

    copy: Container
    base: str
    action: str
    why: str

    def describe(self) -> str:
        verb = {"restore": "restoring", "remove": "removing", "keep": "keeping"}[self.action]
        return f"{verb} {self.copy.name} on node {self.copy.node_index} (previous spec of {self.base}): {self.why}"


def held(plan: Plan, containers: list[Container]) -> list[Held]:
    """What `up` does with each held copy left by an interrupted or failed roll, before anything else:
    it may be the last good copy of its service, so it is never removed silently."""
    at = {(c.node_index, c.name): c for c in containers}
    planned = {(s.node.index, s.name): s for s in plan.services}
    out = []
    for c in containers:
        base = held_base(c.name)
        if base is None:
            continue
        s, now = planned.get((c.node_index, base)), at.get((c.node_index, base))
        if s is None:
            out.append(Held(c, base, "remove", f"{base} is no longer in the plan"))
        elif now is None or not now.running:
            state = "absent" if now is None else f"{now.state} (exit {now.exit_code})"
            out.append(Held(c, base, "restore", f"{base} is {state}: its previous spec is started again"))
        elif now.spec == s.spec_hash():
            out.append(Held(c, base, "remove", f"{base} runs the current spec"))
        else:
            out.append(Held(c, base, "keep", f"{base} runs another spec: left (`launcher down` removes it)"))
    return out
