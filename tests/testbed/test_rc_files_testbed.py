"""`~/.bashrc` runs at most once per node per command (issue 25): the login shell of a node's one
session reads it, and no script sent through that session reads it again (each would pay `pyenv
init` and the like). What it exported is still what every script sees.

Each testbed node's sshd has a mount namespace of its own: the fixture bind-mounts a counting
`~/.bashrc` there (this machine's own file is untouched), which appends the node's name to a log
each time it runs."""

from __future__ import annotations

import subprocess
from collections import Counter

import pytest
import yaml

from launcher.config.schema import SSHSettings
from launcher.plan.types import Node
from launcher.transport.host import Options
from launcher.transport.ssh import SSHHost
from tests.helpers import STATE_DIR, launcher_on

pytestmark = pytest.mark.testbed


def in_sshd_namespace(testbed, name: str, *argv: str) -> subprocess.CompletedProcess:
    pid = int((testbed.dir / "nodes" / name / "sshd.pid").read_text())
    return subprocess.run(["nsenter", f"--mount=/proc/{pid}/ns/mnt", "--", *argv], capture_output=True, text=True)


@pytest.fixture
def node_bashrc(testbed, tmp_path):
    """install(TEXT): TEXT becomes every node's `~/.bashrc` (bind-mounted in its sshd's mount
    namespace) until the test ends."""
    names = [name for name, _ in testbed.nodes]
    mounted = []

    def install(text: str) -> None:
        rc = tmp_path / "bashrc"
        rc.write_text(text)
        for name in names:
            r = in_sshd_namespace(testbed, name, "mount", "--bind", str(rc), "/root/.bashrc")
            assert r.returncode == 0, r.stderr
            mounted.append(name)

    try:
        yield install
    finally:
        for name in mounted:
            in_sshd_namespace(testbed, name, "umount", "/root/.bashrc")


@pytest.fixture
def rc_log(node_bashrc, tmp_path):
    """The log the nodes' `~/.bashrc` appends to (one line per run: the node's name)."""
    log = tmp_path / "bashrc.log"
    log.touch()
    node_bashrc(f'uname -n >> {log}\nexport LAUNCHER_RC_SEEN="from the login shell"\n')
    return log


def node_host(testbed, i: int) -> SSHHost:
    name, address = testbed.nodes[i]
    ssh = SSHSettings(user="root", key=str(testbed.key), known_hosts=str(testbed.known_hosts), connect_timeout=5)
    return SSHHost(Node(i, name, address, ssh, 0), Options())


def runs(log) -> Counter:
    return Counter(log.read_text().split())


def test_scripts_in_a_session_see_the_login_environment_read_once(testbed, rc_log):
    name = testbed.nodes[1][0]
    host = node_host(testbed, 1)
    try:
        seen = [host.run("echo $LAUNCHER_RC_SEEN").stdout.strip() for _ in range(5)]
    finally:
        host.close()
    assert seen == ["from the login shell"] * 5  # what the rc file exported reaches every script
    assert runs(rc_log) == {name: 1}  # read by the session's login shell only


def test_what_the_login_shell_prints_stays_out_of_the_first_answer(testbed, node_bashrc):
    """The first script goes out before the session says it is ready: the login shell's own chatter
    (a motd, an rc file's echo) must not become part of that script's output."""
    node_bashrc("echo chatter from the rc file; echo chatter on stderr >&2\n")
    host = node_host(testbed, 1)
    try:
        first = host.run("echo first; echo err >&2")
        second = host.run("echo second")
    finally:
        host.close()
    assert (first.exit_code, first.stdout, first.stderr) == (0, "first\n", "err\n")
    assert second.stdout == "second\n"


def test_a_node_without_a_session_shell_still_runs_every_script(testbed, node_bashrc):
    """No bash or base64 on the node's PATH: the session cannot start (its first script was never
    run), and that script and the next run on channels of their own."""
    node_bashrc("export PATH=/var/empty\n")
    host = node_host(testbed, 1)
    try:
        first = host.run("echo $((6 * 7)); exit 3")
        second = host.run("read line; echo got $line", stdin="it\n")
    finally:
        host.close()
    assert (first.exit_code, first.stdout) == (3, "42\n")
    assert (second.exit_code, second.stdout) == (0, "got it\n")


def test_up_status_down_read_bashrc_at_most_once_per_node(testbed, rc_log, tmp_path):
    data = {
        "deployment": "rcfiles",
        "image": "${TESTBED_IMAGE}",
        "state_dir": STATE_DIR,
        "gpus_per_node": 0,
        "container": {"shm_size": "", "ulimits": {"memlock": None, "nofile": None}, "volumes": ["/usr:/usr:ro"]},
        "services": {"etcd": {"enabled": False}, "nats": {"enabled": False}, "frontend": {"enabled": False}},
        "groups": {"work": {"engine": "command", "nodes": len(testbed.nodes), "args": ["sleep", "infinity"]}},
    }
    config = tmp_path / "rcfiles.yaml"
    config.write_text(yaml.safe_dump(data, sort_keys=False))
    names = {name for name, _ in testbed.nodes}
    try:
        for command in ("up", "status", "down"):
            before = runs(rc_log)
            r = launcher_on(testbed, config, command, cwd=tmp_path)
            assert r.returncode == 0, f"{command}: {r.stdout}{r.stderr}"
            if command == "status":
                assert r.stdout.count("running") >= len(names), r.stdout
            counted = runs(rc_log) - before
            assert set(counted) <= names and counted, counted  # only nodes' logins, and some
            assert max(counted.values()) == 1, f"{command} read ~/.bashrc more than once on a node: {counted}"
    finally:
        launcher_on(testbed, config, "down", cwd=tmp_path)
