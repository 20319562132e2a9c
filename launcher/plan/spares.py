"""Lost nodes and spares, as data: which inventory nodes are spares, the plan with a spare in a lost
node's place, and the substitutions read back from the nodes' labels.

A spare is an inventory node on which the file's plan puts no service: listing a node in the inventory
and in no group (nor under `services:`) is how a file declares one; `replicas` and node counts take
inventory nodes in order, so the spares are the nodes after those. Only group ranks move: a lost node
that runs etcd, NATS, the frontend or the router cannot be replaced (their clients know its address).

The substitution is recorded on the replacement ranks themselves (the label `launcher.replaces` =
`INDEX:ADDRESS` of the lost node): `up`, `status`, `watch` and `down` read it back from the listing and
build the plan with the spare in place, so that none of them brings the group back onto the lost node.
A label is the node's word: it is taken only where it names an inventory node that the file's plan
gives group ranks to, from a container on a spare, and the substitution passes the same checks as one
`watch` makes.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Collection, Iterable

from launcher.config.load import Loaded
from launcher.errors import LauncherError
from launcher.plan.build import build
from launcher.plan.state import Container
from launcher.plan.types import REPLACES_LABEL, Node, Plan, small_whole


class Refused(LauncherError):
    """A substitution that cannot be made (no spare, a spare in use, two ranks of a group on one node)."""

    exit_code = 1


def spare_nodes(plan: Plan) -> list[Node]:
    """The inventory nodes on which the plan runs nothing, in inventory order (nodes already lost are not
    spares: they are what was replaced)."""
    used = {s.node.index for s in plan.services} | set(plan.substitutes)
    return [n for n in plan.nodes if n.index not in used]


def groups_on(plan: Plan, node: int) -> list[str]:
    """The groups (replicas) with a rank on NODE."""
    return [g.name for g in plan.groups if node in g.node_indices]


def choose(
    plan: Plan, lost: int, unseen: Collection[int] = (), unfit: Callable[[Node], str | None] | None = None
) -> Node:
    """The spare for LOST: the first free one, of those not UNSEEN (nodes failing SSH, or judged lost: a
    spare that cannot be reached would take the ranks down with it) that UNFIT finds no fault with (it
    says why a spare cannot take the ranks, e.g. its GPUs: operations.gpu_health.spare_unfit). Asked in
    order, so a healthy first spare costs one look; none fit: refused, naming each spare's reason."""
    check_movable(plan, lost)
    free = spare_nodes(plan)
    if not free:
        raise Refused(f"no spare node: every inventory node runs a service of {plan.deployment}")
    seen = [n for n in free if n.index not in unseen]
    if not seen:
        raise Refused(f"no spare node reachable: {', '.join(n.label for n in free)} fail SSH")
    reasons = {n.index: "fails SSH" for n in free if n.index in unseen}
    for node in seen:
        why = unfit(node) if unfit else None
        if why is None:
            return node
        reasons[node.index] = why
    said = "; ".join(f"{plan.nodes[i].label}: {why}" for i, why in sorted(reasons.items()))
    raise Refused(f"no spare node fit to take its ranks: {said}")


def check_movable(plan: Plan, lost: int) -> None:
    if not 0 <= lost < len(plan.nodes):
        raise Refused(f"no node {lost} in the inventory")
    if lost in plan.substitutes:
        raise Refused(f"{plan.nodes[lost].label} was already replaced")
    singles = sorted({s.role for s in plan.services if s.node.index == lost and s.group is None})
    if singles:
        raise Refused(f"{plan.nodes[lost].label} runs {', '.join(singles)}: only group ranks move to a spare")
    if not groups_on(plan, lost):
        raise Refused(f"{plan.nodes[lost].label} runs no group rank: nothing to move")


def substitute(loaded: Loaded, plan: Plan, lost: int, spare: int) -> Plan:
    """The plan with SPARE in LOST's place (on top of the plan's substitutions so far); refused with a
    one-line reason where SPARE is not a free inventory node or would take a second rank of a group."""
    check_movable(plan, lost)
    if not 0 <= spare < len(plan.nodes):
        raise Refused(f"no node {spare} in the inventory to be a spare")
    where = plan.nodes[spare].label
    if spare == lost:
        raise Refused(f"{where} cannot replace itself")
    for g in plan.groups:
        if lost in g.node_indices and spare in g.node_indices:
            raise Refused(f"{where} already runs a rank of {g.name}: two ranks of one group on one node")
    if spare not in {n.index for n in spare_nodes(plan)}:
        raise Refused(f"{where} is not a spare: it runs services of {plan.deployment} or was replaced")
    return build(loaded, plan.interfaces, chained(plan.substitutes, lost, spare))


def chained(substitutes: dict[int, int], lost: int, spare: int) -> dict[int, int]:
    """SUBSTITUTES with SPARE in LOST's place. A spare lost in turn passes on the place it held: the ranks
    the file puts on the first lost node go to the new spare (the plan is built from the file's placement,
    so a substitution of a node the file never placed on would move nothing). LOST stays a key, last, so
    that it is no spare again; the first key of a spare is the node its ranks' label names."""
    return {**{gone: spare if held == lost else held for gone, held in substitutes.items()}, lost: spare}


def moves_record(plan: Plan, substitutes: dict[int, int]) -> dict[str, dict[str, object]]:
    """What the head node's record of watch's moves holds (runtime.lock.write_moves_script): per lost node
    its spare, both by index and address (a record of another inventory's nodes then matches nothing)."""
    nodes = plan.nodes
    return {
        str(lost): {"spare": spare, "lost_address": nodes[lost].address, "spare_address": nodes[spare].address}
        for lost, spare in substitutes.items()
    }


def parse_moves(plan: Plan, text: str, limit: int) -> dict[int, int]:
    """The head node's record (its text, read at most LIMIT + 1 bytes) as lost index -> spare index: only
    entries whose indices and addresses are this inventory's; anything else (not JSON, too long, another
    shape) is no record at all (every label then refused)."""
    if len(text) > limit:
        return {}
    try:
        data = json.loads(text or "{}")
    except ValueError:
        return {}
    if not isinstance(data, dict):
        return {}
    out = {}
    for key, entry in data.items():
        lost = small_whole(key) if isinstance(key, str) else None
        if lost is None or lost >= len(plan.nodes) or not isinstance(entry, dict):
            continue
        spare = entry.get("spare")
        if type(spare) is not int or not 0 <= spare < len(plan.nodes):
            continue
        addresses = (entry.get("lost_address"), entry.get("spare_address"))
        if addresses == (plan.nodes[lost].address, plan.nodes[spare].address):
            out[lost] = spare
    return out


def recorded(
    plan: Plan, containers: Iterable[Container], moves: dict[int, int] | None = None
) -> tuple[dict[int, int], list[str]]:
    """The substitutions the replacement ranks' labels record (lost index -> spare index), checked
    against PLAN (the file's, without substitutions) and, given MOVES (the head node's record of watch's
    moves, parse_moves), against it; and one line for each label refused."""
    found: dict[int, int] = {}
    refused: list[str] = []
    spares = {n.index for n in spare_nodes(plan)}
    # the newest move first: a spare lost in turn and back with its stale ranks lost the place to the
    # next spare later (chained); ties (and listings without start times) keep the listing's order
    for c in sorted(containers, key=lambda c: _started(c.started_at), reverse=True):
        raw = c.labels.get(REPLACES_LABEL)
        if raw is None:
            continue
        index, _, address = raw.partition(":")
        lost = small_whole(index)
        here = plan.nodes[c.node_index].label if 0 <= c.node_index < len(plan.nodes) else f"node {c.node_index}"
        if lost is None or lost >= len(plan.nodes) or plan.nodes[lost].address != address:
            refused.append(f"{here}: {c.name}'s label {REPLACES_LABEL}={raw[:80]!r} names no inventory node: ignored")
        elif c.node_index not in spares or not groups_on(plan, lost) or found.get(lost, c.node_index) != c.node_index:
            refused.append(
                f"{here}: {c.name}'s label says it replaces {plan.nodes[lost].label}, which the plan does not"
                " allow (not a spare, no group rank there, or another spare has it): ignored"
            )
        elif moves is not None and moves.get(lost) != c.node_index:
            refused.append(
                f"{here}: {c.name}'s label says it replaces {plan.nodes[lost].label}, but the head node's record of"
                " watch's moves has no such move (a label is the node's word): ignored"
            )
        else:
            found[lost] = c.node_index
    return found, refused


def _started(text: str) -> str:
    """A start time to the second, as comparable text ('' when it is not one: last)."""
    return text[:19] if re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d.*", text[:40]) else ""


def apply_recorded(
    loaded: Loaded, plan: Plan, containers: Iterable[Container], moves: dict[int, int] | None = None
) -> tuple[Plan, list[str]]:
    """PLAN with the substitutions the labels record and MOVES confirms (each one checked as `substitute`
    checks it)."""
    found, lines = recorded(plan, containers, moves)
    for lost, spare in sorted(found.items()):
        try:
            plan = substitute(loaded, plan, lost, spare)
        except Refused as exc:
            lines.append(f"the substitution of {plan.nodes[lost].label} recorded on the nodes is refused: {exc}")
    return plan, lines
