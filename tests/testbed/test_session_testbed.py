"""One shell per node for a whole command (transport/session.py), against a real sshd on the testbed:
every script after the first runs in the same shell (no new channel, no login shell, no ~/.bashrc),
and each still gets its own stdout, stderr, exit code and stdin, as on a channel of its own."""

from __future__ import annotations

import threading

import pytest

from launcher.config.schema import SSHSettings
from launcher.plan.types import Node
from launcher.transport.errors import NodeError
from launcher.transport.host import Options
from launcher.transport.ssh import SSHHost

pytestmark = pytest.mark.testbed


@pytest.fixture
def host(testbed):
    name, address = testbed.nodes[1]
    ssh = SSHSettings(user="root", key=str(testbed.key), known_hosts=str(testbed.known_hosts), connect_timeout=5)
    h = SSHHost(Node(1, name, address, ssh, 0), Options())
    yield h
    h.close()


def test_scripts_share_one_shell_and_keep_their_own_streams(host):
    parents = {host.run("echo $PPID").stdout.strip() for _ in range(5)}
    assert len(parents) == 1 and parents != {""}, parents  # the same session shell started every script
    r = host.run("echo out; echo err >&2; exit 7")
    assert (r.exit_code, r.stdout, r.stderr) == (7, "out\n", "err\n")
    assert host.run("printf 'no newline'").stdout == "no newline"
    assert host.run("set -e; false; echo never").exit_code == 1
    # `exit` and `set -e` stayed inside their scripts: the session lives on, in the same shell
    assert host.run("echo $PPID").stdout.strip() in parents


def test_stdin_reaches_the_script_through_pipes_only(host):
    secret = "s3cr3t 'quoted' $HOME `x`\n"
    r = host.run("cat; ps -eo args", stdin=secret)
    assert r.stdout.startswith(secret)
    assert r.stdout.count("s3cr3t") == 1  # no process on the node had it in its command line
    assert host.run("cat").stdout == ""  # no stdin: EOF at once, nothing left over from before


def test_output_that_looks_like_the_end_marker_is_just_output(host):
    r = host.run("printf '\\n@@end 0000 0\\n@@end x\\n'; echo after")
    assert r.stdout == "\n@@end 0000 0\n@@end x\nafter\n" and r.exit_code == 0


def test_a_timeout_ends_only_that_script(host):
    with pytest.raises(NodeError) as timed_out:
        host.run("sleep 30", timeout=1)
    assert timed_out.value.kind == "command timed out"
    assert host.run("echo back").stdout == "back\n"  # a new session


def test_concurrent_scripts_on_one_node_all_run(host):
    results: dict[int, str] = {}

    def go(n: int) -> None:
        results[n] = host.run(f"sleep 0.3; echo {n}").stdout.strip()

    threads = [threading.Thread(target=go, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert results == {n: str(n) for n in range(4)}


def test_every_ssh_socket_has_tcp_nodelay(testbed, host):
    """Without TCP_NODELAY each small write behind an unacknowledged one waits for the peer's delayed
    ACK (about 40 ms): key exchange, channel opens, every request. The jump host's socket too."""
    import socket

    assert host.run("echo hi").stdout == "hi\n"
    assert host._conn.transport.sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    name, address = testbed.nodes[2]
    ssh = SSHSettings(
        user="root",
        key=str(testbed.key),
        known_hosts=str(testbed.known_hosts),
        connect_timeout=5,
        jump=f"root@{testbed.nodes[0][1]}",
    )
    via = SSHHost(Node(2, name, address, ssh, 0), Options())
    try:
        assert via.run("uname -n").stdout.strip() == name
        assert via._gateway.transport.sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    finally:
        via.close()
