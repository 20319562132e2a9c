"""The plan's data: which service runs on which node, with which argv, env, mounts, labels and probe.

Pure data. Built by `launcher.plan.build`, shown by `launcher.output.plan_views`, turned into shell
scripts by `launcher.runtime`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from launcher.config.redact import Redactor
from launcher.config.schema import ContainerSettings, FabricSpec, SSHSettings, WatchPolicy

LABEL = "launcher"  # label prefix: launcher.deployment, launcher.role, ...
# On a group rank moved to a spare node: `INDEX:ADDRESS` of the lost node it replaces (launcher.plan.spares).
REPLACES_LABEL = f"{LABEL}.replaces"
# The fabric check's containers: launcher.fabric=<deployment>/<run id>, launcher.fabric.deployment=<deployment>
# (apart from the deployment's own: no listing of its services counts them; `down` removes them too).
FABRIC_LABEL = f"{LABEL}.fabric"
# A node at one of these is this machine: commands run directly, services listen on loopback only.
LOCAL_ADDRESSES = frozenset({"127.0.0.1", "localhost", "::1"})


def replica_unit(group: str, replica: int) -> str:
    """The name of a group's replica K: the group's own for replica 0 (plans without replicas keep
    their names), `group.K` after it (group names have no dot, so no other group is named so)."""
    return group if replica == 0 else f"{group}.{replica}"


def split_unit(unit: str) -> tuple[str, int]:
    """(group, replica) of a unit name as `replica_unit` makes it (`decode.2` -> ("decode", 2))."""
    group, _, replica = unit.partition(".")
    number = small_whole(replica)
    return group, 0 if number is None else number


def small_whole(text: str) -> int | None:
    """A replica or rank number as a node's labels carry it: ASCII digits, a few of them; else None.
    (`str.isdigit` alone lets in `²`, which int() refuses, and 5,000 digits, which int() refuses too.)"""
    return int(text) if text.isascii() and text.isdigit() and len(text) <= 9 else None


@dataclass(frozen=True)
class Node:
    index: int
    name: str
    address: str
    ssh: SSHSettings
    gpus: int
    ib_devices: tuple[str, ...] = ()

    @property
    def label(self) -> str:
        return f"node {self.index} ({self.name} {self.address})"

    @property
    def is_local(self) -> bool:
        return self.address in LOCAL_ADDRESSES


def find_node(nodes: list[Node], ref: str | int) -> Node | None:
    """The node an index, a name or an address designates (as `--node` and the file's `node:` take it)."""
    for node in nodes:
        if ref in (node.index, str(node.index), node.name, node.address):
            return node
    return None


@dataclass(frozen=True)
class Probe:
    """How to tell a service is up: its container runs, and (for http) a URL answers as expected."""

    kind: str  # "running" | "http" | "log"
    url: str | None = None
    expect: dict[str, Any] | None = None  # http: JSON keys that must have these values; log: {"line": text}

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "url": self.url, "expect": self.expect}


@dataclass
class Service:
    deployment: str
    service: str  # e.g. "etcd", "decode-r3"
    role: str  # etcd | nats | frontend | prefill | decode | agg | router ...
    node: Node
    image: str
    command: list[str]
    env: dict[str, str]
    container: ContainerSettings
    probe: Probe
    timeout: float
    group: str | None = None
    rank: int | None = None
    engine: str | None = None
    secret_env: dict[str, str] = field(default_factory=dict, repr=False)  # name -> value, never rendered
    ports: list[int] = field(default_factory=list)
    replica: int | None = None  # the replica of its group, where the group has `replicas` > 1

    @property
    def name(self) -> str:
        return f"{self.deployment}-{self.service}"

    @property
    def tag(self) -> str:
        """Short prefix for log lines: `node3 decode r2`."""
        who = self.role if self.rank is None else f"{self.group} r{self.rank}"
        return f"{self.node.name} {who}"

    def spec_hash(self) -> str:
        """Changes whenever anything that affects the running container changes (secrets by hash only)."""
        body = {
            "image": self.image,
            "command": self.command,
            "env": self.env,
            "secrets": {k: hashlib.sha256(v.encode()).hexdigest() for k, v in sorted(self.secret_env.items())},
            "container": self.container.model_dump(),
            "node": self.node.address,
        }
        return _digest(body)


@dataclass
class Group:
    name: str
    engine: str
    mode: str
    node_indices: list[int]
    gpus: list[int]
    # What the frontend must list before the group counts as ready: component -> instance count.
    expected_instances: dict[str, int]
    summary: str = ""
    # Its ranks meet in torch.distributed's rendezvous at the leader's (node_indices[0]) dist_init_port:
    # the fabric check proves that rendezvous before the engine starts.
    rendezvous: bool = False
    dist_init_port: int = 29500
    # `name` is the replica's (replica_unit): the file's group is `base`; replicas > 1 only with `replicas:`
    base: str = ""
    replica: int = 0
    replicas: int = 1
    # `watch:` of the file for this group (its own keys over the deployment's): hung window, restart budget
    watch: WatchPolicy = field(default_factory=WatchPolicy)

    def __post_init__(self) -> None:
        self.base = self.base or self.name

    @property
    def leader(self) -> int:
        return self.node_indices[0]


@dataclass(frozen=True)
class PeerPort:
    """A port one node serves that other nodes connect to (the fabric check tries it from each of them)."""

    owner: int  # the node index that listens
    address: str  # the address the users connect to
    port: int
    what: str  # dist-init | bootstrap | nixl | etcd | nats | worker
    service: str  # the service that listens there (prefill-r0, etcd, ...)
    users: tuple[int, ...]  # the node indices that connect to it (never the owner)

    @property
    def label(self) -> str:
        return f"{self.what} of {self.service}"


@dataclass
class Plan:
    deployment: str
    file: str
    nodes: list[Node]
    services: list[Service]
    groups: list[Group]
    state_dir: str
    runtime: str = "docker"
    python_env: str | None = None
    model_name: str | None = None
    model_path: str | None = None  # as the engines see it
    endpoint: str | None = None  # the frontend's (or router's) URL
    profile: str | None = None  # the file's profile applied (`--profile`), if any
    warnings: list[str] = field(default_factory=list)
    findings: list = field(default_factory=list)  # (group, flagdrift.Finding): stale engine flags
    peers: list[PeerPort] = field(default_factory=list)
    network_interface: str | None = None  # the file's network.interface: None, "auto" or a name
    # Facts read on the nodes, given to `build` as input: node index -> leader address -> interface.
    interfaces: dict[int, dict[str, str]] = field(default_factory=dict)
    fabric: FabricSpec = field(default_factory=FabricSpec)
    # name -> value of every secret the file knows (declared, secret-looking variables): for redaction
    secrets: dict[str, str] = field(default_factory=dict, repr=False)
    # secret env name -> the variable the user holds its value in (`OPENAI_KEY: ${MY_KEY}`: MY_KEY)
    secret_sources: dict[str, str] = field(default_factory=dict)
    drain_timeout: float = 60.0  # seconds a stop waits for a worker's in-flight requests (drain_timeout)
    migration_limit: int | None = None  # the Dynamo frontend's --migration-limit (None: no Dynamo frontend)
    watch_webhook_env: str | None = None  # watch.webhook_url_env: the declared secret holding the alert URL
    lost_after: float | None = None  # watch.lost_after: seconds a node unseen over SSH is lost (None: never)
    # lost node index -> the spare its group ranks moved to (launcher.plan.spares; read back from the labels)
    substitutes: dict[int, int] = field(default_factory=dict)
    flag_tables: list = field(default_factory=list)  # flagdrift.TableUse: the flag tables the engine flags met

    def redactor(self) -> Redactor:
        """The one redactor for whatever leaves the launcher about this deployment (see config.redact)."""
        return Redactor([*self.secrets.values(), *(v for s in self.services for v in s.secret_env.values())])

    def secret_source(self, name: str) -> str:
        return self.secret_sources.get(name, name)

    def node(self, ref: str | int) -> Node | None:
        return find_node(self.nodes, ref)

    @property
    def head(self) -> Node:
        """Where the lock and the audit log live: the node running etcd (the head), else node 0."""
        etcd = next((s for s in self.services if s.role == "etcd"), None)
        return etcd.node if etcd is not None else self.nodes[0]

    @property
    def flag_errors(self) -> list[str]:
        return [f"groups.{g}: {f}" for g, f in self.findings if f.severity == "error"]

    @property
    def has_dynamo_frontend(self) -> bool:
        return any(s.role == "frontend" for s in self.services)

    @property
    def entry(self) -> Service | None:
        """The service behind `endpoint`: Dynamo's frontend or the SGLang router."""
        return next((s for s in self.services if s.role in ("frontend", "router")), None)

    def by_node(self, index: int) -> list[Service]:
        return [s for s in self.services if s.node.index == index]

    def group_hash(self, group: str) -> str:
        return _digest(sorted(s.spec_hash() for s in self.services if s.group == group))

    def labels(self, service: Service) -> dict[str, str]:
        labels = {
            f"{LABEL}.deployment": self.deployment,
            f"{LABEL}.service": service.service,
            f"{LABEL}.role": service.role,
            f"{LABEL}.node": str(service.node.index),
            f"{LABEL}.address": service.node.address,
            f"{LABEL}.spec": service.spec_hash(),
        }
        if service.group is not None:
            labels[f"{LABEL}.group"] = service.group
            labels[f"{LABEL}.group-spec"] = self.group_hash(service.group)
        if service.rank is not None:
            labels[f"{LABEL}.rank"] = str(service.rank)
        if service.replica is not None:
            labels[f"{LABEL}.replica"] = str(service.replica)
        replaced = [lost for lost, spare in self.substitutes.items() if spare == service.node.index]
        if replaced and service.group is not None:  # the substitution's record, read back at plan time
            labels[REPLACES_LABEL] = f"{replaced[0]}:{self.nodes[replaced[0]].address}"
        return labels


def _digest(body: Any) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()[:16]
