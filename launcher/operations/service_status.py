"""What every service of the deployment is doing, read from the nodes' labels, its health probe and its
token progress, and whether the endpoint serves: the rows, problems, replicas and rolls `status` prints
(and `collect` keeps)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from launcher.operations import rank_progress
from launcher.operations.context import Target
from launcher.operations.health import EndpointState, endpoint_state, probe_http
from launcher.operations.nodes import list_services
from launcher.plan import roll as plan_roll
from launcher.plan.state import Container, held_base
from launcher.plan.types import LABEL, Node, split_unit


@dataclass
class StatusRow:
    node: Node
    service: str
    role: str
    group: str | None
    rank: int | None
    state: str
    uptime: float | None
    restarts: int
    health: str
    container: str | None
    id: str | None = None
    replica: int | None = None  # of its group (0 without `replicas:`); None outside groups
    group_spec: str | None = None  # the group hash its container carries (launcher.group-spec)

    def to_json(self) -> dict[str, Any]:
        return {
            "node_index": self.node.index,
            "address": self.node.address,
            "node": self.node.name,
            "service": self.service,
            "role": self.role,
            "group": self.group,
            "rank": self.rank,
            "replica": self.replica,
            "state": self.state,
            "uptime_s": None if self.uptime is None else round(self.uptime),
            "restarts": self.restarts,
            "health": self.health,
            "container": self.container,
            "id": self.id,
        }


def status_json(t: Target, rows: list[StatusRow], unreachable: dict[int, str], endpoint: EndpointState) -> dict:
    """What `status --json` prints (and `collect` keeps)."""
    plan = t.plan
    problems = problems_of(t, rows, unreachable, endpoint)
    return {
        "deployment": plan.deployment,
        "endpoint": plan.endpoint,
        "frontend": endpoint.to_json(plan.endpoint, plan.model_name),
        "ok": not problems,
        "problems": problems,
        "unreachable": {str(i): why for i, why in unreachable.items()},
        "services": [r.to_json() for r in rows],
        "replicas": replicas_of(t, rows),
        "rolls": rolls_of(t, rows),
        # the substitutions `watch` made, read back from the replacement ranks' labels (launcher.plan.spares)
        "replaced": [{"lost": lost, "spare": spare} for lost, spare in sorted(plan.substitutes.items())],
    }


def rolls_of(t: Target, rows: list[StatusRow]) -> list[dict[str, Any]]:
    """The rolls in progress (`launcher.plan.roll.in_progress`): from the replicas' specs and the held
    copies found (each row of one carries its replica's name and the group spec it ran)."""
    held: dict[str, list[str]] = {}
    for r in rows:
        if r.group is not None and r.state.startswith("held ("):
            held.setdefault(r.group, []).extend([r.group_spec] if r.group_spec else [])
    return plan_roll.in_progress(replicas_of(t, rows), held)


def replicas_of(t: Target, rows: list[StatusRow]) -> list[dict[str, Any]]:
    """Each replica of each group: the spec hash the plan gives it (`launcher.group-spec`), the ones its
    running services carry, and whether it runs that spec: current, outdated, partial or missing."""
    out = []
    for g in t.plan.groups:
        mine = [r for r in rows if r.group == g.name and not outside_plan(r)]
        running = [r for r in mine if r.state.startswith("running")]
        seen = sorted({r.group_spec for r in mine if r.group_spec})
        wanted = t.plan.group_hash(g.name)
        if not running:
            state = "missing"
        elif seen != [wanted]:
            state = "outdated"
        else:
            state = "current" if len(running) == len(mine) else "partial"
        out.append(
            {
                "group": g.base, "replica": g.replica, "replicas": g.replicas, "name": g.name,
                "nodes": g.node_indices, "spec": wanted, "running_spec": seen, "state": state,
                "running": len(running), "ranks": len(mine),
            }
        )  # fmt: skip
    return out


def replica_line(replica: dict[str, Any]) -> str:
    spec = f"spec {replica['spec']}"
    if replica["state"] == "outdated":
        spec += f" (running {', '.join(replica['running_spec']) or '?'})"
    return (
        f"replica {replica['replica']} of {replica['replicas']} of {replica['group']}: {replica['name']} on"
        f" node(s) {', '.join(map(str, replica['nodes']))}  {spec}  {replica['state']}"
        f" ({replica['running']}/{replica['ranks']} ranks running)"
    )


def endpoint_line(t: Target, endpoint: EndpointState) -> str:
    plan = t.plan
    if endpoint.answer is not None or (plan.entry and plan.entry.role == "router"):  # the SGLang router
        return f"endpoint {plan.endpoint}  router {'ready' if endpoint.ready else 'not ready'}: {endpoint.note}"
    seen = ", ".join(f"{c} {(endpoint.instances or {}).get(c, 0)}/{n}" for c, n in endpoint.expected.items())
    return f"endpoint {plan.endpoint}  model {plan.model_name}  workers registered: {seen}"


def problems_of(t: Target, rows: list[StatusRow], unreachable: dict[int, str], endpoint: EndpointState) -> list[str]:
    problems = [f"{r.service} on node {r.node.index}: {r.state}" for r in rows if r.state != "running"]
    # a lost node whose ranks moved to a spare runs nothing planned: its silence is no problem any more
    problems += [f"{t.plan.nodes[i].label}: unreachable" for i in unreachable if i not in t.plan.substitutes]
    problems += [
        f"{r.service} on node {r.node.index}: {r.health}"
        for r in rows
        if r.state == "running" and r.health.startswith(("unhealthy", "not answering", "hung"))
    ]
    if t.plan.endpoint and not endpoint.ready:
        problems.append(f"endpoint {t.plan.endpoint} not ready")
    return problems


def status(t: Target) -> tuple[list[StatusRow], dict[int, str], EndpointState]:
    """Rows for every planned service and every labelled container found; unreachable nodes apart."""
    found, unreachable = list_services(t)
    t.notes = t.adopt_substitutes(found.values())  # said with the table: a group moved to a spare
    now = datetime.now(UTC)
    health = _health(t, found, unreachable)
    rows: list[StatusRow] = []
    planned = {(s.node.index, s.name): s for s in t.plan.services}
    for key, s in planned.items():
        c = found.get(key)
        state = "unreachable" if s.node.index in unreachable else (c.state if c else "missing")
        if c and c.spec != s.spec_hash():
            state += " (outdated spec)"
        rows.append(_row(s.node, s.service, s.role, s.group, s.rank, state, c, now, health.get(s.name, "-")))
    mark_hung(t, rows, unreachable)
    for key, c in found.items():
        if key not in planned:
            node = t.plan.nodes[c.node_index]
            base = held_base(c.name)  # a roll's held copy: what a rollback (or the next `up`) starts again
            state = f"held (previous spec of {base})" if base is not None else c.state + " (not in plan)"
            rows.append(_row(node, c.service, c.role, c.group, c.rank, state, c, now, "-"))
    return rows, unreachable, endpoint_state(t, unreachable)


def mark_hung(t: Target, rows: list[StatusRow], unreachable: dict[int, str]) -> None:
    """The progress rule (watch.hung_after in the file): a healthy rank with requests running and no token
    progress over two scrapes is `hung` in its health (what `watch` restarts) where that covers its
    window, else `stalled` (not a problem: a long step, or a hang not yet proven)."""
    healthy = {(r.node.index, r.service): r for r in rows if r.health in ("healthy", "running") and r.group is not None}
    ranks = [s for s in t.plan.services if (s.node.index, s.service) in healthy and s.node.index not in unreachable]
    for name, seen in rank_progress.stalls_now(t, ranks).items():
        s = next(s for s in ranks if s.name == name)
        after = "" if seen.hung else f"; hung after {rank_progress.window(t, s):g}s"
        healthy[(s.node.index, s.service)].health = f"{seen.state} ({seen.line}{after})"


def outside_plan(r: StatusRow) -> bool:
    """A row of a container the plan does not have: an orphan, or a roll's held copy."""
    return r.state.endswith("(not in plan)") or r.state.startswith("held (")


def _row(node, service, role, group, rank, state, c: Container | None, now: datetime, health: str) -> StatusRow:
    return StatusRow(
        node, service, role, group, rank, state,
        c.uptime(now) if c else None, c.restarts if c else 0, health,
        c.name if c else None, c.id if c else None,
        replica=None if group is None else split_unit(group)[1],
        group_spec=_printable(c.labels.get(f"{LABEL}.group-spec")) if c else None,
    )  # fmt: skip


def _printable(label: str | None) -> str | None:
    """A label value a node sent, as the replica and roll lines quote it: no escape sequence of a hostile
    node's reaches the operator's terminal (it is compared with the plan's hash as shown)."""
    return None if label is None else "".join(c if c.isprintable() else "?" for c in label[:64])


def _health(t: Target, found: dict[tuple[int, str], Container], unreachable: dict[int, str]) -> dict[str, str]:
    """Per running service: its HTTP probe's verdict, or `running` for services without one."""
    running = [s for s in t.plan.services if (c := found.get((s.node.index, s.name))) is not None and c.running]
    health = {s.name: "running" for s in running if s.probe.kind != "http"}
    probed = [s for s in running if s.probe.kind == "http" and s.node.index not in unreachable]
    for name, answer in probe_http(t, probed).items():
        if answer.passed:
            health[name] = "healthy"
        elif answer.text.startswith("no answer"):
            health[name] = f"not answering ({answer.text.removeprefix('no answer: ')})"
        else:
            health[name] = f"unhealthy ({answer.text})"
    return health
