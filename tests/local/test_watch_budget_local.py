"""A group that always fails, watched on a test clock (the processes are real, `watch` runs in-process as
in test_promises_local.py's timing tests): the file's restart budget (`watch: {max_restarts, within,
backoff}`) stops the loop, each decision is one line, and the alert reaches the audit log and the webhook
the file names (a receiver on loopback: the user's endpoint) once, without its URL ever being printed.
Giving up on one group stops supervising it alone: another group killed afterwards is still restarted.
And a rank whose `/metrics` sends garbage (a hostile peer on loopback) is "no data" in one line, never a
restart."""

from __future__ import annotations

import os
import shlex

import pytest
import yaml

from launcher.commands import down
from launcher.commands import watch as watchmod
from launcher.config.load import load as load_config
from launcher.operations.nodes import start
from launcher.output.progress import Progress
from launcher.plan.build import build as build_plan
from tests.helpers import connected_target, free_port, listening, wait_for
from tests.local.test_promises_local import Clock, deployment, kill_session, watch_on_clock
from tests.pure.test_watch_policy import Receiver

pytestmark = pytest.mark.slow


def test_a_group_that_always_fails_spends_its_budget_and_the_webhook_gets_one_alert(monkeypatch, tmp_path):
    receiver = Receiver()
    policy = {"webhook_url_env": "HOOK", "max_restarts": 3, "within": 1, "backoff": 4}
    try:
        clocked = watch_on_clock(
            monkeypatch, tmp_path, "exit 3", "budget", {"HOOK": receiver.url}, secrets=["HOOK"], watch=policy
        )
        with clocked as (target, clock, log, progress), pytest.raises(watchmod.GaveUp) as gave_up:
            watchmod.watch(target, progress, interval=1, rounds=30)  # rounds past the give-up (at 1013): said once
    finally:
        receiver.shutdown()
    decisions = [(t, m) for t, m in log if m.startswith("group worker: saw")]
    saw = "group worker: saw local worker r0 exited (exit 3); "
    assert [t for t, m in decisions if "restarted it" in m] == [1000, 1004, 1012], log  # back-off 4, 8
    first = "group worker: saw local worker r0 is gone; restarted it (1/3, back-off 4s before another); "
    assert decisions[0][1].startswith(first), decisions  # never started: watch starts it
    assert decisions[-1] == (1013, saw + "gave up after 3 restart(s) in 1 min; alerted: audit log, webhook (HOOK)"
                             " answered HTTP 204; restarted no more (`launcher up` recreates it if it died; a hung or"
                             " unhealthy one: `launcher down`, then `up`), the rest still"
                             " watched"), decisions  # fmt: skip
    assert not [m for t, m in log if t > 1013], log  # given up: no restart, no line, however many rounds follow
    assert (1000, "group worker: policy 3 restart(s) in 1 min, back-off 4s doubling") in log, log
    assert "watch ends after 30 round(s); it gave up on group worker (after 3 restart(s) in 1 min)" in str(
        gave_up.value
    )
    [alert] = receiver.received
    assert alert["unit"] == "group worker" and alert["event"] == "gave up" and alert["restarts"] == 3, alert
    assert alert["reasons"] == ["local worker r0 exited (exit 3)"], alert
    audit = (tmp_path / "state" / "budget" / "audit.log").read_text()
    assert "watch: gave up on group worker after 3 restart(s) in 1 min: local worker r0 exited (exit 3)" in audit
    assert "T0KEN" not in audit and not any("T0KEN" in m for _, m in log)


def test_a_group_given_up_on_leaves_the_others_supervised(monkeypatch, tmp_path):
    """One group always fails and is given up on; the other, killed afterwards, is still restarted."""
    good_pid = tmp_path / "state" / "two" / "run" / os.uname().nodename / "two-good-r0" / "pid"
    groups = {"bad": "exit 3", "good": "exec sleep 600"}
    with watch_on_clock(monkeypatch, tmp_path, groups, "two", watch={"max_restarts": 1}) as (
        target,
        clock,
        log,
        progress,
    ):
        start(target, target.plan.services, progress)
        first = int(good_pid.read_text())
        clock.hooks.append((1010, lambda: kill_session(first)))  # well after bad is given up on
        with pytest.raises(watchmod.GaveUp) as gave_up:
            watchmod.watch(target, progress, interval=1, rounds=20)
        second = int(good_pid.read_text())
    given_up = [t for t, m in log if m.startswith("group bad: saw") and "gave up after 1 restart(s)" in m]
    assert len(given_up) == 1 and given_up[0] < 1010, log
    assert [m for t, m in log if m.startswith("restarting group bad")] == [
        "restarting group bad (1/1): local bad r0 exited (exit 3)"
    ], log
    again = [(t, m) for t, m in log if m.startswith("group good: saw local good r0 ") and "restarted it" in m]
    assert len(again) == 1 and again[0][0] >= 1010 and "group good serving again after" in again[0][1], log
    assert second != first and "it gave up on group bad (after 1 restart(s))" in str(gave_up.value)


GARBAGE_SERVER = """
import http.server, sys
class Peer(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = b"garbage {{{ \\xff not prometheus\\n" * 3
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), Peer).serve_forever()
"""


def test_metrics_that_make_no_sense_are_one_no_data_line_and_never_a_restart(monkeypatch, tmp_path):
    port = free_port()
    script = f"exec python3 -c {shlex.quote(GARBAGE_SERVER)} {port}"
    path = deployment(tmp_path, "garbage", {"worker": script})
    data = yaml.safe_load(path.read_text())
    data["groups"]["worker"].update(env={"DYN_SYSTEM_PORT": str(port)}, watch={"hung_after": 1})
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    plan = build_plan(load_config(path, environ={}))
    clock = Clock()
    monkeypatch.setattr(watchmod, "time", clock)
    log: list[str] = []
    progress = Progress(live=False)
    progress.log = log.append
    with connected_target(plan) as target:
        try:
            start(target, target.plan.services, progress)
            wait_for(lambda: listening(port), 20, what="the worker's metrics port")
            watchmod.watch(target, progress, interval=1, rounds=6)
        finally:
            down.down(target)
    no_data = [m for m in log if "metrics give no data" in m]
    assert len(no_data) == 1 and "not Prometheus text" in no_data[0], log  # said once, not every round
    assert not [m for m in log if ": saw " in m or m.startswith("restarting")], log
