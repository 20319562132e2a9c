"""Rolling `up`'s planner (launcher.plan.roll), pure: which replicas roll and in which steps, how wide a
step may be, which roles a change would take down (refused without --allow-downtime), the request
counter a smoke request must move; and the runtimes' hold/restore scripts as text."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from launcher.config.load import load as load_config
from launcher.plan import reconcile
from launcher.plan import roll as plan_roll
from launcher.plan.build import build as build_plan
from launcher.plan.state import Container
from launcher.runtime.docker import Docker
from launcher.runtime.process import Process
from tests.helpers import connected_target, free_port, local_command_deployment, write

FILE = """\
deployment: rr
image: example/image:1
gpus_per_node: 8
model: {path: /models/x, name: x}
nodes:
  - {address: 10.9.0.1}
  - {address: 10.9.0.2}
  - {address: 10.9.0.3}
  - {address: 10.9.0.4}
  - {address: 10.9.0.5}
groups:
  prefill: {engine: mocker, mode: prefill, nodes: 1, replicas: PREFILL, args: {speedup-ratio: SPEED}}
  decode: {engine: mocker, mode: decode, nodes: 1, replicas: DECODE, args: {speedup-ratio: SPEED}}
"""


def plan_of(tmp_path, prefill: int = 1, decode: int = 3, speed: int = 1, name: str = "a.yaml"):
    text = FILE.replace("PREFILL", str(prefill)).replace("DECODE", str(decode)).replace("SPEED", str(speed))
    return build_plan(load_config(write(tmp_path, text, name)))


def running(plan, state: str = "running") -> list[Container]:
    """What the nodes would list with `plan` deployed: every service running with its spec hash."""
    return [
        Container(s.node.index, s.name, s.name, plan.labels(s), state, 0 if state == "running" else 1)
        for s in plan.services
    ]


def roll_of(old, new, max_unavailable: int = 1, state: str = "running"):
    current = running(old, state)
    changes = reconcile.compute(new, current)
    groups = plan_roll.rollable(new, changes, current)
    return changes, groups, plan_roll.steps(new, groups, max_unavailable), current


def test_a_changed_decode_group_of_three_rolls_one_replica_at_a_time_and_nothing_else(tmp_path):
    old, new = plan_of(tmp_path), plan_of(tmp_path, speed=2, name="b.yaml")
    changes, groups, steps, current = roll_of(old, new)
    # Prefill (one replica) changed too: it is not rolled (and is downtime, see below).
    assert [s.units for s in steps] == [["decode"], ["decode.1"], ["decode.2"]]
    assert [s.base for s in steps] == ["decode"] * 3
    assert [x.service for x in steps[1].services] == ["decode.1-r0"]
    assert plan_roll.downtime(new, changes, current, groups) == ["prefill"]
    roll = plan_roll.Roll(steps)
    plan_roll.split(new, changes, roll)
    # What the roll replaces is no longer created or removed up front; prefill still is.
    assert sorted(s.service for s in changes.create) == ["prefill-r0"]
    assert sorted(c.name for c in changes.remove) == ["rr-prefill-r0"]
    assert changes.rolled == ["decode", "decode.1", "decode.2"] and not changes.unchanged
    assert roll.describe() == [
        "will roll decode: 3 replica(s) (decode, decode.1, decode.2) in 3 step(s), each drained, replaced and"
        " proven by a smoke request before the next"
    ]


@pytest.mark.parametrize(("widest", "expected"), [(2, [["decode", "decode.1"], ["decode.2"]]), (9, None)])
def test_max_unavailable_widens_a_step_but_never_to_the_whole_group(tmp_path, widest, expected):
    old, new = plan_of(tmp_path), plan_of(tmp_path, speed=2, name="b.yaml")
    _, _, steps, _ = roll_of(old, new, widest)
    # 9 of 3 replicas: capped at 2, one always serves.
    assert [s.units for s in steps] == (expected or [["decode", "decode.1"], ["decode.2"]])


def test_a_single_running_replica_whose_spec_changed_is_downtime_and_not_rolled(tmp_path):
    old, new = plan_of(tmp_path, decode=1), plan_of(tmp_path, decode=1, speed=2, name="b.yaml")
    changes, groups, steps, current = roll_of(old, new)
    assert groups == [] and steps == []
    assert plan_roll.downtime(new, changes, current, groups) == ["decode", "prefill"]


def test_two_prefill_and_two_decode_replicas_roll_group_by_group_with_no_downtime(tmp_path):
    old = plan_of(tmp_path, prefill=2, decode=2)
    new = plan_of(tmp_path, prefill=2, decode=2, speed=2, name="b.yaml")
    changes, groups, steps, current = roll_of(old, new)
    assert [s.units for s in steps] == [["prefill"], ["prefill.1"], ["decode"], ["decode.1"]]
    assert plan_roll.downtime(new, changes, current, groups) == []


def test_new_or_exited_replicas_are_started_not_rolled_and_are_no_downtime(tmp_path):
    new = plan_of(tmp_path, decode=1, speed=2)
    # Nothing runs yet: everything is new.
    changes = reconcile.compute(new, [])
    assert plan_roll.rollable(new, changes, []) == [] and plan_roll.downtime(new, changes, [], []) == []
    # Exited containers of the old spec: a repair, not a change of what serves.
    changes, groups, steps, current = roll_of(plan_of(tmp_path, decode=1, name="b.yaml"), new, state="exited")
    assert steps == [] and plan_roll.downtime(new, changes, current, groups) == []
    # An unchanged deployment: nothing at all.
    changes, groups, steps, current = roll_of(new, new)
    assert steps == [] and plan_roll.downtime(new, changes, current, groups) == [] and changes.unchanged


def test_the_request_counter_is_read_within_bounds():
    text = (
        "# TYPE dynamo_component_requests_total counter\n"
        'dynamo_component_requests_total{dynamo_endpoint="generate",x="1"} 5\n'
        'dynamo_component_requests_total{dynamo_endpoint="clear_kv_blocks"} 7\n'
    )
    assert plan_roll.worker_requests(text) == 5
    assert plan_roll.worker_requests("sglang:num_requests_total 3\n") == 3
    for bad in ("", 'dynamo_component_requests_total{dynamo_endpoint="generate"} -1\n', "x" * (5 << 20)):
        with pytest.raises(ValueError):
            plan_roll.worker_requests(bad)


def test_hold_and_restore_scripts_quote_and_keep_the_old_service(tmp_path):
    plan = plan_of(tmp_path)
    docker, process = Docker(), Process()
    assert "docker rename rr-decode.1-r0 rr-decode.1-r0.held" in docker.hold_script(plan, ["rr-decode.1-r0"])
    restore = docker.restore_script(plan, ["rr-decode.1-r0"])
    assert "docker rename rr-decode.1-r0.held rr-decode.1-r0; if [ -f" in restore
    assert "; fi; fi; docker start rr-decode.1-r0" in restore
    assert "docker rm -f 'x;y.held' >" in docker.discard_held_script(plan, ["x;y"])
    held = process.hold_script(plan, ["rr-decode-r0"])
    assert 'stop_svc "$RUN"/rr-decode-r0; mv "$RUN"/rr-decode-r0 "$RUN"/rr-decode-r0.held' in held
    assert 'eval "$(cat ../cmd)"' in process.restore_script(plan, ["rr-decode-r0"])
    # The command is recorded at start, for a rollback to run it again.
    script, _ = process.start_script(plan, [plan.services[-1]])
    assert "/cmd" in script and "dynamo.mocker" in script


def test_plan_says_which_groups_roll(tmp_path):
    from launcher.output import plan_views

    text = plan_views.to_text(plan_of(tmp_path, prefill=1, decode=2))
    assert (
        "rolling: a change to decode rolls, one replica at a time drained, replaced and proven by a smoke request,"
        " rolled back if it fails (`up --max-unavailable K` widens a step)"
    ) in text
    assert "rolling:" not in plan_views.to_text(plan_of(tmp_path, decode=1, name="b.yaml"))


def rm_plan(tmp_path, speed: int, name: str, options: str = "[--rm]"):
    text = FILE.replace("PREFILL", "1").replace("DECODE", "2").replace("SPEED", str(speed))
    text = text.replace("mode: decode,", f"mode: decode, container: {{run_options: {options}}},")
    return build_plan(load_config(write(tmp_path, text, name)))


def refusal(plan, changes, current) -> str:
    from launcher.operations import roll as rolling
    from launcher.operations.context import Target
    from launcher.output.progress import Progress
    from launcher.runtime import for_plan

    t = Target(Path(plan.file), None, plan, for_plan(plan))
    with pytest.raises(rolling.DowntimeRefused) as refused:
        rolling.prepare(t, Progress(live=False), changes, current, False, 1)
    return str(refused.value)


def test_a_group_run_with_rm_or_without_a_recorded_command_cannot_roll_and_is_downtime(tmp_path):
    # --rm: `docker stop` removes the container, the hold's rename has nothing left, the rollback nothing
    # to start: such a group is recreated at once, refused before anything is drained.
    old, new = rm_plan(tmp_path, 1, "a.yaml"), rm_plan(tmp_path, 2, "b.yaml")
    current = running(old)
    changes = reconcile.compute(new, current)
    assert plan_roll.rollable(new, changes, current) == []
    assert "decode" in plan_roll.downtime(new, changes, current, [])
    text = refusal(new, changes, current)
    assert "role decode, prefill would be unavailable during its restart (cannot roll: group decode's" in text
    assert "containers run with --rm (a stopped one is removed: nothing to roll back to)" in text
    assert text.endswith("pass --allow-downtime to restart it anyway, or give its group `replicas: 2` to roll it")
    # The same plan without --rm rolls decode (the running containers can be held).
    old, new = rm_plan(tmp_path, 1, "c.yaml", "[]"), rm_plan(tmp_path, 2, "d.yaml", "[]")
    current = running(old)
    changes = reconcile.compute(new, current)
    assert [g.name for g in plan_roll.rollable(new, changes, current)] == ["decode", "decode.1"]
    # A container the node lists as auto-removed (started with --rm by an older file) cannot be held either.
    # One replica's: that one is recreated at once (the other serves meanwhile), the other rolls.
    current[-1].holdable = False
    assert [g.name for g in plan_roll.rollable(new, changes, current)] == ["decode"]
    assert plan_roll.downtime(new, changes, current, plan_roll.rollable(new, changes, current)) == ["prefill"]
    for c in current:
        c.holdable = c.role != "decode"
    assert plan_roll.rollable(new, changes, current) == []
    assert "run with --rm" in plan_roll.blocked(new, changes, current)["decode"]
    from launcher.output import plan_views

    assert (
        "rolling: none: group decode's containers run with --rm (a stopped one is removed: nothing to roll back to);"
        " a change recreates it at once"
    ) in plan_views.to_text(rm_plan(tmp_path, 2, "e.yaml"))
    # The process runtime: a run directory with no recorded command (an older launcher's) has nothing to restart.
    new.runtime = "process"
    assert "record no command to start again" in plan_roll.blocked(new, changes, current)["decode"]


def test_the_listing_says_whether_a_service_can_be_held(tmp_path):
    from launcher.runtime.base import parse_list

    inspect = '[{"Name": "/a", "State": {"Status": "running"}, "HostConfig": {"AutoRemove": true}}, {"Name": "/b"}]'
    assert [c.holdable for c in parse_list(0, inspect)] == [False, True]
    # The process runtime's listing, run for real over a run directory with and without `cmd`.
    plan = plan_of(tmp_path)
    plan.state_dir = str(tmp_path / "state")
    host = subprocess.run(["uname", "-n"], capture_output=True, text=True, check=True).stdout.strip()
    run = tmp_path / "state" / plan.deployment / "run" / host
    for name in ("old", "new"):
        (run / name).mkdir(parents=True)
        (run / name / "labels.json").write_text('{"launcher.deployment": "rr"}')
    (run / "new" / "cmd").write_text("sleep 1")
    (tmp_path / "state").chmod(0o700)
    out = subprocess.run(["bash", "-c", Process().list_script(plan)], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert {c.name: c.holdable for c in parse_list(0, out.stdout)} == {"old": False, "new": True}


def test_the_hold_keeps_the_secrets_of_the_held_container(tmp_path):
    plan, docker = plan_of(tmp_path), Docker()
    secrets = f"/var/tmp/launcher/{plan.deployment}/secrets"
    plan.state_dir = "/var/tmp/launcher"
    hold = docker.hold_script(plan, ["x;y"])
    assert f"docker rename 'x;y' 'x;y.held'; if [ -f '{secrets}/x;y.env' ]; then cp -p '{secrets}/x;y.env'" in hold
    assert f"'{secrets}/x;y.held.env'; fi; fi" in hold
    restore = docker.restore_script(plan, ["x;y"])
    assert f"docker rename 'x;y.held' 'x;y'; if [ -f '{secrets}/x;y.held.env' ]; then mv -f" in restore
    assert f"mv -f '{secrets}/x;y.held.env' '{secrets}/x;y.env'; fi; fi; docker start 'x;y'" in restore
    assert docker.discard_held_script(plan, ["x;y"]).endswith(f"rm -f '{secrets}/x;y.held.env'")


def test_a_held_copy_is_never_an_orphan_and_up_says_what_it_does_with_it(tmp_path):
    old, new = plan_of(tmp_path, decode=2), plan_of(tmp_path, decode=2, speed=2, name="b.yaml")
    current = running(new)
    held_copy = next(c for c in running(old) if c.name == "rr-decode.1-r0")
    held_copy.name, held_copy.state = "rr-decode.1-r0.held", "exited"
    current.append(held_copy)
    assert reconcile.compute(new, current).unchanged  # not removed as an orphan
    (removed,) = reconcile.held(new, current)
    assert removed.describe() == (
        "removing rr-decode.1-r0.held on node 2 (previous spec of rr-decode.1-r0): rr-decode.1-r0 runs the current spec"
    )
    # The base gone (a failed rollback): the held copy is the last good one, restored.
    without = [c for c in current if c.name != "rr-decode.1-r0"]
    (restored,) = reconcile.held(new, without)
    assert restored.action == "restore" and "rr-decode.1-r0 is absent: its previous spec is started again" in (
        restored.describe()
    )
    exited = [c if c.name != "rr-decode.1-r0" else Container(2, "x", c.name, c.labels, "exited", 1) for c in current]
    assert reconcile.held(new, exited)[0].why == "rr-decode.1-r0 is exited (exit 1): its previous spec is started again"
    # The base runs another spec than the plan's: the held copy is kept, said.
    assert reconcile.held(plan_of(tmp_path, decode=2, speed=3, name="c.yaml"), current)[0].action == "keep"
    # Its service no longer planned (scaled in): removed, said.
    assert reconcile.held(plan_of(tmp_path, decode=1, speed=2, name="d.yaml"), current)[0].why == (
        "rr-decode.1-r0 is no longer in the plan"
    )


def test_no_wait_still_waits_before_a_roll():
    from launcher.commands.up import waits_before_roll

    assert waits_before_roll(reconcile.Changes(rolled=["decode"]), wait=False)
    assert not waits_before_roll(reconcile.Changes(rolled=["decode"]), wait=True)
    assert not waits_before_roll(reconcile.Changes(), wait=False)


class Flood:
    """A hostile peer on loopback where the frontend would be: it answers every request with a 200 whose body
    never ends (up to FLOOD_BYTES, then it closes): an answer the launcher must cut off, not read whole."""

    FLOOD_BYTES = 64 << 20

    def __init__(self, port: int, expected: int):
        self.expected = expected
        self.server = socket.create_server(("127.0.0.1", port))
        self.server.settimeout(30)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.sent: list[int] = []

    def _serve(self) -> None:
        for _ in range(self.expected):  # bounded: as many requests as the test sends
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            with conn:
                conn.recv(65536)
                sent = 0
                try:
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n")
                    while sent < self.FLOOD_BYTES:
                        conn.sendall(b"x" * 65536)
                        sent += 65536
                except OSError:
                    pass
                self.sent.append(sent)

    def __enter__(self) -> Flood:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.close()
        self.thread.join(30)


def frontend_plan(tmp_path, port: int):
    import yaml

    data = {
        "deployment": "sm",
        "runtime": "process",
        "state_dir": str(tmp_path / "state"),
        "gpus_per_node": 0,
        "nodes": [{"name": "local", "address": "127.0.0.1"}],
        "model": {"path": "/models/x", "name": "x"},
        "services": {"frontend": {"port": port}},
        "groups": {"decode": {"engine": "mocker", "mode": "decode", "nodes": ["local"], "replicas": 2}},
    }
    (tmp_path / "sm.yaml").write_text(yaml.safe_dump(data))
    return build_plan(load_config(tmp_path / "sm.yaml", environ={}))


def test_the_smoke_requests_read_at_most_a_mebibyte_of_an_answer(tmp_path, monkeypatch):
    from launcher.commands import up
    from launcher.operations import roll as rolling
    from launcher.operations.waiter import ServiceFailed

    port = free_port()
    plan = frontend_plan(tmp_path, port)
    monkeypatch.setattr(rolling, "SMOKE_ATTEMPTS", 1)  # one flooded answer is the case
    step = plan_roll.Step("decode", ["decode"], [s for s in plan.services if s.group == "decode"])
    with Flood(port, expected=2) as flood, connected_target(plan) as t:
        with pytest.raises(ServiceFailed) as rolled:
            rolling.smoke(t, step)
        with pytest.raises(ServiceFailed) as upped:
            up.smoke_test(t, attempts=1)
    over = f"the answer of 127.0.0.1:{port}/v1/chat/completions is over 1048576 bytes"
    assert f"no smoke request reached decode in 1 tries (last: {over})" in str(rolled.value)
    assert f"a chat completion through {plan.endpoint} answered {over}" in str(upped.value)
    assert all(sent < flood.FLOOD_BYTES for sent in flood.sent), flood.sent  # cut off, not read to the end


def test_a_roll_step_failing_after_the_hold_is_rolled_back_whatever_the_error(tmp_path):
    """Not only a failed replica: here the node's listing is unreadable once the old replica is held (a
    ListingError from `start`, which escaped before with the old replica held and nothing restored)."""
    from launcher.commands import down
    from launcher.operations import roll as rolling
    from launcher.operations.nodes import list_services, start
    from launcher.output.progress import Progress

    path = local_command_deployment(tmp_path, "rf", "serve", "exec sleep 600", replicas=2, timeout=2)
    plan = build_plan(load_config(path, environ={}))
    step = plan_roll.Step("serve", ["serve"], [s for s in plan.services if s.group == "serve"])
    host = subprocess.run(["uname", "-n"], capture_output=True, text=True, check=True).stdout.strip()
    run = tmp_path / "state" / "rf" / "run" / host
    with connected_target(plan) as t:
        try:
            start(t, plan.services, Progress(live=False))
            pid = (run / "rf-serve-r0" / "pid").read_text()
            (run / "junk").mkdir()
            (run / "junk" / "labels.json").write_text("[")  # the listing's JSON broken from now on
            with pytest.raises(rolling.RollFailed) as failed:
                rolling.replace(t, Progress(live=False), step, [], ["serve.1"], True, set())
            (run / "junk" / "labels.json").unlink()
            (run / "junk").rmdir()
            text = str(failed.value)
            assert text.startswith("rolling up failed on replica serve: node 0: unreadable service list"), text
            assert "On the new spec: none. On the previous spec: serve.1 (not reached)." in text, text
            found, _ = list_services(t)
            assert found[(0, "rf-serve-r0")].running and (0, "rf-serve-r0.held") not in found, found
            assert (run / "rf-serve-r0" / "pid").read_text() != pid  # the held copy started again
        finally:
            down.down(t)


def test_ctrl_c_once_the_new_replica_proved_itself_leaves_the_held_copy_and_rolls_nothing_back(tmp_path):
    """Ctrl-C while the proven step's held copy is removed (a copy slow to stop: it ignores SIGTERM): the
    step is done, `Replaced` names what is left; before, `run` rolled the proven replica back."""
    from launcher.commands import down
    from launcher.operations import roll as rolling
    from launcher.operations.nodes import list_services, start
    from launcher.output.progress import Progress

    path = local_command_deployment(tmp_path, "rc", "serve", "trap '' TERM; exec sleep 600", replicas=2)
    plan = build_plan(load_config(path, environ={}))
    step = plan_roll.Step("serve", ["serve"], [s for s in plan.services if s.group == "serve"])
    host = subprocess.run(["uname", "-n"], capture_output=True, text=True, check=True).stdout.strip()
    run = tmp_path / "state" / "rc" / "run" / host
    removing = threading.Event()

    def interrupt(signum, frame):  # a Ctrl-C that only counts while the copy is being removed
        if removing.is_set():
            raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, interrupt)
    timer = threading.Timer(0.5, lambda: os.kill(os.getpid(), signal.SIGINT))
    with connected_target(plan) as t:
        try:
            start(t, plan.services, Progress(live=False))
            (run / "rc-serve-r0").rename(run / "rc-serve-r0.held")  # the old copy, still running, as held
            start(t, step.services, Progress(live=False))  # the new replica, proven (say)
            removing.set()
            timer.start()
            with pytest.raises(rolling.Replaced) as replaced:
                rolling.finish(t, Progress(live=False), step, time.monotonic(), "1 smoke request(s)")
            removing.clear()
            assert replaced.value.left == "its previous copy is left: rc-serve-r0.held on node 0"
            found, _ = list_services(t)
            assert found[(0, "rc-serve-r0")].running  # the new replica kept
        finally:
            removing.clear()
            timer.cancel()
            signal.signal(signal.SIGINT, previous)
            down.down(t, now=True)


def unit(name: str, state: str, spec: str = "new", running: tuple[str, ...] = ("old",)) -> dict:
    """A replica as `status` lists it (its group: the name before the dot)."""
    running_spec = [spec] if state == "current" else [] if state == "missing" else list(running)
    return {"name": name, "group": name.split(".")[0], "spec": spec, "running_spec": running_spec, "state": state}


def test_status_finds_no_roll_where_every_replica_runs_one_spec():
    assert plan_roll.in_progress([unit("decode", "current"), unit("decode.1", "current")], {}) == []
    # every replica outdated: the file was edited, `up` not run yet; a replica missing is not a roll either
    assert plan_roll.in_progress([unit("decode", "outdated"), unit("decode.1", "outdated")], {}) == []
    assert plan_roll.in_progress([unit("decode", "current"), unit("decode.1", "missing")], {}) == []


def test_status_names_a_roll_stopped_between_steps_and_that_up_finishes_it():
    rolls = plan_roll.in_progress(
        [unit("prefill", "current"), unit("decode", "current"), unit("decode.1", "outdated")], {}
    )
    assert [(r["group"], r["current"], r["outdated"], r["replacing"], r["next"]) for r in rolls] == [
        ("decode", ["decode"], ["decode.1"], [], "finish")
    ]
    assert rolls[0]["says"] == (
        "roll in progress: decode: replicas on two specs. `launcher up` will roll decode.1 to the plan's spec"
    )


@pytest.mark.parametrize(
    ("state", "action", "says"),
    [
        (
            "current",
            "finish",
            "`launcher up` will remove the held copy of decode, then roll decode.1 to the plan's spec",
        ),
        (
            "missing",
            "roll back",
            "`launcher up` will roll back decode (start the held copy again), then roll decode, decode.1 to the plan's"
            " spec",
        ),
        ("partial", "roll back", "`launcher up` will roll back decode (start the held copy again), then roll decode,"),
        (
            "outdated",
            "keep",
            "`launcher up` will keep the held copy of decode (`launcher down` removes it), then roll decode, decode.1",
        ),
    ],
)
def test_status_names_the_replica_a_held_copy_belongs_to_and_what_up_does_with_it(state, action, says):
    """A held copy (`decode`'s, of spec `old`): `up` removes it when decode runs the plan's spec, starts it
    again when decode does not run (or runs in part), keeps it when decode runs yet another spec."""
    rolls = plan_roll.in_progress(
        [unit("decode", state, running=("other",)), unit("decode.1", "outdated")], {"decode": ["old", "old"]}
    )
    assert len(rolls) == 1 and rolls[0]["next"] == ("roll back" if action == "roll back" else "finish"), rolls
    [replacing] = rolls[0]["replacing"]
    assert (replacing["replica"], replacing["from_spec"], replacing["to_spec"], replacing["next"]) == (
        "decode",
        ["old"],
        "new",
        action,
    )
    assert rolls[0]["says"].startswith(f"roll in progress: decode: replacing decode (spec old -> new, {state}).")
    assert says in rolls[0]["says"], rolls[0]["says"]


def test_a_spec_label_a_node_sends_never_reaches_the_terminal_as_control_codes(tmp_path):
    """`status`'s roll and replica lines quote the group-spec labels the nodes list (a held copy's, an
    outdated replica's): a hostile node's label holding escape sequences is shown printable."""
    from datetime import UTC, datetime
    from types import SimpleNamespace

    from launcher.operations.service_status import _row, replica_line, replicas_of, rolls_of
    from launcher.plan.state import held_name

    plan = plan_of(tmp_path, decode=2)
    hostile = "\x1b]0;owned\x07\x1b[2Jold"
    now = datetime.now(UTC)
    rows = []
    for c in running(plan):
        if c.labels.get("launcher.group") == "decode":  # decode.0 runs the plan's spec, its held copy beside it
            labels = {**c.labels, "launcher.group-spec": hostile}
            held = Container(c.node_index, "h", held_name(c.name), labels, "exited", 0)
            rows.append(_row(plan.nodes[c.node_index], c.service, c.role, c.group, c.rank, "held (x)", held, now, "-"))
        if c.labels.get("launcher.group") == "decode.1":
            c = Container(c.node_index, c.id, c.name, {**c.labels, "launcher.group-spec": hostile}, "running", 0)
        rows.append(_row(plan.nodes[c.node_index], c.service, c.role, c.group, c.rank, "running", c, now, "ok"))
    t = SimpleNamespace(plan=plan)
    [roll] = rolls_of(t, rows)
    lines = [roll["says"], *(replica_line(r) for r in replicas_of(t, rows))]
    assert "replacing decode (spec ?]0;owned??[2Jold -> " in roll["says"], roll["says"]
    assert any("running ?]0;owned??[2Jold" in line for line in lines), lines
    assert all(line.isprintable() for line in lines), lines
