"""README promises that need real processes, on this machine (process runtime, no SSH, no root).

Most deployments here are the `command` engine running plain shell, so each test takes seconds; two
(SIGTERM during `up`, a service exiting during `up`) start the real local stack of configs/local.yaml
with its ports moved to free ones. Every command runs as a user runs it, a fresh `launcher`
subprocess, except the `watch` timing rules, which run `watch` in-process on a clock the test moves
(the processes it supervises are real).
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from launcher.commands import down
from launcher.commands import watch as watchmod
from launcher.config.load import load as load_config
from launcher.operations import locking
from launcher.operations.locking import Site
from launcher.operations.nodes import start
from launcher.output.progress import Progress
from launcher.plan.build import build as build_plan
from tests.helpers import (
    REPO,
    assert_gone,
    connected_target,
    free_port,
    local_command_deployment,
    local_stack,
)

pytestmark = pytest.mark.slow

LAUNCHER = [sys.executable, "-m", "launcher"]


def user_env(**extra: str) -> dict[str, str]:
    """The environment of a user who set none of the launcher's variables (plus `extra`)."""
    env = {k: v for k, v in os.environ.items() if k not in ("LAUNCHER_CONFIG", "LAUNCHER_INVENTORY")}
    env.update(extra)
    return env


def launcher(*args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 120):
    return subprocess.run(
        [*LAUNCHER, *args], cwd=cwd, env=env or user_env(), capture_output=True, text=True, timeout=timeout
    )


def deployment(tmp_path: Path, name: str, groups: dict[str, str], nodes=None, **top) -> Path:
    """A process-runtime deployment of `command` groups (name -> shell script) on local nodes."""
    path = local_command_deployment(tmp_path, name, "unused", "true")
    data = yaml.safe_load(path.read_text())
    nodes = nodes or [{"name": "local", "address": "127.0.0.1"}]
    data["nodes"] = nodes
    data["groups"] = {
        g: {"engine": "command", "nodes": [0], "args": ["sh", "-c", script]} for g, script in groups.items()
    }
    data.update(top)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def services(path: Path, cwd: Path, env: dict[str, str] | None = None) -> dict[str, dict]:
    """service -> its row of `status --json` (for the process runtime, `id` is the session leader's pid)."""
    r = launcher("status", str(path), "--json", cwd=cwd, env=env)
    assert r.stdout, r.stderr
    return {s["service"]: s for s in json.loads(r.stdout)["services"]}


def wait_for(condition, what: str, timeout: float = 30.0, every: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def kill_session(pid: int) -> None:
    os.killpg(pid, signal.SIGKILL)
    wait_for(lambda: not Path(f"/proc/{pid}").exists(), f"pid {pid} to end", timeout=10, every=0.05)


# -- which deployment a command acts on ----------------------------------------------------------------


def test_config_from_c_then_launcher_config_then_the_last_up_and_its_inventory(tmp_path):
    """README: "Without CONFIG, `status`, `logs`, `exec`, `down` use `-c FILE`, then `$LAUNCHER_CONFIG`,
    then the last `up` run in this directory (`.launcher/last.json`, which also remembers `-i`)"."""
    files = tmp_path / "files"
    files.mkdir()
    work = tmp_path / "work"
    work.mkdir()
    last = deployment(
        files, "remembered", {"worker": "exec sleep 600"}, [{"name": "from-file", "address": "127.0.0.1"}]
    )
    inventory = files / "inventory.yaml"
    inventory.write_text("nodes:\n  - {name: from-inventory, address: 127.0.0.1}\n")
    (files / "env").mkdir()
    (files / "opt").mkdir()
    by_env = deployment(files / "env", "by-env", {"worker": "true"}, [{"name": "from-env", "address": "127.0.0.1"}])
    by_opt = deployment(files / "opt", "by-opt", {"worker": "true"}, [{"name": "from-opt", "address": "127.0.0.1"}])

    up = launcher("up", "-c", str(last), "-i", str(inventory), "--skip-doctor", cwd=work)
    try:
        assert up.returncode == 0, up.stderr

        def node_of(*args: str, **env: str) -> str:
            r = launcher("exec", *args, "--all", "--", "true", cwd=work, env=user_env(**env))
            assert r.returncode == 0, r.stdout + r.stderr
            return r.stdout.splitlines()[0]

        assert node_of() == "== node 0 (from-inventory 127.0.0.1)"  # the last up here, with its -i
        assert node_of(LAUNCHER_CONFIG=str(by_env)) == "== node 0 (from-env 127.0.0.1)"
        assert node_of("-c", str(by_opt), LAUNCHER_CONFIG=str(by_env)) == "== node 0 (from-opt 127.0.0.1)"
        status = launcher("status", cwd=work)
        assert status.returncode == 0 and "0 from-inventory" in status.stdout, status.stdout + status.stderr
    finally:
        down = launcher("down", cwd=work)  # no argument either: the last up
    assert down.returncode == 0 and "removed 1 container(s) of remembered" in down.stdout, down.stdout + down.stderr


TWO_LOCAL_NODES = [{"name": "a", "address": "127.0.0.1"}, {"name": "b", "address": "localhost"}]


def test_node_by_index_name_or_address(tmp_path):
    """README: "`--node` takes the index shown by `plan`/`status`, a node name or an address"."""
    path = deployment(tmp_path, "pick", {"worker": "true"}, TWO_LOCAL_NODES)
    a, b = "node 0 (a 127.0.0.1)", "node 1 (b localhost)"
    for ref, shown in [("1", b), ("b", b), ("localhost", b), ("127.0.0.1", a)]:
        r = launcher("exec", "-c", str(path), "--node", ref, "--", "echo", "picked", cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        assert r.stdout.splitlines() == [f"== {shown}", "picked"], (ref, r.stdout)
    wrong = launcher("exec", "-c", str(path), "--node", "c", "--", "true", cwd=tmp_path)
    assert wrong.returncode == 2 and wrong.stderr.startswith("error: --node: no node 'c'"), wrong.stderr


def most_at_once(events: list[str]) -> int:
    running = peak = 0
    for event in events:
        running += 1 if event == "start" else -1
        peak = max(peak, running)
    return peak


@pytest.mark.parametrize("parallel", [1, 2])
def test_parallel_bounds_the_nodes_worked_on_at_once(tmp_path, parallel):
    """README: "`--parallel N` (nodes worked on at once, default 32)". Each node's command notes when it
    starts, waits (3 s at most) until another node has started too, and notes when it ends."""
    path = deployment(tmp_path, "fanout", {"worker": "true"}, TWO_LOCAL_NODES)
    log = tmp_path / "events"
    script = (
        f"echo start >> {log}; i=0; "
        f'while [ "$(grep -c start {log})" -lt 2 ] && [ $i -lt 30 ]; do sleep 0.1; i=$((i+1)); done; '
        f"echo end >> {log}"
    )
    r = launcher("exec", "-c", str(path), "--all", "--parallel", str(parallel), "--", script, cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    events = log.read_text().split()
    assert sorted(events) == ["end", "end", "start", "start"], events
    assert most_at_once(events) == parallel, events


# -- down, status, lock ------------------------------------------------------------------------------


def test_down_after_a_group_was_removed_from_the_file(tmp_path):
    """README: "`launcher down` removes every container of the deployment on every node, found by label
    (works after the file was edited)"."""
    path = deployment(tmp_path, "edited", {"kept": "exec sleep 600", "dropped": "exec sleep 600"})
    up = launcher("up", str(path), "--skip-doctor", cwd=tmp_path)
    try:
        assert up.returncode == 0, up.stderr
        pids = [int(s["id"]) for s in services(path, tmp_path).values()]
        assert len(pids) == 2
        data = yaml.safe_load(path.read_text())
        del data["groups"]["dropped"]
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        down = launcher("down", str(path), cwd=tmp_path)
        assert down.returncode == 0 and "removed 2 container(s) of edited" in down.stdout, down.stdout + down.stderr
        assert_gone(pids, ())
    finally:
        launcher("down", str(path), cwd=tmp_path)


def test_status_ends_with_a_not_ok_line_naming_what_is_wrong(tmp_path):
    """README (status): "otherwise exit 1 with a `not ok:` line listing what is wrong (`problems` in `--json`)"."""
    path = deployment(tmp_path, "half", {"steady": "exec sleep 600", "brief": "exec sleep 600"})
    up = launcher("up", str(path), "--skip-doctor", cwd=tmp_path)
    try:
        assert up.returncode == 0, up.stderr
        healthy = launcher("status", str(path), cwd=tmp_path)
        assert healthy.returncode == 0 and "not ok" not in healthy.stdout, healthy.stdout + healthy.stderr
        kill_session(int(services(path, tmp_path)["brief-r0"]["id"]))
        text = launcher("status", str(path), cwd=tmp_path)
        as_json = launcher("status", str(path), "--json", cwd=tmp_path)
        assert text.returncode == 1 and as_json.returncode == 1, text.stderr
        problems = json.loads(as_json.stdout)["problems"]
        assert problems == ["brief-r0 on node 0: exited"], problems
        assert text.stdout.strip().splitlines()[-1] == "not ok: brief-r0 on node 0: exited", text.stdout
    finally:
        launcher("down", str(path), cwd=tmp_path)


def test_lock_break_removes_a_live_holders_lock(tmp_path):
    """README: "`launcher lock status|break`: who holds the deployment lock ..., and removing it"."""
    path = deployment(tmp_path, "held", {"worker": "exec sleep 600"})
    p = build_plan(load_config(path, environ={}))
    with connected_target(p) as target:
        # held by this (live) process, as an `up` elsewhere would hold it: never taken over
        held = locking.acquire(Site.of(target), "launcher up somewhere")
    status = launcher("lock", "status", str(path), cwd=tmp_path)
    assert status.returncode == 0 and "locked by" in status.stdout and "launcher up somewhere" in status.stdout
    assert "stale" not in status.stdout, status.stdout
    refused = launcher("up", str(path), "--skip-doctor", cwd=tmp_path)
    assert refused.returncode == 1 and "is locked by" in refused.stderr, refused.stderr
    broken = launcher("lock", "break", str(path), cwd=tmp_path)
    assert broken.returncode == 0, broken.stderr
    assert broken.stdout.startswith("lock removed (was held by") and f"(pid {held.pid})" in broken.stdout
    assert not (tmp_path / "state" / "held" / "lock").exists()
    audit = (tmp_path / "state" / "held" / "audit.log").read_text()
    assert "lock broken (was " in audit and "launcher up somewhere" in audit, audit
    assert launcher("lock", "status", str(path), cwd=tmp_path).stdout.strip() == "not locked"
    again = launcher("lock", "break", str(path), cwd=tmp_path)
    assert again.returncode == 0 and again.stdout.strip() == "no lock was held"
    try:
        up = launcher("up", str(path), "--skip-doctor", cwd=tmp_path)
        assert up.returncode == 0, up.stderr
    finally:
        launcher("down", str(path), cwd=tmp_path)


# -- watch ---------------------------------------------------------------------------------------------


def etcd_kv(port: int, op: str, **fields: str) -> dict:
    """etcd's v3 JSON gateway on loopback: put or range one key (values base64, as the gateway wants)."""
    body = json.dumps({k: base64.b64encode(v.encode()).decode() for k, v in fields.items()}).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{port}/v3/kv/{op}", body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def test_watch_restarts_a_single_service_alone(tmp_path):
    """README (watch): "etcd, NATS, the frontend and the router are restarted alone", in place: etcd keeps
    its data (a new, empty etcd would cost every Dynamo worker its lease, and the workers would exit)."""
    client_port = free_port()
    path = deployment(
        tmp_path,
        "single",
        {"worker": "exec sleep 600"},
        python_env=str(REPO / ".venv"),  # etcd comes from the project's environment
        services={
            "etcd": {"client_port": client_port, "peer_port": free_port()},
            "nats": {"enabled": False},
            "frontend": {"enabled": False},
        },
    )
    up = launcher("up", str(path), "--skip-doctor", cwd=tmp_path)
    watch = None
    try:
        assert up.returncode == 0, up.stderr
        before = services(path, tmp_path)
        assert {k: v["state"] for k, v in before.items()} == {"etcd": "running", "worker-r0": "running"}
        watch = subprocess.Popen(
            [*LAUNCHER, "watch", str(path), "--interval", "0.5", "--backoff", "0.5"],
            cwd=tmp_path,
            env=user_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        etcd_kv(client_port, "put", key="launcher-test", value="kept")
        kill_session(int(before["etcd"]["id"]))

        def etcd_back():
            now = services(path, tmp_path)
            return now if now["etcd"]["state"] == "running" and now["etcd"]["id"] != before["etcd"]["id"] else None

        after = wait_for(etcd_back, "watch to bring etcd back", timeout=60)
        watch.send_signal(signal.SIGINT)
        _, errs = watch.communicate(timeout=30)
        assert after["worker-r0"]["id"] == before["worker-r0"]["id"], "the worker was restarted with etcd"
        assert after["worker-r0"]["state"] == "running"
        assert "restarting etcd (1/5): local etcd exited" in errs, errs
        assert "restarted etcd in place" in errs, errs
        kvs = etcd_kv(client_port, "range", key="launcher-test").get("kvs", [])
        assert [base64.b64decode(kv["value"]).decode() for kv in kvs] == ["kept"], kvs
        assert "restarting group" not in errs and "Traceback" not in errs, errs
    finally:
        if watch is not None and watch.poll() is None:
            watch.kill()
            watch.wait(10)
        launcher("down", str(path), cwd=tmp_path)


class Clock:
    """`watch`'s clock in these tests: `sleep` moves it instead of waiting, and runs `at` hooks."""

    def __init__(self, start: float = 1000.0):
        self.now = start
        self.hooks: list = []  # (time, fn), each run once when the clock reaches it

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds
        for entry in list(self.hooks):
            if self.now >= entry[0]:
                self.hooks.remove(entry)
                entry[1]()


@contextlib.contextmanager
def watch_on_clock(
    monkeypatch, tmp_path: Path, script: str | dict[str, str], name: str = "clocked", environ=None, **top
):
    """(target, clock, log, progress): a deployment watched on a test clock, of one group `worker` running
    SCRIPT (or of the groups SCRIPT maps to their scripts; TOP: the file's other keys, ENVIRON its
    environment); `log` gets (time, line); everything it started is removed at the end."""
    groups = {"worker": script} if isinstance(script, str) else script
    path = deployment(tmp_path, name, groups, **top)
    p = build_plan(load_config(path, environ=environ or {}))
    clock = Clock()
    monkeypatch.setattr(watchmod, "time", clock)
    log: list[tuple[float, str]] = []
    progress = Progress(live=False)
    progress.log = lambda message: log.append((clock.now, message))
    with connected_target(p) as target:
        try:
            yield target, clock, log, progress
        finally:
            down.down(target)


def restarts(log: list[tuple[float, str]]) -> list[tuple[float, str]]:
    return [(t, m.split(")")[0] + ")") for t, m in log if m.startswith("restarting group worker")]


def test_watch_backoff_doubles_between_restarts(monkeypatch, tmp_path):
    """README (watch): "back-off doubles between restarts, and after `--max-restarts` it gives up on the
    group" (a watch of N rounds, as here, then exits 1)."""
    with (
        watch_on_clock(monkeypatch, tmp_path, "exit 3") as (target, clock, log, progress),
        pytest.raises(watchmod.GaveUp) as gave_up,
    ):
        watchmod.watch(target, progress, interval=1, max_restarts=4, backoff=10, rounds=80)
    assert restarts(log) == [
        (1000, "restarting group worker (1/4)"),
        (1010, "restarting group worker (2/4)"),
        (1030, "restarting group worker (3/4)"),
        (1070, "restarting group worker (4/4)"),
    ], log
    assert "it gave up on group worker (after 4 restart(s))" in str(gave_up.value)


def test_watch_restart_count_starts_afresh_after_reset_after_healthy_seconds(monkeypatch, tmp_path):
    """README (watch): "a unit healthy for `--reset-after` seconds ... starts counting afresh"."""
    marker = tmp_path / "started-once"
    script = f"if [ -e {marker} ]; then exec sleep 600; fi; touch {marker}; exit 3"
    run_dir = tmp_path / "state" / "clocked" / "run" / os.uname().nodename / "clocked-worker-r0"

    def kill_worker():
        kill_session(int((run_dir / "pid").read_text()))

    with watch_on_clock(monkeypatch, tmp_path, script) as (target, clock, log, progress):
        first_restart: list[float] = []
        record = progress.log

        def log_and_schedule(message: str) -> None:
            # Times are relative to the first restart: on a loaded machine the first run may still be
            # seen alive for a few rounds, and each round moves the test clock one second.
            record(message)
            if message.startswith("restarting group worker") and not first_restart:
                first_restart.append(clock.now)
                clock.hooks.append((clock.now + 45, kill_worker))  # healthy long enough by then

        progress.log = log_and_schedule
        start(target, target.plan.services, progress)  # the first run exits at once
        wait_for(lambda: marker.exists(), "the first run")
        watchmod.watch(target, progress, interval=1, max_restarts=5, backoff=1, reset_after=30, rounds=120)
    assert first_restart, log
    first = first_restart[0]
    resets = [t for t, m in log if m == "group worker: healthy for 30s, restart count reset"]
    # The first round more than 30 s after each restart (the second one's only if the rounds reach it).
    assert resets in ([first + 31], [first + 31, first + 45 + 31]), log
    assert restarts(log) == [(first, "restarting group worker (1/5)"), (first + 45, "restarting group worker (1/5)")], (
        log
    )


def test_watch_waits_a_round_while_an_up_holds_the_lock(monkeypatch, tmp_path):
    """README (watch): "an `up` in progress makes it wait a round" — and that round counts no restart."""
    with watch_on_clock(monkeypatch, tmp_path, "exit 3") as (target, clock, log, progress):
        site = Site.of(target)
        held = locking.acquire(site, "launcher up configs/x.yaml")
        clock.hooks.append((1003, lambda: locking.release(site, held)))
        with pytest.raises(watchmod.GaveUp):
            watchmod.watch(target, progress, interval=1, max_restarts=1, backoff=1, rounds=20)
    waited = [t for t, m in log if m.startswith("group worker: not restarted now: deployment clocked is locked by")]
    assert waited == [1000, 1001, 1002], log
    assert all("launcher up configs/x.yaml" in m for t, m in log if t in waited and "not restarted" in m)
    assert restarts(log) == [(1003, "restarting group worker (1/1)")], log


# -- interrupting `up`, and a service exiting while it waits (the real local stack) ----------------


def stuck_local_stack(tmp_path: Path, name: str, extra_groups: dict | None = None) -> tuple[Path, dict[str, str]]:
    """configs/local.yaml with every port moved to a free one, and a decode mocker that never finds etcd:
    it runs but never registers, so `up` keeps waiting (deterministically)."""
    data, _ = local_stack(tmp_path, name)
    data["groups"]["decode"]["env"] = {"ETCD_ENDPOINTS": "http://127.0.0.1:9"}
    data["groups"].update(extra_groups or {})
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path, user_env(LAUNCHER_PORT=str(free_port()))


def test_sigterm_during_up_stops_it_like_ctrl_c(tmp_path):
    """README (up): "Ctrl-C (or SIGTERM) stops it cleanly: ... lists what it started and left running, ...
    releases the lock and says how to remove everything; no traceback"."""
    path, env = stuck_local_stack(tmp_path, "sigterm")
    proc = subprocess.Popen(
        [*LAUNCHER, "up", str(path), "--skip-doctor"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        decode = tmp_path / "state" / "sigterm" / "run" / os.uname().nodename / "sigterm-decode-r0" / "pid"
        wait_for(decode.exists, "up to start the decode worker", timeout=90)
        assert proc.poll() is None, "up ended before it was interrupted"
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 130, out + err
        assert "Traceback" not in err
        assert "interrupted: up stopped. Started so far and left running:" in err, err
        assert "sigterm-etcd on node 0" in err and f"`launcher down -c {path}`" in err, err
        assert not (tmp_path / "state" / "sigterm" / "lock").exists(), "the lock was left behind"
        audit = (tmp_path / "state" / "sigterm" / "audit.log").read_text().splitlines()
        assert json.loads(audit[-1])["action"] == "up failed", audit
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        down = launcher("down", str(path), cwd=tmp_path, env=env)
    assert down.returncode == 0, down.stderr


def test_a_service_exiting_during_up_shows_its_last_40_lines_and_the_rest_stay_up(tmp_path):
    """README (up): "If any container exits while it waits, it stops within seconds and prints that node,
    role, rank, exit code and last 40 log lines (exit 1; the rest stay up for inspection)"."""
    crash = {
        "engine": "command",
        "nodes": ["local"],
        "args": ["sh", "-c", 'for i in $(seq 1 60); do echo "crash line $i"; done; sleep 3; exit 7'],
    }
    path, env = stuck_local_stack(tmp_path, "crashing", {"crash": crash})
    up = launcher("up", str(path), "--skip-doctor", cwd=tmp_path, env=env, timeout=180)
    try:
        assert up.returncode == 1, up.stdout + up.stderr
        err = up.stderr
        assert "Traceback" not in err
        assert "crash rank 0 of group crash on node 0 (local 127.0.0.1) exited with exit code 7" in err, err
        shown = err.split("--- last 40 log lines of crashing-crash-r0 ---\n", 1)[1].split("\n---\n", 1)[0]
        assert shown.splitlines() == [f"crash line {i}" for i in range(21, 61)], shown
        assert "The other containers are left running for inspection" in err
        rows = services(path, tmp_path, env)
        still = {name for name, row in rows.items() if row["state"] == "running"}
        assert still == {"etcd", "nats", "frontend", "prefill-r0", "decode-r0"}, rows
        assert rows["crash-r0"]["state"] == "exited"
        assert not (tmp_path / "state" / "crashing" / "lock").exists()
    finally:
        down = launcher("down", str(path), cwd=tmp_path, env=env)
    assert down.returncode == 0, down.stderr
