"""The deployment lock, on a real (local) node: taken, refused, and taken over only from a provably dead holder."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from launcher.commands import locking
from launcher.commands.locking import Site
from launcher.config.schema import SSHSettings
from launcher.plan.types import Node
from launcher.runtime import lock
from launcher.transport.host import Options
from launcher.transport.local import LocalHost


@pytest.fixture
def host():
    return LocalHost(Node(0, "local", "127.0.0.1", SSHSettings(), 0), Options())


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def plant(tmp_path, **fields) -> None:
    d = tmp_path / "demo" / "lock"
    d.mkdir(parents=True)
    info = {"who": "alice", "host": "elsewhere", "pid": 1, "command": "launcher up", "since": 0.0, "token": "t0"}
    (d / "info").write_text(json.dumps({**info, **fields}) + "\n")


def test_second_holder_is_refused_then_released(host, tmp_path):
    held = locking.acquire(Site(host, str(tmp_path), "demo"), "launcher up")
    with pytest.raises(locking.Locked) as refused:
        locking.acquire(Site(host, str(tmp_path), "demo"), "launcher down")
    assert "locked by" in str(refused.value) and "launcher up" in str(refused.value)
    locking.release(Site(host, str(tmp_path), "demo"), held)
    locking.release(
        Site(host, str(tmp_path), "demo"), locking.acquire(Site(host, str(tmp_path), "demo"), "launcher down")
    )


def test_dead_holder_on_this_machine_is_taken_over(host, tmp_path, capsys):
    plant(tmp_path, pid=dead_pid(), machine=lock.machine_id(), pidns=lock.pid_namespace(), host="same-machine")
    held = locking.acquire(Site(host, str(tmp_path), "demo"), "launcher up", audit="up started")
    assert "took over the lock of alice@same-machine" in capsys.readouterr().err
    assert json.loads((tmp_path / "demo" / "lock" / "info").read_text())["token"] == held.token
    audit = (tmp_path / "demo" / "audit.log").read_text()
    assert "took over the lock of dead pid" in audit and "up started" in audit


@pytest.mark.parametrize(
    "fields",
    [
        {"machine": "another-machine-id"},  # a dead-looking pid on another machine proves nothing
        {"machine": ""},  # written by an older launcher: no machine id
        {"pidns": "pid:[1]"},  # same machine id, another PID namespace (a container): pids differ there
        {"pidns": ""},  # no PID namespace recorded
        {"alive": True},  # our own live process
    ],
)
def test_other_holders_are_never_taken_over(host, tmp_path, fields):
    here = {"machine": lock.machine_id(), "pidns": lock.pid_namespace()}
    if fields.pop("alive", False):
        fields = {"pid": subprocess.os.getpid(), **here}
    else:
        fields = {**here, **fields, "pid": dead_pid()}
    plant(tmp_path, **fields)
    with pytest.raises(locking.Locked):
        locking.acquire(Site(host, str(tmp_path), "demo"), "launcher up")
    assert json.loads((tmp_path / "demo" / "lock" / "info").read_text())["token"] == "t0"


def test_two_takeovers_at_once_leave_one_holder(host, tmp_path):
    """Both find the same dead holder; the takeover directory lets exactly one of them replace it."""
    import threading

    plant(tmp_path, pid=dead_pid(), machine=lock.machine_id(), pidns=lock.pid_namespace())
    won, lost, barrier = [], [], threading.Barrier(8)

    def contend(n: int) -> None:
        barrier.wait(timeout=10)
        try:
            won.append(locking.acquire(Site(host, str(tmp_path), "demo"), f"launcher up #{n}"))
        except locking.Locked:
            lost.append(n)

    threads = [threading.Thread(target=contend, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert len(won) == 1 and len(lost) == 7, (won, lost)
    assert json.loads((tmp_path / "demo" / "lock" / "info").read_text())["token"] == won[0].token
    assert not (tmp_path / "demo" / "lock" / "takeover").exists()


def test_lock_status_names_a_stale_holder(tmp_path, capsys):
    from tests.helpers import local_command_deployment, run_cli

    path = local_command_deployment(tmp_path, "demo", "worker", "true")
    plant(tmp_path / "state", pid=dead_pid(), machine=lock.machine_id(), pidns=lock.pid_namespace())
    code, out, err = run_cli(["lock", "status", str(path)], capsys)
    assert code == 0 and "locked by alice@elsewhere" in out and "stale: its process on this machine is gone" in out
