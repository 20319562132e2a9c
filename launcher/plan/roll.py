"""Rolling `up`, as data: which replicas of which groups are replaced one step at a time, which roles a
change would take down (a single running replica recreated), and the request counter that proves a
smoke request reached a new replica.

Pure: `up` feeds it the reconcile's changes and the containers it listed. Rules:
- a replica (one instance of a group with `replicas` >= 2) rolls when its containers all run and at least
  one of them has a changed spec: it is drained, stopped, replaced and proven before the next step;
- a step replaces `max_unavailable` replicas of one group at once, never all of them (one keeps serving);
- replicas that are new or not running are started as `up` always did (that is capacity, not downtime);
- when etcd or NATS is recreated everything restarts anyway: nothing rolls;
- a role whose every running replica would be recreated at once is unavailable meanwhile: `up` refuses
  that without `--allow-downtime`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from launcher.plan import drain as plan_drain
from launcher.plan.reconcile import Changes
from launcher.plan.state import Container
from launcher.plan.types import Group, Plan, Service

WORKER_REQUESTS = "dynamo_component_requests_total"  # per endpoint: the `generate` ones count
ENGINE_REQUESTS = ("vllm:request_success_total", "sglang:num_requests_total")


@dataclass
class Step:
    """One roll step: these replicas (unit names, e.g. `decode.1`) of group `base` replaced together."""

    base: str
    units: list[str]
    services: list[Service]

    @property
    def label(self) -> str:
        return ", ".join(self.units)


@dataclass
class Roll:
    steps: list[Step] = field(default_factory=list)
    max_unavailable: int = 1
    prove_fabric: bool = True  # each step's multi-node replicas meet in the fabric check before they start

    @property
    def units(self) -> list[str]:
        return [u for s in self.steps for u in s.units]

    def describe(self) -> list[str]:
        """The lines `up` says before it starts: one per rolled group."""
        lines = []
        for base in dict.fromkeys(s.base for s in self.steps):
            steps = [s for s in self.steps if s.base == base]
            units = [u for s in steps for u in s.units]
            lines.append(
                f"will roll {base}: {len(units)} replica(s) ({', '.join(units)}) in {len(steps)} step(s),"
                f" each drained, replaced and proven by a smoke request before the next"
            )
        return lines


def members(plan: Plan, group: Group) -> list[Service]:
    return [s for s in plan.services if s.group == group.name]


def _running(s: Service, at: dict[tuple[int, str], Container]) -> bool:
    c = at.get((s.node.index, s.name))
    return c is not None and c.running


def _spec_changed(s: Service, at: dict[tuple[int, str], Container]) -> bool:
    """A running container whose spec differs from the plan's: replacing it is a change, not a repair."""
    c = at.get((s.node.index, s.name))
    return c is not None and c.running and c.spec != s.spec_hash()


def _infra_recreated(plan: Plan, changes: Changes) -> bool:
    return any(s.role in ("etcd", "nats") and s.service in changes.reasons for s in plan.services)


def _candidates(plan: Plan, changes: Changes, containers: list[Container]) -> list[Group]:
    """The replicas that would roll: of a group with 2 or more, every container running, a spec changed."""
    if _infra_recreated(plan, changes):
        return []
    at = {(c.node_index, c.name): c for c in containers}
    out = []
    for g in plan.groups:
        ss = members(plan, g)
        if g.replicas >= 2 and ss and all(_running(s, at) for s in ss) and any(_spec_changed(s, at) for s in ss):
            out.append(g)
    return out


def unholdable(plan: Plan, group: Group, containers: list[Container]) -> str | None:
    """Why a replica cannot roll (its old copy could not be held for a rollback), or None: its containers
    run, or would run, with docker's --rm (a stop removes them), or a process-runtime service's run
    directory has no recorded command to start again (started by an older launcher)."""
    ss = members(plan, group)
    at = {(c.node_index, c.name): c for c in containers}
    if plan.runtime == "docker" and any(_auto_removed(s.container.run_options or []) for s in ss):
        return f"group {group.base}'s containers run with --rm (a stopped one is removed: nothing to roll back to)"
    if any((c := at.get((s.node.index, s.name))) is not None and not c.holdable for s in ss):
        if plan.runtime == "docker":
            return f"group {group.base}'s containers run with --rm (a stopped one is removed: nothing to roll back to)"
        return f"group {group.base}'s run directories record no command to start again (started by an older launcher)"
    return None


def _auto_removed(options: list[str]) -> bool:
    return any(o == "--rm" or o in ("--rm=true", "--rm=1") for o in options)


def rollable(plan: Plan, changes: Changes, containers: list[Container]) -> list[Group]:
    """The replicas that roll: those that would (`_candidates`) and can (`unholdable`); the others are
    recreated at once, as `up` always did (downtime when their role has no other replica)."""
    return [g for g in _candidates(plan, changes, containers) if unholdable(plan, g, containers) is None]


def blocked(plan: Plan, changes: Changes, containers: list[Container]) -> dict[str, str]:
    """Role -> why its replicas, which would roll, cannot (`unholdable`): said in the downtime refusal."""
    out: dict[str, str] = {}
    for g in _candidates(plan, changes, containers):
        if (why := unholdable(plan, g, containers)) is not None:
            out.setdefault(members(plan, g)[0].role, why)
    return out


def steps(plan: Plan, groups: list[Group], max_unavailable: int = 1) -> list[Step]:
    """The roll's steps: group by group in the plan's order, replica by replica, `max_unavailable` at a
    time but never a whole group (at least one of its replicas serves during each step)."""
    out: list[Step] = []
    for base in dict.fromkeys(g.base for g in groups):
        chosen = [g for g in groups if g.base == base]
        width = max(1, min(max_unavailable, chosen[0].replicas - 1))
        for i in range(0, len(chosen), width):
            batch = chosen[i : i + width]
            out.append(Step(base, [g.name for g in batch], [s for g in batch for s in members(plan, g)]))
    return out


def downtime(plan: Plan, changes: Changes, containers: list[Container], rolled: list[Group]) -> list[str]:
    """The roles (prefill, decode, ...) that a change would leave with no running replica while it is
    recreated: every running replica of the role has a changed spec and none of them rolls."""
    at = {(c.node_index, c.name): c for c in containers}
    rolling = {g.name for g in rolled}
    roles: dict[str, list[tuple[Group, bool]]] = {}
    for g in plan.groups:
        ss = members(plan, g)
        if not ss or not any(_running(s, at) for s in ss):
            continue  # not serving now: starting it costs nothing
        recreated = g.name not in rolling and any(_spec_changed(s, at) for s in ss)
        roles.setdefault(ss[0].role, []).append((g, recreated))
    return sorted(role for role, units in roles.items() if all(down for _, down in units))


def split(plan: Plan, changes: Changes, roll: Roll) -> None:
    """Take the rolled replicas out of `changes` (their services are not created, nor their containers
    removed, up front): the roll replaces them one step at a time after everything else has started."""
    names = {s.name for st in roll.steps for s in st.services}
    changes.create = [s for s in changes.create if s.name not in names]
    changes.remove = [c for c in changes.remove if c.name not in names]
    changes.rolled = roll.units


def worker_requests(text: str) -> float:
    """The requests a worker has received (its `generate` endpoints' counter, else its engine's) from a
    /metrics answer, read within the drain's bounds; ValueError when it holds no readable count."""
    samples = plan_drain.samples(text, (WORKER_REQUESTS, *ENGINE_REQUESTS))
    generate = [v for n, labels, v in samples if n == WORKER_REQUESTS and labels.get("dynamo_endpoint") == "generate"]
    values = generate or [v for n, _, v in samples if n in ENGINE_REQUESTS]
    if not values:
        raise ValueError("no request counter in it")
    if any(not math.isfinite(v) or v < 0 for v in values):
        raise ValueError("a request counter that is not a count")
    return sum(values)


def in_progress(replicas: list[dict], held: dict[str, list[str]]) -> list[dict]:
    """The rolls `status` finds in progress, one per group: a replica with a held copy (`held`: unit name ->
    the group specs its held copies carry) is being replaced; replicas on two specs (some on the plan's,
    some running another) are a roll stopped between steps. `replicas`: status's, each with its `name`,
    `group`, plan `spec`, `running_spec` and `state` (current, outdated, partial, missing). Says what the
    next `launcher up` does, as `up` would (`reconcile.held`, then `rollable`): finish or roll back."""
    out = []
    for base in dict.fromkeys(r["group"] for r in replicas):
        units = [r for r in replicas if r["group"] == base]
        current = [r["name"] for r in units if r["state"] == "current"]
        outdated = [r["name"] for r in units if r["state"] == "outdated"]
        replacing = [_replacing(r, held[r["name"]]) for r in units if r["name"] in held]
        if not replacing and not (current and outdated):
            continue
        back = [r["replica"] for r in replacing if r["next"] == "roll back"]
        rest = [n for n in outdated if n not in back]  # running another spec: rolled after
        out.append(
            {"group": base, "current": current, "outdated": outdated, "replacing": replacing,
             "next": "roll back" if back else "finish", "says": _says(base, replacing, back, rest)}
        )  # fmt: skip
    return out


def _replacing(replica: dict, held_specs: list[str]) -> dict:
    """A replica with a held copy: from the held copy's spec to the plan's, and what `up` does with it:
    `finish` (the new spec runs: the held copy is removed), `roll back` (the replica does not run: its held
    copy is started again), `keep` (it runs yet another spec: the held copy is left)."""
    state = replica["state"]
    action = {"current": "finish", "outdated": "keep"}.get(state, "roll back")
    return {
        "replica": replica["name"], "from_spec": sorted(set(held_specs)), "to_spec": replica["spec"],
        "running_spec": replica["running_spec"], "state": state, "next": action,
    }  # fmt: skip


def _says(base: str, replacing: list[dict], back: list[str], rest: list[str]) -> str:
    """The status line of one roll in progress."""
    steps = [
        f"replacing {r['replica']} (spec {', '.join(r['from_spec']) or '?'} -> {r['to_spec']}, {r['state']})"
        for r in replacing
    ]
    if not steps:
        steps = ["replicas on two specs"]
    todo = []
    if back:
        todo.append(f"roll back {', '.join(back)} (start the held copy again)")
    if done := [r["replica"] for r in replacing if r["next"] == "finish"]:
        todo.append(f"remove the held copy of {', '.join(done)}")
    if kept := [r["replica"] for r in replacing if r["next"] == "keep"]:
        todo.append(f"keep the held copy of {', '.join(kept)} (`launcher down` removes it)")
    if rest or back:
        todo.append(f"roll {', '.join([*back, *rest])} to the plan's spec")
    return f"roll in progress: {base}: {'; '.join(steps)}. `launcher up` will {', then '.join(todo)}"
