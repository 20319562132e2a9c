"""The deployment file and the inventory as pydantic models: every key, its type, its default.

`launcher.config.load` reads the files into these; nothing here touches the network.
"""

from __future__ import annotations

import contextlib
import json
from typing import Annotated, Any, Literal

from packaging.version import InvalidVersion, Version
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from launcher.config.limits import MAX_GPUS, MAX_GROUPS, MAX_NODES, MAX_REPLICAS

# Pydantic looks for plugins in every installed distribution's entry points before it builds the first
# model (30-40 ms of each `launcher` process, more in a large environment); the launcher uses none. Setting
# the loader's cache to "none found" skips the scan (a pydantic without that cache just scans as before).
with contextlib.suppress(ImportError):
    from pydantic.plugin import _loader as _pydantic_plugins

    if getattr(_pydantic_plugins, "_plugins", ...) is None:
        _pydantic_plugins._plugins = {}

NAME_RE = r"^[a-zA-Z0-9][a-zA-Z0-9_.-]*$"
# An environment variable name a shell can `export`: anything else would be dropped or, worse, run.
EnvName = Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]
EnvMap = dict[EnvName, str | int | float | bool]
Port = Annotated[int, Field(ge=1, le=65535)]
Seconds = Annotated[float, Field(gt=0)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class SSHSettings(Strict):
    user: str | None = None
    port: Port | None = None
    key: str | None = None
    jump: str | None = Field(default=None, description="ProxyJump host: [user@]host[:port]")
    known_hosts: str | None = None
    connect_timeout: Annotated[float, Field(gt=0, le=600)] | None = None
    host_key_policy: Literal["strict", "accept-new"] | None = None

    def merged(self, override: SSHSettings) -> SSHSettings:
        data = self.model_dump(exclude_none=True)
        data.update(override.model_dump(exclude_none=True))
        return SSHSettings(**data)


class NodeSpec(Strict):
    address: Annotated[str, Field(min_length=1)]
    name: Annotated[str, Field(pattern=NAME_RE)] | None = None
    ssh: SSHSettings = SSHSettings()
    gpus: Annotated[int, Field(ge=0, le=MAX_GPUS)] | None = None
    ib_devices: list[str] | None = None

    @field_validator("address")
    @classmethod
    def _no_space(cls, value: str) -> str:
        if any(ch.isspace() for ch in value) or value.startswith("-"):
            raise ValueError("an address is a host name or IP without spaces or leading '-'")
        if ":" in value:
            # URLs, --dist-init-addr HOST:PORT and NIXL side channels are built as HOST:PORT everywhere.
            raise ValueError("IPv6 addresses are not supported yet: use an IPv4 address or a host name")
        return value


class ContainerSettings(Strict):
    """How a service's container is run. Group values override top-level ones key by key."""

    network: str | None = None
    ipc: str | None = None
    shm_size: str | None = None
    ulimits: dict[str, str | int | None] | None = None  # null drops a default limit
    cap_add: list[str] | None = None
    devices: list[str] | None = None
    privileged: bool | None = None
    gpus: str | None = Field(default=None, description="'all', 'none', or a GPU list like '0,1,2,3'")
    volumes: list[str] | None = None
    env: EnvMap | None = None
    run_options: list[str] | None = None
    workdir: str | None = None
    user: str | None = None

    @field_validator("volumes")
    @classmethod
    def _volume_form(cls, value: list[str] | None) -> list[str] | None:
        for volume in value or []:
            if ":" not in volume:
                raise ValueError(f"volume {volume!r} must be HOST_PATH:CONTAINER_PATH[:ro]")
        return value

    def over(self, base: ContainerSettings) -> ContainerSettings:
        """self layered over base: scalars replace, mappings merge, lists append (deduplicated)."""
        out: dict[str, Any] = {}
        for name in type(self).model_fields:
            mine, theirs = getattr(self, name), getattr(base, name)
            if mine is None:
                out[name] = theirs
            elif isinstance(mine, dict) and isinstance(theirs, dict):
                out[name] = {k: v for k, v in {**theirs, **mine}.items() if v is not None}
            elif isinstance(mine, list) and isinstance(theirs, list):
                out[name] = list(dict.fromkeys(theirs + mine))
            else:
                out[name] = mine
        return ContainerSettings(**out)


# Defaults every wide-EP recipe uses (Dynamo's DeepSeek-R1 doc): host network and IPC, a large shm,
# unlimited locked memory for RDMA, ptrace for py-spy.
DEFAULT_CONTAINER = ContainerSettings(
    network="host",
    ipc="host",
    shm_size="10g",
    ulimits={"memlock": -1, "stack": 67108864, "nofile": "65536:65536"},
    cap_add=["SYS_PTRACE"],
    devices=[],
    privileged=False,
    gpus="all",
    volumes=[],
    env={},
    run_options=[],
)

NodeRef = Annotated[int, Field(ge=0)] | str


EngineArgs = dict[str, Any] | list[str | int | float] | str


class ServiceSpec(Strict):
    """What every single-node service has: whether and where it runs, its image and container settings."""

    enabled: bool = True
    node: NodeRef = 0
    image: str | None = None
    container: ContainerSettings = ContainerSettings()
    timeout: Seconds = 60


class EtcdSpec(ServiceSpec):
    client_port: Port = 2379
    peer_port: Port = 2380
    args: list[str] = []


class NatsSpec(ServiceSpec):
    port: Port = 4222
    monitor_port: Port = 8222
    args: list[str] = []


class FrontendSpec(ServiceSpec):
    port: Port = 8000
    # Dynamo's --migration-limit: a request whose worker dies mid-stream continues on another worker
    # (up to this many times); 0 turns migration off.
    migration_limit: Annotated[int, Field(ge=0, le=100, strict=True)] = 3  # strict: `true` is not 1
    args: EngineArgs = {}
    env: EnvMap = {}
    timeout: Seconds = 300


class RouterSpec(ServiceSpec):
    """SGLang's P/D router in front of plain `sglang` prefill and decode groups (no Dynamo)."""

    enabled: bool = False
    port: Port = 8000
    # The router panics if its Prometheus port is taken: always set explicitly, never left to chance.
    prometheus_port: Port = 29000
    kind: Literal["router", "mini_lb"] = Field(
        default="router",
        description="router: sglang_router.launch_router (pin versions.sglang_router); "
        "mini_lb: sglang.srt.disaggregation.mini_lb (SGLang 0.4.6.post1 to 0.5.1 only)",
    )
    policy: str | None = None
    args: EngineArgs = {}
    env: EnvMap = {}
    timeout: Seconds = 1800


class ServicesSpec(Strict):
    etcd: EtcdSpec = EtcdSpec()
    nats: NatsSpec = NatsSpec()
    frontend: FrontendSpec = FrontendSpec()
    router: RouterSpec = RouterSpec()


# A Prometheus duration: 15d, 12h, 1w, 30m (several units may follow each other: 1d12h).
PROM_DURATION = r"^([0-9]+(ms|s|m|h|d|w|y))+$"


class MetricsSpec(Strict):
    """The deployment's own metrics stack: Prometheus scraping every service the plan knows, and Grafana
    with the project's dashboard. Both are ordinary services (plan, up, status, down)."""

    prometheus: bool = False
    grafana: bool = False
    node: NodeRef | None = Field(default=None, description="where both run (default: the head node)")
    port: Port = Field(default=9090, description="Prometheus' port")
    retention: Annotated[str, Field(pattern=PROM_DURATION)] = "15d"
    scrape_interval: Annotated[str, Field(pattern=PROM_DURATION)] = "5s"
    image: str | None = Field(default=None, description="Prometheus' image (default: the file's `image`)")
    grafana_port: Port = 3000
    grafana_image: str | None = Field(default=None, description="Grafana's image (default: the file's `image`)")
    grafana_home: str = Field(default="/usr/share/grafana", description="Grafana's home path on the node or image")
    grafana_admin_password_env: EnvName | None = Field(
        default=None, description="a declared secret (`secrets:`): Grafana's admin password (needed with grafana)"
    )
    dcgm_exporter_port: Port | None = Field(
        default=None, description="a DCGM exporter's port on every GPU node: scraped, and GPU panels on the dashboard"
    )
    timeout: Seconds = 120

    @model_validator(mode="after")
    def _grafana_needs_prometheus(self) -> MetricsSpec:
        if self.grafana and not self.prometheus:
            raise ValueError("grafana: true needs prometheus: true (its dashboard reads the deployment's Prometheus)")
        return self


class ModelSpec(Strict):
    path: Annotated[str, Field(min_length=1)]
    name: Annotated[str, Field(min_length=1)] | None = None


class LeaderSpec(Strict):
    """What rank 0 runs differently (LeaderWorkerSet's leaderTemplate): env set or, with null, removed;
    volumes in place of the group's at the same container path (the leader's disk laid out otherwise)."""

    env: dict[EnvName, str | int | float | bool | None] = {}
    volumes: list[str] = []

    @field_validator("volumes")
    @classmethod
    def _volume_form(cls, value: list[str]) -> list[str]:
        return ContainerSettings._volume_form(value) or []


class NetworkSpec(Strict):
    """How the engines' collective libraries pick their network interface."""

    interface: Annotated[str, Field(pattern=r"^(auto|[A-Za-z0-9_.:@-]{1,15})$")] | None = Field(
        default=None,
        description="auto: per node the interface that routes to the group's leader (`ip route get`, read on "
        "the node by up/doctor); or an interface name used as given. Sets GLOO_SOCKET_IFNAME and "
        "NCCL_SOCKET_IFNAME on every rank.",
    )


class FabricSpec(Strict):
    """The fabric check (`launcher doctor --fabric`, a step of `up`): torch.distributed's rendezvous on
    every multi-node group, and every peer port tried from the node that will use it."""

    # The image's python3 normally has torch (the engines need it); a file whose image has none (the
    # testbed's) names one that has, mounted through `container.volumes` (or in python_env).
    python: Annotated[str, Field(min_length=1, pattern=r"^[^\s]+$")] = "python3"
    timeout: Annotated[float, Field(gt=0, le=3600)] = 60  # seconds the ranks wait for each other
    connect_timeout: Annotated[float, Field(gt=0, le=600)] = 10  # seconds a peer port is tried
    gloo_mb: Annotated[float, Field(gt=0, le=4096)] = 8  # bandwidth message size on CPU (Gloo)
    nccl_mb: Annotated[float, Field(gt=0, le=16384)] = 256  # bandwidth message size on GPU (NCCL)
    iters: Annotated[int, Field(ge=1, le=100)] = 3


class WatchPolicy(Strict):
    """`watch:` for the whole deployment, or for one group (a group's keys win over the deployment's):
    what `launcher watch` does with it. Unset keys fall back to watch's flags; a flag given on the command
    line wins over the file."""

    hung_after: Annotated[float, Field(gt=0, le=86400)] | None = Field(
        default=None, description="seconds a rank with requests running may make no token progress before it is hung"
    )
    unhealthy_after: Annotated[float, Field(ge=0, le=86400)] | None = Field(
        default=None,
        description="seconds a running rank may fail its health probe (three probes in a row at least) before watch"
        " restarts its group (unset: 10; 0: never judged by its probe)",
    )
    max_restarts: Annotated[int, Field(ge=0, le=1000, strict=True)] | None = Field(
        default=None, description="the restart budget: at most this many restarts within `within` minutes"
    )
    within: Annotated[float, Field(gt=0, le=10080)] | None = Field(
        default=None, description="minutes the restart budget counts over (unset: until --reset-after healthy seconds)"
    )
    backoff: Annotated[float, Field(ge=0, le=86400)] | None = Field(
        default=None, description="seconds before the first restart's successor; doubles with each restart"
    )


class DeploymentWatch(WatchPolicy):
    lost_after: Annotated[float, Field(gt=0, le=86400)] | None = Field(
        default=None,
        description="seconds a node may fail SSH before watch calls it lost and moves its group ranks to a spare",
    )
    webhook_url_env: EnvName | None = Field(
        default=None, description="a declared secret (`secrets:`) holding a URL: sent a JSON alert when watch gives up"
    )


class GroupSpec(Strict):
    engine: str
    # A count (per replica), a list (every replica's nodes, packed in order: N x the nodes of one), or
    # one list per replica (`[[a, b], [c, d]]`).
    nodes: Annotated[int, Field(ge=1, le=MAX_NODES)] | list[NodeRef | list[NodeRef]]
    # LeaderWorkerSet's `replicas`: independent instances of the multi-node group, each with its own
    # leader, rendezvous and ports, on distinct nodes.
    replicas: Annotated[int, Field(ge=1, le=MAX_REPLICAS, strict=True)] = 1
    mode: Literal["prefill", "decode", "agg"] | None = None
    gpus: Annotated[list[Annotated[int, Field(ge=0)]], Field(max_length=MAX_GPUS)] | None = Field(
        default=None, description="GPU indices on each node used by this group (default: all)"
    )
    args: EngineArgs = []
    env: EnvMap = {}
    image: str | None = None
    container: ContainerSettings = ContainerSettings()
    dist_init_port: Port = 29500
    bootstrap_port: Port | None = None
    port: Port | None = None
    # Dynamo keeps DYN_SYSTEM_PORT in a signed 16-bit integer: a higher port crashes the worker.
    system_port: Annotated[int, Field(ge=1, le=32767)] | None = None
    timeout: Seconds = 1800
    leader: LeaderSpec = LeaderSpec()
    # The fabric check's rendezvous: default by engine (dynamo-sglang, sglang and dynamo-vllm ranks
    # rendezvous; mocker ranks never do; a `command` group may ask for it).
    fabric: bool | None = None
    watch: WatchPolicy = WatchPolicy()

    @field_validator("nodes")
    @classmethod
    def _bounded(cls, value: int | list) -> int | list:
        if not isinstance(value, list):
            return value
        if not value:  # else a group of no node, which nothing after this expects
            raise ValueError("the list is empty: expected at least one node")
        if any(isinstance(v, list) for v in value) and not all(isinstance(v, list) for v in value):
            raise ValueError("expected a list of nodes or one list of nodes per replica, not both mixed")
        count = sum(len(v) if isinstance(v, list) else 1 for v in value)
        if count > MAX_NODES:
            raise ValueError(f"at most {MAX_NODES} nodes (the launcher's limit), got {count}")
        if any(v == [] for v in value):
            raise ValueError("a replica's node list is empty: expected at least one node per replica")
        return value

    @model_validator(mode="after")
    def _replicas_fit(self) -> GroupSpec:
        if isinstance(self.nodes, int) and self.nodes * self.replicas > MAX_NODES:
            raise ValueError(
                f"{self.replicas} replicas of {self.nodes} nodes exceed the launcher's limit of {MAX_NODES}"
            )
        if self.per_replica_lists and len(self.nodes) != self.replicas:  # type: ignore[arg-type]
            raise ValueError(
                f"nodes has {len(self.nodes)} per-replica lists but replicas is {self.replicas}: expected one each"  # type: ignore[arg-type]
            )
        return self

    @property
    def per_replica_lists(self) -> bool:
        """`nodes` written as one list per replica."""
        return isinstance(self.nodes, list) and bool(self.nodes) and isinstance(self.nodes[0], list)


class ProfileGroup(Strict):
    """What a profile changes in one group: flags added or overridden (`null`/`false` removes one), env."""

    args: dict[str, Any] = {}
    env: EnvMap = {}


# profiles.NAME.GROUP: {args, env}. `launcher up FILE --profile NAME` applies one (the stress tests).
GroupName = Annotated[str, Field(pattern=r"^[a-z][a-z0-9-]*$")]
Profiles = dict[Annotated[str, Field(pattern=NAME_RE)], dict[GroupName, ProfileGroup]]


class VersionsSpec(Strict):
    """The versions the file is written for: flag checks and version-dependent forms read them."""

    sglang: str | None = None
    dynamo: str | None = None
    vllm: str | None = None
    sglang_router: str | None = None

    @field_validator("sglang", "dynamo", "vllm", "sglang_router", mode="before")
    @classmethod
    def _a_version(cls, value: Any) -> Any:
        if value is None:
            return value
        try:
            Version(str(value))
        except InvalidVersion:
            raise ValueError(f"expected a version like 0.5.21 (PEP 440), got {value!r}") from None
        return str(value)

    def parsed(self, name: str) -> Version | None:
        value = getattr(self, name)
        return Version(value) if value else None


class DeploymentSpec(Strict):
    deployment: Annotated[str, Field(pattern=NAME_RE, max_length=48)]
    image: str | None = None
    runtime: Literal["docker", "process"] = "docker"
    python_env: str | None = Field(
        default=None, description="process runtime: a Python environment on the nodes; its bin/ leads PATH"
    )
    gpus_per_node: Annotated[int, Field(ge=0, le=MAX_GPUS)] = 8
    versions: VersionsSpec = VersionsSpec()
    model: ModelSpec | None = None
    nodes: Annotated[list[NodeSpec], Field(min_length=1, max_length=MAX_NODES)] | None = None
    ssh: SSHSettings = SSHSettings()
    container: ContainerSettings = ContainerSettings()
    secrets: list[EnvName] = []
    services: ServicesSpec = ServicesSpec()
    metrics: MetricsSpec = MetricsSpec()
    network: NetworkSpec = NetworkSpec()
    fabric: FabricSpec = FabricSpec()
    watch: DeploymentWatch = DeploymentWatch()
    groups: Annotated[dict[GroupName, GroupSpec], Field(max_length=MAX_GROUPS)]
    profiles: Profiles = {}
    state_dir: str = "/var/tmp/launcher"
    # Seconds a stop waits for a worker's in-flight requests to finish (`down`; `down --now` skips it).
    # Also Dynamo's graceful-shutdown grace period on the workers, so the engine does not cut them first.
    drain_timeout: Annotated[float, Field(ge=0, le=3600, strict=True)] = 60  # strict: `true` is not 1 s

    @model_validator(mode="after")
    def _runtime_needs(self) -> DeploymentSpec:
        if self.runtime == "docker" and not self.image:
            raise ValueError("`image` is required with the docker runtime (or set `runtime: process`)")
        return self

    @field_validator("groups")
    @classmethod
    def _some_groups(cls, value: dict[str, GroupSpec]) -> dict[str, GroupSpec]:
        if not value:
            raise ValueError("at least one worker group is needed (for example prefill and decode)")
        return value


class InventorySpec(Strict):
    ssh: SSHSettings = SSHSettings()
    vars: dict[str, str | int | float | bool] = {}
    nodes: Annotated[list[NodeSpec], Field(min_length=1, max_length=MAX_NODES)]


def as_text(value: Any) -> str:
    """A YAML value as the text a command line or an env var gets: true/false, numbers as written,
    mappings and lists as compact JSON (one argument)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict | list):
        return json.dumps(value, separators=(",", ":"))
    return str(value)
