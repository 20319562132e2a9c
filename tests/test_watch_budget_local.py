"""A group that always fails, watched on a test clock (the processes are real, `watch` runs in-process as
in test_promises_local.py's timing tests): the file's restart budget (`watch: {max_restarts, within,
backoff}`) stops the loop, each decision is one line, and the alert reaches the audit log and the webhook
the file names (a receiver on loopback: the user's endpoint) without its URL ever being printed."""

from __future__ import annotations

import pytest

from launcher.commands import down
from launcher.commands import watch as watchmod
from launcher.config.load import load as load_config
from launcher.output.progress import Progress
from launcher.plan.build import build as build_plan
from tests.helpers import connected_target
from tests.test_promises_local import Clock, deployment
from tests.test_watch_policy import Receiver

pytestmark = pytest.mark.slow


def test_a_group_that_always_fails_spends_its_budget_and_the_webhook_gets_one_alert(monkeypatch, tmp_path):
    receiver = Receiver()
    policy = {"webhook_url_env": "HOOK", "max_restarts": 3, "within": 1, "backoff": 4}
    path = deployment(tmp_path, "budget", {"worker": "exit 3"}, secrets=["HOOK"], watch=policy)
    plan = build_plan(load_config(path, environ={"HOOK": receiver.url}))
    clock = Clock()
    monkeypatch.setattr(watchmod, "time", clock)
    log: list[tuple[float, str]] = []
    progress = Progress(live=False)
    progress.log = lambda message: log.append((clock.now, message))
    try:
        with connected_target(plan) as target:
            try:
                with pytest.raises(watchmod.GaveUp) as gave_up:
                    watchmod.watch(target, progress, interval=1, rounds=100)
            finally:
                down.down(target)
    finally:
        receiver.shutdown()
    decisions = [(t, m) for t, m in log if m.startswith("group worker: saw")]
    saw = "group worker: saw local worker r0 exited (exit 3); "
    assert [t for t, m in decisions if "restarted it" in m] == [1000, 1004, 1012], log  # back-off 4, 8
    assert decisions[0][1].startswith(saw + "restarted it (1/3, back-off 4s before another); "), decisions
    assert decisions[-1] == (1013, saw + "gave up after 3 restart(s) in 1 min; alerted: audit log, webhook (HOOK)"
                             " answered HTTP 204"), decisions  # fmt: skip
    assert (1000, "group worker: policy 3 restart(s) in 1 min, back-off 4s doubling") in log, log
    assert "after 3 restart(s): giving up" in str(gave_up.value)
    [alert] = receiver.received
    assert alert["unit"] == "group worker" and alert["event"] == "gave up" and alert["restarts"] == 3, alert
    assert alert["reasons"] == ["local worker r0 exited (exit 3)"], alert
    audit = (tmp_path / "state" / "budget" / "audit.log").read_text()
    assert "watch: gave up on group worker after 3 restart(s) in 1 min: local worker r0 exited (exit 3)" in audit
    assert "T0KEN" not in audit and not any("T0KEN" in m for _, m in log)
