"""The single-node services: etcd, NATS, the Dynamo frontend, and the SGLang P/D router.

Each is described the same way (`Infra`: argv, probe, ports, and the URL others reach it at), so the
plan builds them all with one step.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from packaging.version import Version

from launcher.config.schema import EtcdSpec, FrontendSpec, NatsSpec, RouterSpec
from launcher.plan.engines import args as A
from launcher.plan.engines.base import dynamo_env
from launcher.plan.types import Node, Probe


@dataclass(frozen=True)
class Infra:
    """What a single-node service needs in the plan."""

    command: list[str]
    probe: Probe
    ports: list[int]
    url: str | None = None  # how the other services reach it
    env: dict[str, str] = field(default_factory=dict)


def bind_host(node: Node) -> str:
    """Listen on every interface of a real node, but only on loopback for a local one."""
    return "127.0.0.1" if node.is_local else "0.0.0.0"


def etcd(spec: EtcdSpec, node: Node, scratch: str) -> Infra:
    return Infra(
        etcd_command(spec, node, scratch),
        etcd_probe(spec, node),
        [spec.client_port, spec.peer_port],
        url=f"http://{node.address}:{spec.client_port}",
    )


def nats(spec: NatsSpec, node: Node, scratch: str) -> Infra:
    return Infra(
        nats_command(spec, node, scratch),
        nats_probe(spec, node),
        [spec.port, spec.monitor_port],
        url=f"nats://{node.address}:{spec.port}",
    )


def frontend(spec: FrontendSpec, node: Node, etcd_url: str | None, nats_url: str | None) -> Infra:
    """Dynamo's OpenAI frontend; ValueError when its args set what the launcher sets."""
    return Infra(
        frontend_command(spec, node),
        frontend_probe(spec, node),
        [spec.port],
        url=f"http://{node.address}:{spec.port}",
        env=dynamo_env(node.address, etcd_url, nats_url),
    )


def etcd_command(spec: EtcdSpec, node: Node, scratch: str = "/tmp") -> list[str]:
    # A single member. The official recipe's `--initial-cluster default=http://HEAD:2380` without a
    # matching --initial-advertise-peer-urls makes etcd exit ("missing from
    # --initial-advertise-peer-urls"): pass all three peer flags, consistently, and a fresh data dir.
    a, c, p = node.address, spec.client_port, spec.peer_port
    client_urls = [f"http://{bind_host(node)}:{c}"]
    return [
        "etcd",
        "--name",
        "launcher",
        "--data-dir",
        f"{scratch}/launcher-etcd",
        "--listen-client-urls",
        ",".join(client_urls),
        "--advertise-client-urls",
        f"http://{a}:{c}",
        "--listen-peer-urls",
        f"http://{a}:{p}",
        "--initial-advertise-peer-urls",
        f"http://{a}:{p}",
        "--initial-cluster",
        f"launcher=http://{a}:{p}",
        "--initial-cluster-state",
        "new",
        *spec.args,
    ]


def etcd_probe(spec: EtcdSpec, node: Node) -> Probe:
    return Probe(kind="http", url=f"http://{node.address}:{spec.client_port}/health", expect={"health": "true"})


def nats_command(spec: NatsSpec, node: Node, scratch: str = "/tmp") -> list[str]:
    # JetStream (-js) is required by Dynamo; without it requests fail much later, not at start.
    return [
        "nats-server",
        "-js",
        "-a",
        bind_host(node),
        "-p",
        str(spec.port),
        "-m",
        str(spec.monitor_port),
        "-sd",
        f"{scratch}/launcher-nats",
        *spec.args,
    ]


def nats_probe(spec: NatsSpec, node: Node) -> Probe:
    return Probe(kind="http", url=f"http://{node.address}:{spec.monitor_port}/healthz", expect={"status": "ok"})


def frontend_command(spec: FrontendSpec, node: Node) -> list[str]:
    argv = A.normalize(spec.args)
    node_free = [f for f in ("--http-host", "--http-port") if A.has(argv, f)]
    if node_free:
        raise ValueError(f"{node_free[0]} is set from services.frontend.port; remove it from args")
    if A.has(argv, "--migration-limit"):
        raise ValueError("--migration-limit is set from services.frontend.migration_limit; remove it from args")
    # Request migration: a stream whose worker dies (or is drained past its grace) continues on another.
    migration = ["--migration-limit", str(spec.migration_limit)] if spec.migration_limit else []
    http = ["--http-host", bind_host(node), "--http-port", str(spec.port)]
    return ["python3", "-m", "dynamo.frontend", *http, *migration, *argv]


def frontend_probe(spec: FrontendSpec, node: Node) -> Probe:
    return Probe(kind="http", url=f"http://{node.address}:{spec.port}/live", expect={"status": "live"})


# -- the SGLang P/D router ------------------------------------------------------------------------

# Refuse to start under another router version than the file pins: flags and defaults changed at
# almost every release (`--prefill URL PORT` arity, default host, timeouts), see the reference.
ROUTER_PIN_CHECK = (
    "v=$(python3 -c 'from importlib.metadata import version; print(version(\"sglang-router\"))' 2>/dev/null)"
    ' || v="not installed"; [ "$v" = "$0" ] || { echo "launcher: sglang-router $v is installed here but the file'
    ' pins $0 (versions.sglang_router)" >&2; exit 3; }; exec python3 -m sglang_router.launch_router "$@"'
)


@dataclass(frozen=True)
class Worker:
    """A P or D instance as the router sees it: rank 0's HTTP URL (and the prefill bootstrap port)."""

    url: str
    bootstrap_port: int | None = None


def router_command(
    spec: RouterSpec,
    node: Node,
    prefill: list[Worker],
    decode: list[Worker],
    router_version: str | None,
    sglang_version: str | None,
) -> list[str]:
    argv = A.normalize(spec.args)
    for flag in ("--host", "--port", "--prefill", "--decode", "--prometheus-port"):
        if A.has(argv, flag):
            raise ValueError(f"{flag} is set by the launcher (services.router and the groups); remove it from args")
    if spec.kind == "mini_lb":
        return mini_lb_command(spec, node, prefill, decode, sglang_version) + argv
    if not router_version:
        raise ValueError("the router's version must be pinned: set versions.sglang_router (for example 0.3.2)")
    out = ["sh", "-c", ROUTER_PIN_CHECK, router_version, "--pd-disaggregation"]
    for w in prefill:
        # URL and bootstrap port always together: without the port the decode side substitutes its own.
        out += ["--prefill", w.url, str(w.bootstrap_port)]
    for w in decode:
        out += ["--decode", w.url]
    out += ["--host", bind_host(node), "--port", str(spec.port)]
    out += ["--prometheus-host", bind_host(node), "--prometheus-port", str(spec.prometheus_port)]
    if spec.policy:
        out += ["--policy", spec.policy]
    return out + argv


def mini_lb_command(
    spec: RouterSpec, node: Node, prefill: list[Worker], decode: list[Worker], sglang_version: str | None
) -> list[str]:
    if not sglang_version:
        raise ValueError("kind: mini_lb depends on the SGLang version: set versions.sglang (0.4.6.post1 to 0.5.1)")
    v = Version(sglang_version)
    if v < Version("0.4.6.post1") or v >= Version("0.5.2"):
        raise ValueError(
            f"sglang.srt.disaggregation.mini_lb does not exist in SGLang {sglang_version} (0.4.6.post1 to 0.5.1 only);"
            " use kind: router with a pinned versions.sglang_router"
        )
    comma = v < Version("0.4.7")  # 0.4.6.post1 took comma-separated lists, later versions space-separated

    def many(values: list[str]) -> list[str]:
        return [",".join(values)] if comma else values

    return [
        "python3", "-m", "sglang.srt.disaggregation.mini_lb",
        "--prefill", *many([w.url for w in prefill]),
        "--prefill-bootstrap-ports", *many([str(w.bootstrap_port) for w in prefill]),
        "--decode", *many([w.url for w in decode]),
        "--host", bind_host(node), "--port", str(spec.port),
    ]  # fmt: skip


def router_ports(spec: RouterSpec) -> list[int]:
    return [spec.port] if spec.kind == "mini_lb" else [spec.port, spec.prometheus_port]


def router_probe(spec: RouterSpec, node: Node) -> Probe:
    if spec.kind == "mini_lb":
        return Probe(kind="http", url=f"http://{node.address}:{spec.port}/health")
    # /health answers 200 with no worker at all; /readiness only once every P and D worker is healthy.
    return Probe(kind="http", url=f"http://{node.address}:{spec.port}/readiness", expect={"status": "ready"})


def router(
    spec: RouterSpec,
    node: Node,
    prefill: list[Worker],
    decode: list[Worker],
    router_version: str | None,
    sglang_version: str | None,
) -> Infra:
    """SGLang's P/D router; ValueError when the file cannot give it a working command line."""
    return Infra(
        router_command(spec, node, prefill, decode, router_version, sglang_version),
        router_probe(spec, node),
        router_ports(spec),
        url=f"http://{node.address}:{spec.port}",
    )
