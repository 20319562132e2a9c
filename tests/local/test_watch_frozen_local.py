"""A rank frozen outright on this machine (process runtime, the real Dynamo stack of configs/local.yaml):
the decode mocker's process group is SIGSTOPped while `launcher watch` runs as a user runs it. Its process
still reads `running` and its `/metrics` answer nothing (the progress rule calls that no data, never hung):
only its health probe tells. watch names it unhealthy once the file's `watch.unhealthy_after` has passed
(three failed probes at least), restarts its group, and only it, within seconds, and the endpoint serves
again.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.helpers import Lines, alive, chat, launcher, local_file, wait_for

pytestmark = pytest.mark.slow


def decode_pid(config: str, env: dict[str, str], cwd) -> int:
    status = launcher("status", config, "--json", env=env, cwd=cwd)
    assert "Traceback" not in status.stderr, status.stderr
    rows = {s["service"]: s for s in json.loads(status.stdout)["services"]}
    return int(rows["decode-r0"]["id"])


def answers(endpoint: str) -> bool:
    try:
        chat(endpoint, timeout=10)
    except Exception:  # noqa: BLE001 - not serving yet: asked again
        return False
    return True


def test_a_frozen_decode_rank_is_named_unhealthy_and_its_group_restarted_within_seconds(tmp_path):
    stack = local_file(tmp_path, "frozen", lambda data: data["groups"]["decode"].update(watch={"unhealthy_after": 3}))
    endpoint = f"http://127.0.0.1:{stack.port}"
    frozen = None
    watch = None
    try:
        up = launcher("up", stack.config, "--skip-doctor", env=stack.env, cwd=tmp_path, timeout=240)
        assert up.returncode == 0, up.stdout + up.stderr
        watch = subprocess.Popen(
            [sys.executable, "-m", "launcher", "watch", stack.config, "--interval", "0.5"],
            cwd=tmp_path, env=stack.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        lines = Lines(watch.stderr)
        policy = lines.until(lambda line: "group decode: policy" in line, 60)
        assert policy is not None and "unhealthy after 3s failing its health probe" in policy, lines.text()
        # the first round's summary: watch has seen both ranks pass their probes, and judges them from then on
        first = lines.until(lambda line: "first look: " in line, 60)
        assert first is not None and "5/5 unit(s) running as planned, 2/2 rank health probe(s) passing" in first, first
        frozen = decode_pid(stack.config, stack.env, tmp_path)
        os.killpg(frozen, signal.SIGSTOP)
        stopped = time.monotonic()
        said = lines.until(lambda line: "group decode: saw" in line and "restarted it" in line, 90)
        took = time.monotonic() - stopped
        print(f"\nwatch restarted the frozen decode group {took:.1f}s after SIGSTOP: {said}")
        assert said is not None, lines.text()
        assert "saw local decode r0 unhealthy for " in said and "(1/5, back-off 5s before another)" in said, said
        wait_for(lambda: answers(endpoint), 60, interval=1, what="a chat completion through the frontend")
        print(f"serving again {time.monotonic() - stopped:.1f}s after SIGSTOP")
        assert not alive(frozen) and decode_pid(stack.config, stack.env, tmp_path) != frozen
        watch.send_signal(signal.SIGINT)
        text = lines.rest(30)
        assert "restarting group decode (1/5): local decode r0 unhealthy for " in text, text
        assert "restarting group prefill" not in text and "Traceback" not in text, text
        assert "watch stopped" in text, text
    finally:
        if frozen is not None and alive(frozen):
            os.killpg(frozen, signal.SIGCONT)  # a frozen group left behind would hold `down` to its KILL
        if watch is not None and watch.poll() is None:
            watch.kill()
            watch.wait(10)
        launcher("down", stack.config, "--now", env=stack.env, cwd=tmp_path)
