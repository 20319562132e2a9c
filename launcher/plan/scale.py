"""`launcher scale GROUP=N` as data: the request read and checked against the file, what the change
starts and stops, and the workers a plan no longer has (a replica scaled in) as the services they were
started as, so that they can be drained before they are removed.

A stray replica's service is found in the plan of the same file with that group's `replicas` raised to
include it: replica K's nodes and ports depend on K, not on how many replicas there are. Where that
plan cannot be built (its nodes are gone from the inventory, say), the stray is drained without its
/metrics: SIGTERM, then wait until it exits (a Dynamo worker exits once its requests are done).
"""

from __future__ import annotations

import dataclasses

from launcher.config.limits import MAX_REPLICAS
from launcher.config.load import Loaded
from launcher.errors import ConfigError, LauncherError
from launcher.plan import drain as plan_drain
from launcher.plan.build import build
from launcher.plan.state import Container
from launcher.plan.types import Plan, Service, split_unit

USAGE = "GROUP=N"


def parse_request(text: str) -> tuple[str, int]:
    """`decode=3` -> ("decode", 3); anything else is one line naming what is wrong."""
    group, sep, count = text.partition("=")
    group, count = group.strip(), count.strip()
    if not sep or not group:
        raise ConfigError(f"expected a group of the file and its replica count (decode=3), got {text!r}", key=USAGE)
    if not (count.isascii() and count.isdigit()) or len(count) > 9:
        raise ConfigError(f"replicas of {group} must be a whole number, got {count!r}", key=USAGE)
    n = int(count)
    if not 1 <= n <= MAX_REPLICAS:
        raise ConfigError(f"replicas of {group} must be 1 to {MAX_REPLICAS} (the launcher's limit), got {n}", key=USAGE)
    return group, n


def check_group(loaded: Loaded, plan: Plan, group: str) -> None:
    """GROUP is a group of the file (a role that is not a group is named as such)."""
    groups = list(loaded.spec.groups)
    if group in groups:
        return
    holders = sorted({s.group for s in plan.services if s.role == group and s.group})
    bases = sorted({split_unit(g)[0] for g in holders})
    if group in {s.role for s in plan.services}:
        what = f"group(s) {', '.join(bases)} have it" if bases else "only groups have replicas"
        raise ConfigError(f"{group} is a role, not a group ({what}): expected one of {', '.join(groups)}", key=USAGE)
    raise ConfigError(f"no group {group!r} in the file: expected one of {', '.join(groups)}", key=USAGE)


def difference(old: Plan, new: Plan) -> tuple[list[Service], list[Service], list[Service]]:
    """(started, stopped, recreated): services only the new plan has, only the old one has, and those
    both have with another spec."""
    before = {(s.node.index, s.name): s for s in old.services}
    after = {(s.node.index, s.name): s for s in new.services}
    started = [s for k, s in after.items() if k not in before]
    stopped = [s for k, s in before.items() if k not in after]
    recreated = [s for k, s in after.items() if k in before and before[k].spec_hash() != s.spec_hash()]
    return started, stopped, recreated


def strays(loaded: Loaded | None, plan: Plan, containers: list[Container]) -> list[Service]:
    """The Dynamo workers among `containers` that the plan does not have, as the services they were
    started as (see the module's docstring); containers of groups the file no longer has are left out."""
    planned = {(s.node.index, s.name) for s in plan.services}
    leaders = {}  # base group -> rank -> a planned service of it (the fallback's template)
    for s in plan.services:
        if s.group is not None:
            leaders.setdefault(split_unit(s.group)[0], {}).setdefault(s.rank, s)
    out = []
    found = [c for c in containers if (c.node_index, c.name) not in planned and c.group is not None]
    found = [c for c in found if split_unit(c.group or "")[0] in leaders]
    wider = _widened(loaded, found)
    for c in found:
        base = split_unit(c.group or "")[0]
        service = wider.get((c.node_index, c.name)) or _as_started(plan, c, leaders[base])
        if service is not None and plan_drain.drained(service):
            out.append(service)
    return out


def _widened(loaded: Loaded | None, found: list[Container]) -> dict[tuple[int, str], Service]:
    """The services of the file's plan with each group's replicas raised to cover the strays found."""
    wanted: dict[str, int] = {}
    for c in found:
        base, replica = split_unit(c.group or "")
        if c.replica is not None and c.replica < MAX_REPLICAS:
            wanted[base] = max(wanted.get(base, 1), c.replica + 1)
    if loaded is None or not wanted:
        return {}
    groups = dict(loaded.spec.groups)
    for base, count in wanted.items():
        if base in groups and count > groups[base].replicas:
            groups[base] = groups[base].model_copy(update={"replicas": count})
    try:
        wide = build(loaded.model_copy(update={"spec": loaded.spec.model_copy(update={"groups": groups})}))
    except (LauncherError, ValueError, IndexError):  # no longer placeable: the fallback drains them
        return {}
    return {(s.node.index, s.name): s for s in wide.services}


def _as_started(plan: Plan, c: Container, ranks: dict[int | None, Service]) -> Service | None:
    """A stray as a service of its group, without its metrics port (unknown): drained until it exits."""
    template = ranks.get(c.rank) or next(iter(ranks.values()))
    if not 0 <= c.node_index < len(plan.nodes):
        return None
    # Its labels are the node's word: one whose service label does not give back its own name (another
    # container's service, or a held copy `NAME.held`) is not signalled, lest the live one be drained.
    if c.name != f"{plan.deployment}-{c.service}":
        return None
    env = {k: v for k, v in template.env.items() if k != "DYN_SYSTEM_PORT"}
    return dataclasses.replace(
        template, service=c.service, node=plan.nodes[c.node_index], env=env, group=c.group, replica=c.replica
    )
