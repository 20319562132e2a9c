"""What an engine adapter is: it turns a worker group and a rank into argv, env and a probe."""

from __future__ import annotations

from dataclasses import dataclass, field

from launcher.config.schema import GroupSpec, ModelSpec, VersionsSpec
from launcher.errors import ConfigError
from launcher.plan.engines import args as A
from launcher.plan.types import Node, Probe, replica_unit


@dataclass(frozen=True)
class GroupContext:
    """Everything an engine may use about its group. `argv` is the user's args, normalized."""

    deployment: str
    file: str
    name: str
    spec: GroupSpec
    mode: str
    argv: list[str]
    nodes: list[Node]
    gpus: list[int]  # GPU indices on each node
    model: ModelSpec | None
    etcd_endpoint: str | None
    nats_url: str | None
    line: int | None = None
    # The file's `versions` (engines whose flags changed across versions read theirs here).
    versions: VersionsSpec = field(default_factory=VersionsSpec)
    # Which instance of the group this is (`replicas:`): each is complete, with its own leader and ports.
    replica: int = 0
    replicas: int = 1

    @property
    def unit(self) -> str:
        """The replica's name: the group's own for replica 0, `group.K` after it (services, labels)."""
        return replica_unit(self.name, self.replica)

    @property
    def nnodes(self) -> int:
        return len(self.nodes)

    @property
    def leader(self) -> Node:
        return self.nodes[0]

    def error(self, key: str, message: str) -> ConfigError:
        return ConfigError(message, file=self.file, key=f"groups.{self.name}.{key}", line=self.line)


class Engine:
    """Base adapter. Subclasses set `name` and override `command`."""

    name = ""
    needs_gpu = True
    # Never touches a GPU it is given (the mocker simulates one): its nodes' GPU health is not its concern.
    # A `command` group needs none either, yet may run anything on the GPUs the plan gives it.
    gpu_free = False
    # Do the group's ranks meet in torch.distributed's rendezvous (one instance over many nodes)?
    rendezvous = False

    def validate(self, group: GroupContext) -> list[str]:
        """Raise ConfigError for impossible groups; return warnings."""
        return []

    def command(self, group: GroupContext, rank: int) -> list[str]:
        raise NotImplementedError

    def env(self, group: GroupContext, rank: int) -> dict[str, str]:
        return {}

    def ports(self, group: GroupContext, rank: int) -> list[int]:
        return []

    def peer_ports(self, group: GroupContext, rank: int) -> list[tuple[str, int]]:
        """(kind, port) this rank serves to other nodes besides the rendezvous: `bootstrap` (P/D, used by
        every decode node), `nixl` (KV side channel, used by the other P/D role's nodes)."""
        return []

    def probe(self, group: GroupContext, rank: int) -> Probe:
        return Probe(kind="running")

    def expected_instances(self, group: GroupContext) -> dict[str, int]:
        return {}

    def summary(self, group: GroupContext) -> str:
        return f"{group.nnodes} node(s)"


def component_for(mode: str) -> str:
    """Dynamo registers prefill workers as `prefill`, decode and aggregated workers as `backend`."""
    return "prefill" if mode == "prefill" else "backend"


def dynamo_env(address: str, etcd: str | None, nats: str | None) -> dict[str, str]:
    """Env every Dynamo process needs on a multi-node cluster.

    ETCD_ENDPOINTS / NATS_SERVER point at the head node (defaults are localhost, wrong on every other
    node). The advertised hosts are pinned to the node's own address: auto-detection picks an
    unreachable interface on multi-NIC hosts. Dynamo takes an IP address or an interface name there, so a
    node written as `localhost` advertises 127.0.0.1 (as "localhost", every worker exits at start:
    "interface not found: localhost").
    """
    address = "127.0.0.1" if address == "localhost" else address
    env = {
        # The mocker's prefill workers advertise their bootstrap host from this (else from the
        # hostname, which on a real cluster may resolve to a loopback or management address).
        "DYN_HTTP_RPC_HOST": address,
        "DYN_TCP_RPC_HOST": address,
        "DYN_TCP_RESPONSE_STREAM_HOST": address,
        "DYN_EVENT_PLANE_HOST": address,
        "DYN_SYSTEM_HOST": address,
    }
    if etcd:
        env["ETCD_ENDPOINTS"] = etcd
    else:
        env["DYN_DISCOVERY_BACKEND"] = "file"
    if nats:
        env["NATS_SERVER"] = nats
    else:
        # Without NATS the event plane must be ZMQ, or the runtime waits 120 s for NATS.
        env["DYN_EVENT_PLANE"] = "zmq"
    return env


def system_env(group: GroupContext) -> dict[str, str]:
    """Dynamo's per-worker status server, reporting ready only once `generate` is served."""
    if not group.spec.system_port:
        return {}
    return {"DYN_SYSTEM_PORT": str(group.spec.system_port), "DYN_SYSTEM_USE_ENDPOINT_HEALTH_STATUS": '["generate"]'}


def system_probe(group: GroupContext, rank: int) -> Probe:
    """Ready when the rank's Dynamo status server says so; without one, running is all we can know."""
    if not group.spec.system_port:
        return Probe(kind="running")
    url = f"http://{group.nodes[rank].address}:{group.spec.system_port}/health"
    return Probe(kind="http", url=url, expect={"status": "ready"})


def int_arg(group: GroupContext, argv: list[str], *names: str) -> int | None:
    """An engine flag's whole-number value (under any of its spellings), or None; bad input is exit 2."""
    raw = A.value(argv, *names)
    if raw is None:
        return None
    try:
        return int(raw)
    except ValueError:
        raise group.error("args", f"{names[0]} expects a whole number, got {raw!r}") from None
