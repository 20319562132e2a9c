"""Port forwarding over a node's SSH connection (transport/forward.py, `Host.forward`), against a real sshd
on the testbed: a server that listens only on the node's own loopback (unreachable from this machine)
answers through the forwarded local port, byte for byte, many connections at once; a port where nothing
listens is a closed connection here, said in `failures`; after close() the local port takes nothing."""

from __future__ import annotations

import concurrent.futures
import hashlib
import os
import socket
import urllib.request

import pytest

from launcher.config.schema import SSHSettings
from launcher.plan.types import Node
from launcher.transport.host import Options
from launcher.transport.local import LocalHost
from launcher.transport.ssh import SSHHost
from tests.helpers import free_port, wait_for

pytestmark = pytest.mark.testbed


@pytest.fixture
def host(testbed):
    name, address = testbed.nodes[1]
    ssh = SSHSettings(user="root", key=str(testbed.key), known_hosts=str(testbed.known_hosts), connect_timeout=5)
    h = SSHHost(Node(1, name, address, ssh, 0), Options())
    yield h
    h.close()


@pytest.fixture
def node_server(host, tmp_path):
    """A real HTTP server on the node's loopback (inside its network namespace), serving a 2 MB file."""
    payload = os.urandom(2_000_000)
    (tmp_path / "blob").write_bytes(payload)
    port = free_port()
    started = host.run(
        f"setsid python3 -m http.server --bind 127.0.0.1 {port} --directory {tmp_path} >/dev/null 2>&1 "
        "< /dev/null & echo $!"
    )
    pid = started.stdout.strip()
    wait_for(lambda: host.run(f"python3 -c 'import socket; socket.create_connection((\"127.0.0.1\", {port}), 1)'").ok,
             30, 0.3, "the node's server")  # fmt: skip
    yield port, hashlib.sha256(payload).hexdigest()
    host.run(f"kill {pid}")


def fetch(url: str) -> str:
    with urllib.request.urlopen(url, timeout=30) as answer:
        return hashlib.sha256(answer.read()).hexdigest()


def test_a_node_loopback_port_answers_through_the_forward(host, node_server):
    port, digest = node_server
    with socket.socket() as direct:  # not reachable from here: the node's loopback is its own
        direct.settimeout(1)
        assert direct.connect_ex(("127.0.0.1", port)) != 0
    with host.forward("127.0.0.1", port) as fwd:
        assert fwd.host == "127.0.0.1" and fwd.port != port
        assert fetch(f"{fwd.url}/blob") == digest
        with concurrent.futures.ThreadPoolExecutor(8) as pool:  # 16 requests, 8 connections at a time
            digests = list(pool.map(fetch, [f"{fwd.url}/blob"] * 16))
        assert digests == [digest] * 16
        assert fwd.failures == []
    with socket.socket() as after:  # closed: the local port takes nothing any more
        after.settimeout(1)
        assert after.connect_ex(("127.0.0.1", fwd.port)) != 0


def test_a_port_where_nothing_listens_is_a_closed_connection_and_a_reason(host):
    nothing = free_port()
    with host.forward("127.0.0.1", nothing) as fwd:
        with pytest.raises((ConnectionError, OSError)):
            urllib.request.urlopen(f"{fwd.url}/", timeout=10)
        wait_for(lambda: fwd.failures, 10, 0.1, "the refusal to be recorded")
        assert str(nothing) in fwd.failures[0]


def test_local_host_forward_is_the_address_itself():
    local = LocalHost(Node(0, "local", "127.0.0.1", SSHSettings(), 0), Options())
    with local.forward("127.0.0.1", 8123) as fwd:
        assert (fwd.host, fwd.port, fwd.url) == ("127.0.0.1", 8123, "http://127.0.0.1:8123")
