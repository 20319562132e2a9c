"""`replicas: 2` on decode of the embedded default, for real on this machine: both mockers registered
with the frontend and serving, `status` showing each replica with its spec hash, `logs --replica`
choosing one, `down` removing both (the replica on ports apart included)."""

from __future__ import annotations

import json

import pytest

from launcher.plan.build import REPLICA_PORT_STEP
from tests.helpers import assert_gone, launcher, local_file, printed_curl_reply, session_members, timed_up

pytestmark = pytest.mark.slow


def two_decode_replicas(data: dict) -> None:
    data["groups"]["decode"]["replicas"] = 2


def test_two_decode_replicas_up_status_logs_down(tmp_path):
    config, data, ports, port, env = local_file(tmp_path, "local-replicas", two_decode_replicas)
    second_system_port = data["groups"]["decode"]["system_port"] + REPLICA_PORT_STEP
    up = timed_up(config, env, tmp_path, "local up with 2 decode replicas")
    pids: list[int] = []
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        printed_curl_reply(up.stdout)  # a request answered through the frontend

        status = launcher("status", "--json", env=env, cwd=tmp_path)
        assert status.returncode == 0, status.stdout + status.stderr
        state = json.loads(status.stdout)
        # Both decode replicas registered with the frontend (it waits for 2 `backend` instances).
        assert state["frontend"]["expected_instances"] == {"prefill": 1, "backend": 2}
        assert state["frontend"]["instances"]["backend"] == 2, state["frontend"]
        decode = [r for r in state["replicas"] if r["group"] == "decode"]
        assert [(r["name"], r["replica"], r["replicas"], r["state"]) for r in decode] == [
            ("decode", 0, 2, "current"),
            ("decode.1", 1, 2, "current"),
        ]
        assert decode[0]["running_spec"] == [decode[0]["spec"]] and decode[1]["running_spec"] == [decode[1]["spec"]]
        assert decode[0]["spec"] != decode[1]["spec"]
        workers = {s["service"]: s["replica"] for s in state["services"] if s["role"] == "decode"}
        assert workers == {"decode-r0": 0, "decode.1-r0": 1}
        leaders = [int(s["id"]) for s in state["services"] if s["state"] == "running"]
        pids = sorted({pid for leader in leaders for pid in session_members(leader)})

        text = launcher("status", env=env, cwd=tmp_path)
        line = f"replica 1 of 2 of decode: decode.1 on node(s) 0  spec {decode[1]['spec']}  current (1/1 ranks running)"
        assert line in text.stdout, text.stdout

        logs = launcher("logs", "--role", "decode", "--replica", "1", "--tail", "5", env=env, cwd=tmp_path)
        assert logs.returncode == 0, logs.stdout + logs.stderr
        assert "[local decode.1 r0]" in logs.stdout and "[local decode r0]" not in logs.stdout
        wrong = launcher("logs", "--role", "decode", "--replica", "2", env=env, cwd=tmp_path)
        assert wrong.returncode == 2 and "no replica 2 of decode: expected 0..1" in wrong.stderr, wrong.stderr
    finally:
        down = launcher("down", config, env=env, cwd=tmp_path)
    assert down.returncode == 0, down.stdout + down.stderr
    assert_gone(pids, (port, *ports, second_system_port))
