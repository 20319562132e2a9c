"""The transport's long-running commands and port streams (`Host.start`, `Host.open_port`), on both
hosts: a node over real SSH (the testbed) and this machine. What `image push` and `stage` stand on:
a stream far larger than one write goes into a command's stdin while its progress lines come back
before it ends; a byte stream reaches a port on the node through its SSH connection."""

from __future__ import annotations

import hashlib
import os
import shlex
import time
import uuid
from pathlib import Path

import pytest

from launcher.config.schema import SSHSettings
from launcher.plan.types import Node
from launcher.transport.host import Options
from launcher.transport.local import LocalHost
from launcher.transport.ssh import SSHHost
from launcher.transport.stream import Ended

pytestmark = pytest.mark.testbed

ECHO_SERVER = (
    "import socket,sys; s=socket.socket(); s.bind((sys.argv[1], 0)); s.listen(1); "
    "print(s.getsockname()[1], flush=True); c,_=s.accept(); "
    "[c.sendall(b) for b in iter(lambda: c.recv(65536), b'')]; c.close()"
)


@pytest.fixture(params=["ssh", "local"])
def host(request, testbed):
    if request.param == "local":
        h = LocalHost(Node(0, "local", "127.0.0.1", SSHSettings(), 0), Options())
    else:
        name, address = testbed.nodes[1]
        ssh = SSHSettings(user="root", key=str(testbed.key), known_hosts=str(testbed.known_hosts), connect_timeout=5)
        h = SSHHost(Node(1, name, address, ssh, 0), Options())
    yield h
    h.close()


def test_a_large_stdin_streams_into_a_command(host):
    block = os.urandom(1 << 20)
    proc = host.start("sha256sum")
    digest = hashlib.sha256()
    for _ in range(64):  # 64 MB, written as it goes: never held whole
        proc.write(block)
        digest.update(block)
    proc.close_stdin()
    line = proc.readline(60)
    assert line is not None and line.split()[0] == digest.hexdigest()
    assert proc.wait(30) == 0
    assert proc.readline(5) == ""  # stdout ended


def test_progress_lines_arrive_before_the_command_ends(host):
    proc = host.start("echo one; echo two >&2; sleep 0.5; echo three; sleep 60")
    try:
        assert proc.readline(30) == "one\n"
        assert proc.readline(30) == "three\n"
        assert proc.wait(0) is None  # still running: the lines came while it ran
        assert "two" in proc.stderr
    finally:
        proc.kill()
    assert proc.readline(30) == ""  # killed: its stdout ends


def running(marker: str) -> list[int]:
    """Processes whose command line holds `marker` (testbed nodes share this machine's PID namespace)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker.encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def test_kill_ends_a_command_that_reads_its_stdin(host):
    marker = f"launcher-stream-{uuid.uuid4().hex}"
    proc = host.start(f"echo ready; exec sh -c 'cat > /dev/null; true' {marker}")
    assert proc.readline(30) == "ready\n"
    assert running(marker)
    proc.kill()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and running(marker):
        time.sleep(0.1)
    # SSH: the channel closed and the command saw its stdin end (the relay stops on that); here: killed
    assert not running(marker)
    assert proc.readline(5) == ""


def test_writing_to_an_ended_command_raises(host):
    proc = host.start("exit 3")
    assert proc.wait(30) == 3
    with pytest.raises(Ended):
        for _ in range(64):  # the first writes may still land in buffers
            proc.write(b"x" * 65536)


def test_a_port_on_the_node_through_its_connection(host):
    server = host.start(f"exec python3 -c {shlex.quote(ECHO_SERVER)} {host.node.address}")
    try:
        port = int(server.readline(30))
        conn = host.open_port(port)
        payload = os.urandom(3 << 20)
        conn.sendall(payload)
        conn.shutdown_write()
        got = bytearray()
        conn.settimeout(30)
        while chunk := conn.recv(65536):
            got += chunk
        conn.close()
        assert bytes(got) == payload
    finally:
        server.kill()
