"""What the fabric check's results mean: per pair of nodes whether the port was reached, per group whether
its ranks met, with one line per failure that names the nodes (and the side that waited) and says what
to fix. Pure: it reads the program's JSON answers (launcher/remote/fabric_check.py), it runs nothing."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from launcher.plan.fabric import InterfaceRow, Job
from launcher.plan.types import Group, PeerPort, Plan

# A job's answer: the program's JSON, or why it gave none (the node could not be reached, the container
# did not start, python or torch missing...).
Outcome = dict[str, Any] | str


@dataclass
class Line:
    """One row of the report: ok, or a failure with its fix."""

    node: int | None
    name: str  # peer | rendezvous:GROUP | interface
    status: str  # ok | warn | fail | skip
    detail: str
    fix: str = ""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class PairResult:
    peer: PeerPort
    user: int
    ok: bool | None  # None: not tried (the user's check did not run)
    detail: str
    fix: str = ""
    seconds: float | None = None

    def to_json(self) -> dict[str, Any]:
        p = self.peer
        return {"user": self.user, "owner": p.owner, "address": p.address, "port": p.port, "what": p.what,
                "service": p.service, "ok": self.ok, "seconds": self.seconds, "detail": self.detail,
                "fix": self.fix}  # fmt: skip


@dataclass
class RankResult:
    group: str
    rank: int
    node: int
    ok: bool
    phase: str
    error: str = ""
    rendezvous_s: float | None = None  # from the store's first connection to the process group's end of init
    ring_gbps: float | None = None  # this node sending to the next rank (Gloo, or NCCL on GPUs)
    busbw_gbps: float | None = None  # the group's all-reduce, as this rank timed it
    backend: str = ""
    interface: str | None = None  # GLOO_SOCKET_IFNAME as the rank saw it
    raw: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k != "raw"} | {"answer": self.raw}


@dataclass
class GroupResult:
    name: str
    ok: bool
    ranks: list[RankResult]
    lines: list[Line]

    @property
    def cut_short(self) -> bool:
        """Stopped for another group's failure: unproven, not at fault (one `skip` line says so)."""
        return not self.ok and [ln.status for ln in self.lines] == ["skip"]

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "ok": self.ok, "cut_short": self.cut_short,
                "ranks": [r.to_json() for r in self.ranks],
                "problems": [ln.to_json() for ln in self.lines if ln.status == "fail"]}  # fmt: skip


@dataclass
class Report:
    pairs: list[PairResult]
    groups: list[GroupResult]
    interfaces: list[InterfaceRow]
    skipped: list[Line] = field(default_factory=list)  # groups not checked, and why
    seconds: float = 0.0
    start_skew: float | None = None  # seconds between the first and the last node's program start

    @property
    def ok(self) -> bool:
        return all(p.ok is not False for p in self.pairs) and all(g.ok for g in self.groups)

    def lines(self) -> list[Line]:
        out = [Line(p.user, "peer", "fail", p.detail, p.fix) for p in self.pairs if p.ok is False]
        out += [Line(p.user, "peer", "warn", p.detail, p.fix) for p in self.pairs if p.ok is None]
        if self.pairs and all(p.ok for p in self.pairs):
            out.append(Line(None, "peer", "ok", f"all {len(self.pairs)} node-to-port connections answered"))
        for g in self.groups:
            out += g.lines
        out += self.skipped
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "seconds": round(self.seconds, 2),
            "start_skew_s": self.start_skew,
            "peers": [p.to_json() for p in self.pairs],
            "groups": [g.to_json() for g in self.groups],
            "interfaces": [r.to_json() for r in self.interfaces],
            "skipped": [ln.to_json() for ln in self.skipped],
        }


def start_skew(outcomes: dict[tuple[int, int], Outcome]) -> float | None:
    """How unevenly the nodes' programs started (their containers, under load): a figure, and the reason
    the peer window must be longer than this."""
    starts = [o["started_at"] for o in outcomes.values() if isinstance(o, dict) and "started_at" in o]
    return round(max(starts) - min(starts), 2) if starts else None


def judge(
    plan: Plan, jobs: dict[int, list[Job]], outcomes: dict[tuple[int, int], Outcome], groups: list[Group]
) -> tuple[list[PairResult], list[GroupResult]]:
    """The pairs (every user of every peer port) and the checked groups, from each job's outcome."""
    reach = {i: outcomes.get((i, 0), "no answer") for i, js in jobs.items() if js and "reach" in js[0].spec}
    pairs = [pair(plan, p, u, reach) for p in plan.peers for u in p.users]
    results = []
    for g in groups:
        ranks = []
        for rank, i in enumerate(g.node_indices):
            k = next(k for k, j in enumerate(jobs.get(i, [])) if j.group == g.name)
            ranks.append(rank_result(g.name, rank, i, outcomes.get((i, k), "no answer")))
        results.append(group_result(plan, g, ranks))
    return pairs, results


# -- pairs -------------------------------------------------------------------------------------------


def pair(plan: Plan, p: PeerPort, user: int, reach: dict[int, Outcome]) -> PairResult:
    who, owner = plan.nodes[user].label, plan.nodes[p.owner].label
    target = f"{owner} port {p.port} ({p.label})"
    mine = reach.get(user, "no answer")
    if isinstance(mine, str):
        return PairResult(p, user, None, f"{who} -> {target}: not tried, the check did not run there: {mine}",
                          "see that node's other rows")  # fmt: skip
    found = next((c for c in mine.get("connect", []) if c.get("address") == p.address and c.get("port") == p.port), {})
    if not found and mine.get("stopped"):
        return PairResult(p, user, None, f"{who} -> {target}: not tried, the check {mine['stopped']}",
                          "fix the rank named first")  # fmt: skip
    if found.get("ok"):
        return PairResult(p, user, True, f"{who} -> {target}: ok", seconds=found.get("seconds"))
    error = found.get("error") or "not tried"
    detail = f"{who} cannot reach {target} at {p.address}:{p.port}: {error}"
    theirs = reach.get(p.owner)
    if isinstance(theirs, str):
        detail += f" (the check did not run on {plan.nodes[p.owner].name} either: {theirs})"
        return PairResult(p, user, False, detail, f"make {plan.nodes[p.owner].name} reachable first (its rows)")
    listener = next((x for x in theirs.get("listen", []) if x.get("port") == p.port), {})
    if listener.get("state") == "error":
        detail += f" ({plan.nodes[p.owner].name} could not listen there: {listener.get('error')})"
    return PairResult(p, user, False, detail, pair_fix(plan, p, user, found.get("kind", "")), found.get("seconds"))


def pair_fix(plan: Plan, p: PeerPort, user: int, kind: str) -> str:
    u, o = plan.nodes[user].name, plan.nodes[p.owner].name
    if kind == "timeout":
        return (f"a firewall drops TCP {p.port} between {u} and {o}: allow it (iptables -S / nft list ruleset on "
                f"both), or the route is wrong: `ip route get {p.address}` on {u}")  # fmt: skip
    if kind == "refused":
        return f"{o} refuses TCP {p.port} (a REJECT rule, or a listener bound to another address): allow it"
    if kind in ("unreachable", "name"):
        return (f"{u} has no route to {p.address}: fix the node's address in the file, or the routing and "
                f"interface (`ip route get {p.address}` on {u}; network.interface)")  # fmt: skip
    return f"check TCP {p.port} from {u} to {o} (firewall, address, interface)"


# -- groups ------------------------------------------------------------------------------------------


def rank_result(group: str, rank: int, node: int, outcome: Outcome) -> RankResult:
    if isinstance(outcome, str):
        return RankResult(group, rank, node, False, "start", outcome)
    if outcome.get("stopped"):  # the launcher removed it once another rank of its group had failed
        return RankResult(group, rank, node, False, "stopped", outcome["stopped"], raw=outcome)
    rdv = outcome.get("rendezvous") or {}
    if not rdv:
        error = outcome.get("error") or "the program stopped before the rendezvous"
        return RankResult(group, rank, node, False, outcome.get("phase", "start"), error, raw=outcome)
    gloo = (rdv.get("bandwidth") or {}).get("gloo") or {}
    nccl = (rdv.get("bandwidth") or {}).get("nccl") or {}
    figures = nccl or gloo
    took = None
    if rdv.get("waited_s") is not None and rdv.get("init_s") is not None:
        took = round(rdv["waited_s"] + rdv["init_s"], 2)
    return RankResult(
        group, rank, node, bool(rdv.get("ok")), rdv.get("phase", ""), rdv.get("error", ""),
        took, figures.get("ring_gbps"), figures.get("allreduce_busbw_gbps"), rdv.get("backend", ""),
        (rdv.get("interface") or {}).get("GLOO_SOCKET_IFNAME"), rdv,
    )  # fmt: skip


def group_result(plan: Plan, g: Group, ranks: list[RankResult]) -> GroupResult:
    name = f"rendezvous:{g.name}"
    if all(r.ok for r in ranks):
        took = max((r.rendezvous_s or 0) for r in ranks)
        ring = [r.ring_gbps for r in ranks if r.ring_gbps is not None]
        spread = f"{min(ring):.2f}-{max(ring):.2f} GB/s" if ring else "-"
        backend = ranks[0].backend or "gloo"
        detail = (f"{len(ranks)} ranks met at {plan.nodes[g.leader].address}:{g.dist_init_port} in {took:.1f} s, "
                  f"all-reduce correct ({backend}); per-node send {spread}")  # fmt: skip
        lines = [Line(g.leader, name, "ok", detail)]
        for r in ranks:
            if r.raw.get("note"):
                lines.append(Line(r.node, name, "warn", f"rank {r.rank}: {r.raw['note']}", "a busy node: try again"))
        return GroupResult(g.name, True, ranks, lines)
    if all(r.ok or r.raw.get("cut_short") for r in ranks):  # stopped for another group's failure: unproven
        why = next(r.error for r in ranks if not r.ok)
        line = Line(g.leader, name, "skip", f"not finished: the check {why}", "fix that failure, then check again")
        return GroupResult(g.name, False, ranks, [line])
    return GroupResult(g.name, False, ranks, rank_lines(plan, g, ranks))


def rank_lines(plan: Plan, g: Group, ranks: list[RankResult]) -> list[Line]:
    """One line per rank that failed, saying which side waited for which; ranks the leader stopped
    (because others could not reach it) are summed up in one line."""
    name = f"rendezvous:{g.name}"
    stopped = [r for r in ranks if r.raw.get("aborted") and r.rank > 0]
    removed = [r for r in ranks if r.phase == "stopped"]
    leader = ranks[0]
    down = leader.error if leader.phase in ("start", "import") else ""
    failed = [r for r in ranks if not r.ok and r not in stopped and r not in removed]
    lines = [Line(r.node, name, "fail", *rank_problem(plan, g, r, down)) for r in failed]
    if stopped:
        who = ", ".join(f"rank {r.rank} ({plan.nodes[r.node].name})" for r in stopped)
        lines.append(
            Line(g.leader, name, "fail", f"{who} reached the leader and stopped when it gave up", "fix the nodes named")
        )
    if removed:
        who = ", ".join(f"rank {r.rank} ({plan.nodes[r.node].name})" for r in removed)
        detail = f"{who}: not waited for, the check {removed[0].error}"
        lines.append(
            Line(removed[0].node, name, "fail", detail, "fix the rank named above; the others were not at fault")
        )
    return lines


def rank_problem(plan: Plan, g: Group, r: RankResult, leader_down: str = "") -> tuple[str, str]:
    """(what happened to this rank, naming the nodes on both sides; the fix). `leader_down`: why the
    leader's rank never started, if it did not."""
    leader, node = plan.nodes[g.leader], plan.nodes[r.node]
    at = f"{leader.label} at {leader.address}:{g.dist_init_port}"
    who = f"rank {r.rank} on {node.label}"
    waited = f"{r.raw.get('waited_s', 0):.0f} s"
    if r.phase in ("start", "import"):
        return f"{who} never started: {r.error}", start_fix(r.error, plan)
    if r.rank > 0 and leader_down and r.phase in ("reach", "store"):
        detail = f"{who} waited {waited} for the leader {at}, which never started ({leader_down}): {_why(r)}"
        return detail, f"bring {leader.name} back (see its rows), or take it out of the group"
    if r.phase == "reach" and r.rank > 0 and not r.raw.get("aborted") and _why(r) == "connection refused":
        detail = f"{who} waited {waited} for the leader {at}: connection refused all along"
        return detail, f"the leader's rank never listened: see {leader.name}'s rows (or a REJECT rule there)"
    if r.phase == "reach" and r.rank > 0 and not r.raw.get("aborted"):
        fix = f"open TCP {g.dist_init_port} from {node.name} to {leader.name} (firewall), or fix the route/interface"
        return f"{who} cannot reach the leader {at}: {_why(r)}", fix
    if r.raw.get("aborted"):
        return f"the leader {leader.label}: {r.error}; the group stopped rather than wait", "see the nodes named"
    if r.phase == "store" and r.rank > 0:
        detail = f"{who} waited {waited} for the leader {at}, which never answered: {r.error}"
        return detail, f"the leader's rank did not start or cannot be reached: see {leader.name}'s rows"
    if r.phase == "store":
        detail = f"the leader {leader.label} could not host the store on port {g.dist_init_port}: {r.error}"
        return detail, "free the port, or change the group's dist_init_port"
    if r.raw.get("missing"):
        never = ", ".join(f"rank {m} ({plan.nodes[g.node_indices[m]].label})" for m in r.raw["missing"])
        return f"{who} waited {waited}; never joined: {never}", "see the rows of the ranks that never joined"
    if r.phase == "init":
        default = r.raw.get("gloo_default")
        return f"{who}: init_process_group failed: {r.error} (Gloo's own choice: {default})", INTERFACE_FIX
    return f"{who} failed in {r.phase}: {r.error}", "see the rank's answer in --json"


def _why(r: RankResult) -> str:
    return r.error.rpartition(": ")[2] if r.phase == "reach" else r.error


INTERFACE_FIX = (
    "Gloo/NCCL picked an address the peers cannot reach: set `network: {interface: auto}` (or the interface "
    "name) so every rank gets GLOO_SOCKET_IFNAME/NCCL_SOCKET_IFNAME"
)


def start_fix(error: str, plan: Plan) -> str:
    if "torch does not import" in error or "fabric.python" in error:
        return (f"fabric.python ({plan.fabric.python}) must be a python with torch inside the group's image "
                "(or python_env); name one, and mount it if the image has none")  # fmt: skip
    if "No such file" in error or "not found" in error:
        return (f"fabric.python ({plan.fabric.python}) must be a python with torch inside the group's image "
                "(or python_env); name one, and mount it if the image has none")  # fmt: skip
    return "make the node and its container engine answer (see its other rows)"
