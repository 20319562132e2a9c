"""The single-node infrastructure services: etcd, NATS and the Dynamo frontend."""

from __future__ import annotations

from launcher.config import EtcdSpec, FrontendSpec, NatsSpec
from launcher.engines import args as A
from launcher.engines.base import dynamo_env
from launcher.model import Node, Probe


def bind_host(node: Node) -> str:
    """Listen on every interface of a real node, but only on loopback for a local one."""
    return "127.0.0.1" if node.address in ("127.0.0.1", "localhost", "::1") else "0.0.0.0"


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
    return ["python3", "-m", "dynamo.frontend", "--http-host", bind_host(node), "--http-port", str(spec.port), *argv]


def frontend_env(spec: FrontendSpec, node: Node, etcd: str | None, nats: str | None) -> dict[str, str]:
    return dynamo_env(node.address, etcd, nats)


def frontend_probe(spec: FrontendSpec, node: Node) -> Probe:
    return Probe(kind="http", url=f"http://{node.address}:{spec.port}/live", expect={"status": "live"})
