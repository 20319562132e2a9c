"""The deployment lock, on a real (local) node: taken, refused, and taken over only from a provably dead holder."""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys

import pytest

from launcher.config.schema import SSHSettings
from launcher.operations import locking
from launcher.operations.locking import Site
from launcher.plan.types import Node
from launcher.runtime import lock
from launcher.transport.host import Options
from launcher.transport.local import LocalHost
from tests.helpers import fresh_env, local_command_deployment


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


# -- the state directory: this user's alone, or refused ------------------------------------------------------

OTHER_UID = 65534  # nobody: another local user


def foreign(path, mode: int = 0o755, uid: int = OTHER_UID):
    path.mkdir()
    os.chown(path, uid, uid)
    path.chmod(mode)
    return path


@pytest.mark.parametrize(
    "make, why",
    [
        (lambda p: foreign(p), f"owned by nobody (uid {OTHER_UID}), mode 755"),
        (lambda p: foreign(p, 0o777), f"owned by nobody (uid {OTHER_UID}), mode 777"),
        (lambda p: foreign(p, 0o1777, os.getuid()), "mode 1777: writable by group or others"),
        (lambda p: foreign(p, 0o770, os.getuid()), "mode 770: writable by group or others"),
        (lambda p: p.write_text(""), "not a directory"),
    ],
)
def test_a_state_dir_others_own_or_may_write_is_refused(host, tmp_path, make, why):
    state = tmp_path / "state"
    make(state)
    with pytest.raises(locking.UnsafeStateDir) as refused:
        locking.acquire(Site(host, str(state), "demo"), "launcher up", audit="up started")
    assert str(refused.value).startswith(f"state_dir {state} on node 0 (local 127.0.0.1): {why}")
    assert "set state_dir to a directory of your own" in str(refused.value)
    assert not (state / "demo").exists() if state.is_dir() else True  # no lock, no audit line written there


def test_a_link_another_user_owns_is_refused_even_to_a_good_directory(host, tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir(mode=0o700)
    link = tmp_path / "state"
    link.symlink_to(mine)
    os.lchown(link, OTHER_UID, OTHER_UID)  # its owner may point it anywhere, any time
    with pytest.raises(locking.UnsafeStateDir, match="a link owned by nobody"):
        locking.status(Site(host, str(link), "demo"))
    os.lchown(link, os.getuid(), os.getgid())  # this user's own link to this user's own directory: fine
    assert locking.status(Site(host, str(link), "demo")) is None


def test_a_missing_state_dir_is_created_0700_and_an_own_0755_one_is_kept(host, tmp_path):
    state = tmp_path / "new" / "state"
    held = locking.acquire(Site(host, str(state), "demo"), "launcher up", audit="up started")
    assert stat.S_IMODE(state.stat().st_mode) == 0o700 and state.stat().st_uid == os.getuid()
    assert (state / "demo" / "lock" / "info").exists() and "up started" in (state / "demo" / "audit.log").read_text()
    locking.release(Site(host, str(state), "demo"), held)
    older = tmp_path / "older"  # made by an earlier launcher with `mkdir -p`: this user's, nobody else may write
    older.mkdir(mode=0o755)
    locking.release(Site(host, str(older), "demo"), locking.acquire(Site(host, str(older), "demo"), "launcher up"))
    assert stat.S_IMODE(older.stat().st_mode) == 0o755


def fresh(*args: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "launcher", *args], capture_output=True, text=True, timeout=120,
                          cwd=cwd, env=fresh_env())  # fmt: skip


def test_up_and_lock_refuse_a_foreign_state_dir_in_one_line_and_start_nothing(tmp_path):
    marker = tmp_path / "started"
    config = local_command_deployment(tmp_path, "guarded", "svc", f"touch {marker}; exec sleep 300")
    state = foreign(tmp_path / "state", 0o777)
    for command in (["up", str(config)], ["lock", "status", "-c", str(config)], ["down", str(config)]):
        run = fresh(*command, cwd=tmp_path)
        lines = [ln for ln in run.stderr.strip().splitlines() if not re.match(r"\[\d\d:\d\d:\d\d\] ", ln)]
        assert run.returncode == 2 and len(lines) == 1, (command, run.stdout, run.stderr)  # progress lines aside
        assert lines[0].startswith(
            f"error: state_dir {state} on node 0 (local 127.0.0.1): owned by nobody (uid {OTHER_UID}), mode 777"
        )
    assert not marker.exists() and list(state.iterdir()) == []  # nothing started, nothing written there
    state.rmdir()
    run = fresh("lock", "status", "-c", str(config), cwd=tmp_path)  # a fresh one: created 0700, and used
    assert run.returncode == 0 and run.stdout.strip() == "not locked", run.stderr
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
