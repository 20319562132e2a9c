"""The fabric check's pure parts: which ports each node uses on another (and who uses them), which
interface each node's route to its group's leader leaves by, and what each node runs for the check.

Nothing here touches a node: the routes are facts `up`/`doctor` read on the nodes and pass in; the
results of the check are judged in `fabric_verdict`.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from launcher.plan.types import Group, Node, PeerPort, Plan, Service

IFNAME_VARS = ("GLOO_SOCKET_IFNAME", "NCCL_SOCKET_IFNAME")
# Seconds beyond the configured timeouts for a job's container to start and torch to import.
START_MARGIN = 90.0
# Seconds ahead at which every node's peer window starts (containers that start within this much of
# each other try and serve their peer ports over the same window).
ALIGN = 5.0
# Seconds a port may answer nothing at all (no accept, no refusal) before it is taken as dropped: a node
# that has not started yet refuses at once; only a firewall (or a dead link) is silent.
SILENCE = 3.0


# -- which ports are used across nodes -----------------------------------------------------------


@dataclass
class Served:
    """A port a service listens on for other nodes, before its users are known."""

    service: Service
    what: str
    port: int
    address: str


def collect_peers(groups: list[Group], services: list[Service], served: list[Served]) -> list[PeerPort]:
    """Every port one node uses on another, with the nodes that use it: the dist-init port of every
    rendezvous group (its members), P/D bootstrap (every decode node), NIXL side channels (the other
    P/D role's nodes), etcd and NATS (every node running a Dynamo process). `served`: the engines'
    bootstrap and NIXL ports."""
    nodes_of = {g.name: g.node_indices for g in groups}
    decode = sorted({i for g in groups if g.mode == "decode" for i in g.node_indices})
    out: list[PeerPort] = []
    for g in groups:
        if g.rendezvous:
            leader = next(s for s in services if s.group == g.name and s.rank == 0)
            users = tuple(i for i in g.node_indices[1:] if i != g.leader)
            out.append(PeerPort(g.leader, leader.node.address, g.dist_init_port, "dist-init", leader.service, users))
    for item in served:
        s = item.service
        if item.what == "bootstrap":
            users = tuple(decode)
        elif item.what == "nixl":
            other = {"prefill": "decode", "decode": "prefill"}.get(_mode(groups, s.group))
            users = tuple(sorted({i for g in groups if g.mode == other for i in nodes_of[g.name]}))
        else:
            continue
        out.append(_peer(s, item.what, item.port, item.address, users))
    for what, var in (("etcd", "ETCD_ENDPOINTS"), ("nats", "NATS_SERVER")):
        owner = next((s for s in services if s.role == what), None)
        url = next((s.env[var] for s in services if var in s.env), None)
        if owner is not None and url:
            users = tuple(sorted({s.node.index for s in services if var in s.env}))
            parts = urlsplit(url.split(",")[0])
            if parts.hostname and parts.port:
                out.append(_peer(owner, what, parts.port, parts.hostname, users))
    return [p for p in out if p.users]


def router_uses(router: Service, workers: list[tuple[Service, int]]) -> list[PeerPort]:
    """The router's node connects to every worker URL it is given (rank 0 of each P and D group)."""
    out = []
    for worker, port in workers:
        users = (router.node.index,) if router.node.index != worker.node.index else ()
        out.append(PeerPort(worker.node.index, worker.node.address, port, "worker", worker.service, users))
    return [p for p in out if p.users]


def _peer(s: Service, what: str, port: int, address: str, users: tuple[int, ...]) -> PeerPort:
    return PeerPort(s.node.index, address, port, what, s.service, tuple(u for u in users if u != s.node.index))


def _mode(groups: list[Group], name: str | None) -> str:
    return next((g.mode for g in groups if g.name == name), "")


# -- interfaces ------------------------------------------------------------------------------------


def route_targets(plan: Plan) -> dict[int, list[str]]:
    """Per node, the leader addresses whose route it must read: every group spread over more than one
    node, and with `network.interface: auto` every group (its ranks need the interface)."""
    out: dict[int, list[str]] = {}
    for g in plan.groups:
        if len(g.node_indices) < 2 and plan.network_interface != "auto":
            continue
        leader = plan.nodes[g.leader].address
        for i in g.node_indices:
            if leader not in out.setdefault(i, []):
                out[i].append(leader)
    return out


def interface_env(mode: str | None, interfaces: dict[int, dict[str, str]], node: Node, leader: Node) -> dict:
    """GLOO_SOCKET_IFNAME and NCCL_SOCKET_IFNAME for a rank: the file's name, or (auto) the interface
    the node's route to its leader leaves by; nothing while that is not known (`launcher plan`)."""
    if mode is None:
        return {}
    name = mode if mode != "auto" else interfaces.get(node.index, {}).get(leader.address)
    return dict.fromkeys(IFNAME_VARS, name) if name else {}


@dataclass
class InterfaceRow:
    group: str
    node: int
    interface: str | None  # None: could not be read (detail says why)
    usual: str | None  # what most of the group's nodes use
    detail: str

    @property
    def flagged(self) -> bool:
        return self.interface is None or (self.usual is not None and self.interface != self.usual)

    def to_json(self) -> dict[str, Any]:
        return {**self.__dict__, "flagged": self.flagged}


def interface_rows(plan: Plan, routes: dict[int, dict[str, Route]]) -> list[InterfaceRow]:
    """Per multi-node group and node: the interface its route to the leader leaves by. A node whose
    interface differs from most of its group's (a tie: from the leader's) is flagged."""
    rows = []
    for g in plan.groups:
        if len(g.node_indices) < 2:
            continue
        leader = plan.nodes[g.leader].address
        seen = {i: routes.get(i, {}).get(leader) for i in g.node_indices}
        names = Counter(r.interface for r in seen.values() if r is not None and r.interface)
        usual = None
        if names:
            top = max(names.values())
            tied = [n for n, c in names.items() if c == top]
            lead = seen[g.leader]
            usual = lead.interface if lead is not None and lead.interface in tied and len(tied) > 1 else tied[0]
        for i, route in seen.items():
            if route is None or not route.interface:
                why = route.error if route is not None else "not read"
                rows.append(InterfaceRow(g.name, i, None, usual, f"cannot tell the route to {leader}: {why}"))
                continue
            detail = f"{g.name}: {route.interface} to leader {leader}" + (
                f" (src {route.source})" if route.source else ""
            )
            if usual and route.interface != usual:
                detail += f"; the group's other nodes use {usual}"
            rows.append(InterfaceRow(g.name, i, route.interface, usual, detail))
    return rows


@dataclass(frozen=True)
class Route:
    """What `ip route get ADDRESS` says on a node (see runtime/network.py)."""

    interface: str | None
    source: str | None = None
    error: str = ""


# -- what each node runs -----------------------------------------------------------------------------


@dataclass
class Job:
    """One run of the fabric program on one node: the peer ports it serves and tries, and at most one
    group's rendezvous. It runs with `service`'s image and container settings."""

    node: int
    service: Service
    python: str
    spec: dict[str, Any]
    group: str | None = None
    rank: int | None = None
    peers: list[int] = field(default_factory=list)  # indices into plan.peers this job tries

    @property
    def serves(self) -> bool:
        return bool(self.spec.get("reach", {}).get("listen"))


def jobs(plan: Plan, groups: list[Group], with_peers: bool = True) -> dict[int, list[Job]]:
    """Per node, what it runs: a job per rendezvous group it belongs to, the first of them also
    serving and trying the node's peer ports; a node in no such group that serves or uses a peer
    port runs one job for those alone (with python3: no torch needed)."""
    settings = plan.fabric
    out: dict[int, list[Job]] = {}
    for g in groups:
        for rank, i in enumerate(g.node_indices):
            s = next(s for s in plan.services if s.group == g.name and s.rank == rank)
            spec = {"rendezvous": rendezvous_spec(plan, g, rank)}
            out.setdefault(i, []).append(Job(i, s, settings.python, spec, g.name, rank))
    if not with_peers:
        return out
    for i in sorted({p.owner for p in plan.peers} | {u for p in plan.peers for u in p.users}):
        if i not in out:
            service = _host_service(plan, i)
            if service is None:
                continue
            out[i] = [Job(i, service, "python3", {})]
        first = out[i][0]
        first.spec["reach"] = reach_spec(plan, i)
        first.peers = [k for k, p in enumerate(plan.peers) if i in p.users]
    return out


def step_peers(plan: Plan, services: list[Service]) -> list[PeerPort]:
    """The peer ports a rolling step's new SERVICES will serve or use: those they own (tried from every
    user, as `up` does), and those they connect to (tried from their nodes only). The other replicas'
    ports are not this step's to prove: their ranks run and hold them, or a later step proves them."""
    names, nodes = {s.name for s in services}, {s.node.index for s in services}
    out = []
    for p in plan.peers:
        if p.service in names:
            out.append(p)
        elif users := tuple(u for u in p.users if u in nodes):
            out.append(dataclasses.replace(p, users=users))
    return out


def _host_service(plan: Plan, index: int) -> Service | None:
    """Whose container a node's reach-only job borrows: a worker's (its image has python), else any."""
    here = plan.by_node(index)
    return next((s for s in here if s.group is not None), here[0] if here else None)


def rendezvous_spec(plan: Plan, group: Group, rank: int) -> dict[str, Any]:
    f = plan.fabric
    return {
        "group": group.name,
        "leader": plan.nodes[group.leader].address,
        "port": group.dist_init_port,
        "world": len(group.node_indices),
        "rank": rank,
        "timeout": f.timeout,
        "gloo_mb": f.gloo_mb,
        "nccl_mb": f.nccl_mb,
        "iters": f.iters,
    }


def reach_spec(plan: Plan, index: int) -> dict[str, Any]:
    """The ports node `index` serves (each on the address its users connect to, with the nodes that will
    connect) and the ones it tries."""
    users: dict[tuple[int, str], set[int]] = {}
    for p in plan.peers:
        if p.owner == index:
            users.setdefault((p.port, p.address), set()).update(p.users)  # one listener per port, for all its uses
    listen = [{"address": a, "port": port, "users": sorted(who)} for (port, a), who in sorted(users.items())]
    connect = [{"address": p.address, "port": p.port} for p in plan.peers if index in p.users]
    # late: how long a refused port is tried again (its node's container may start that much later);
    # silence: how long a port that answers nothing at all (dropped packets) is waited for.
    return {"listen": listen, "connect": connect, "window": plan.fabric.connect_timeout, "late": plan.fabric.timeout,
            "silence": min(SILENCE, plan.fabric.connect_timeout)}  # fmt: skip


def budget(plan: Plan) -> float:
    """Seconds a node's jobs may take in all: the peer window (twice: a late leader's too), a member's
    patience with a late leader and the ranks' wait (a timeout each), the process group and collectives
    (two), the container's start; the program's own watchdog ends it before that."""
    f = plan.fabric
    return ALIGN + 2 * f.connect_timeout + 4 * f.timeout + START_MARGIN


def checked_groups(plan: Plan, running: frozenset[str] | set[str] | None = None) -> list[Group]:
    """The groups whose rendezvous the check proves: spread over more than one node, engine (or file)
    says their ranks rendezvous, and (`running`: names of services already up) not running now."""
    running = running or set()
    out = []
    for g in plan.groups:
        if not g.rendezvous:
            continue
        names = {s.name for s in plan.services if s.group == g.name}
        if not names & running:
            out.append(g)
    return out
