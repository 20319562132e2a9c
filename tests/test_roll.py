"""Rolling `up`'s planner (launcher.plan.roll), pure: which replicas roll and in which steps, how wide a
step may be, which roles a change would take down (refused without --allow-downtime), the request
counter a smoke request must move; and the runtimes' hold/restore scripts as text."""

from __future__ import annotations

import pytest

from launcher.config.load import load as load_config
from launcher.plan import reconcile
from launcher.plan import roll as plan_roll
from launcher.plan.build import build as build_plan
from launcher.plan.state import Container
from launcher.runtime.docker import Docker
from launcher.runtime.process import Process
from tests.helpers import write

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
    assert "docker rename rr-decode.1-r0.held rr-decode.1-r0; fi; docker start rr-decode.1-r0" in restore
    assert "docker rm -f 'x;y.held'" in docker.discard_held_script(plan, ["x;y"])
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
