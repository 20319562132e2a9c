"""Rolling `up` for real on this machine (issue 28, case 6: the embedded default with `replicas: 2` on
decode; etcd, NATS, the frontend and the mockers as local processes, the process runtime), each step a
fresh `launcher` subprocess while streamed chat completions run through the frontend without pause (AIPerf for
the roll, a stream client of the test's own for the rest):

- a decode flag changed: `up` rolls the two replicas one at a time under AIPerf's streaming load (its error
  count 0, every stream whole: tests/aiperf_load.py; p99 TTFT before and during printed), both replicas on the
  new spec after;
- a change that makes the new replica exit: rolled back, exit 1 naming the replica, the cause and its
  last log lines; the old spec serves again on it, the other replica untouched, 0 failed streams;
- a changed flag on prefill (one replica): refused (exit 2, nothing changed), then `--allow-downtime`
  drains it (audited) and recreates it;
- a held copy left by a failed rollback: `status` shows it held, the next `up` restores it first;
- Ctrl-C while a new replica starts: it is rolled back, `up` says which replica runs which spec;
- a roll stopped between steps (replicas on two specs), then with a replica held: a fresh `status` says
  a roll is in progress, which replica is replaced from which spec to which, and whether `up` finishes it
  or rolls it back first; that `up` does so."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
import yaml

from launcher.plan.build import REPLICA_PORT_STEP
from tests.aiperf_load import AIPerf, check_load, judge, summary_line
from tests.bench_env import bench_env  # noqa: F401
from tests.helpers import (
    STREAM_SPEEDUP,
    StreamLoad,
    assert_gone,
    free_port,
    fresh_env,
    interrupted,
    launcher,
    local_stack,
    session_members,
    stream,
    wait_for,
)

pytestmark = pytest.mark.slow

CLIENTS = 4  # streams in flight at every moment, each one after the other
TOKENS = 50  # ~1.5 s a stream at STREAM_SPEEDUP: several streams start and end during each step
STARTUP = 2  # seconds each mocker takes to "load its model" (--startup-time): a roll step is slow
LOAD_LIMIT = 240


def streaming(port: int, host: str = "127.0.0.1") -> StreamLoad:
    """CLIENTS threads streaming TOKENS-token chat completions through the frontend one after another until
    stopped, each client served once before the roll begins; every outcome kept (`bad`: failed or cut)."""
    return StreamLoad(port, host, clients=CLIENTS, tokens=TOKENS, limit=LOAD_LIMIT, warm=True)


def replicas(config: str, env: dict, cwd: Path) -> dict[str, dict]:
    status = launcher("status", config, "--json", env=env, cwd=cwd)
    assert status.returncode in (0, 1), status.stdout + status.stderr  # 1: what runs is not the file (outdated)
    state = json.loads(status.stdout)
    out = {r["name"]: r for r in state["replicas"]}
    out["frontend"] = state["frontend"]
    for s in state["services"]:
        out.setdefault(s["service"], s)
    return out


def rewrite(config: str, data: dict) -> None:
    Path(config).write_text(yaml.safe_dump(data, sort_keys=False))


def test_rolling_up_rollback_and_the_single_replica_refusal(tmp_path, bench_env):  # noqa: F811
    data, ports = local_stack(tmp_path, "roll")
    for group in data["groups"].values():
        group["args"] = {"speedup-ratio": STREAM_SPEEDUP, "startup-time": STARTUP}
    data["groups"]["decode"]["replicas"] = 2
    data["drain_timeout"] = 30
    config = str(tmp_path / "local.yaml")
    rewrite(config, data)
    port = free_port()
    env = {**fresh_env(), "LAUNCHER_PORT": str(port)}
    second = data["groups"]["decode"]["system_port"] + REPLICA_PORT_STEP
    try:
        up = launcher("up", config, env=env, cwd=tmp_path)
        assert up.returncode == 0, up.stdout + up.stderr
        before = replicas(config, env, tmp_path)

        # 1. A decode flag changed: rolled one replica at a time under AIPerf's constant streaming load (issue
        # 28, case 6; --no-wait: a roll waits until everything is ready even so, before it drains a replica).
        data["groups"]["decode"]["args"]["startup-time"] = STARTUP + 1
        rewrite(config, data)
        with AIPerf(bench_env, f"http://127.0.0.1:{port}", tmp_path / "roll-load") as load:
            roll, window = load.during(lambda: launcher("up", config, "--no-wait", env=env, cwd=tmp_path))
            load.stop()
        out = roll.stdout + roll.stderr
        judged = judge(load)
        print(
            summary_line(
                "rolling up of 2 decode replicas (the embedded default)",
                judged,
                (window[1] - window[0]) / 1e9,
                [window],
            )
        )
        assert roll.returncode == 0, out
        check_load(load, judged, [window])  # AIPerf's error count 0, every stream whole, load before/during/after
        assert "will roll decode: 2 replica(s) (decode, decode.1) in 2 step(s)" in out, out
        assert out.index("rolled decode: replaced in") < out.index("rolled decode.1: replaced in"), out
        assert out.count("smoke request(s) until one reached it") == 2, out  # its own request counter moved
        assert "0 service(s) (re)created, 2 replica(s) rolled" in out, out
        assert "--no-wait: waiting until every service is ready before rolling" in out, out
        after = replicas(config, env, tmp_path)
        for name in ("decode", "decode.1"):
            assert after[name]["running_spec"] == [after[name]["spec"]] != before[name]["running_spec"], after
        assert after["prefill-r0"]["id"] == before["prefill-r0"]["id"]  # the rest untouched
        audit = (tmp_path / "state" / "roll" / "audit.log").read_text()
        assert '"roll decode: drain decode-r0 on node 0: ' in audit and '"roll decode.1: replaced in' in audit, audit

        # 2. A change that makes the new replica exit: rolled back, the old spec serving again.
        missing = str(tmp_path / "missing-engine.json")  # a valid flag (doctor passes it); the mocker exits
        data["groups"]["decode"]["args"]["extra-engine-args"] = missing
        rewrite(config, data)
        with streaming(port) as load:
            bad = launcher("up", config, env=env, cwd=tmp_path)
        out = bad.stdout + bad.stderr
        print(f"rollback: streams {len(load.results)}, bad {len(load.bad())}")
        if load.bad():
            print(out, load.bad()[0], load.bad()[-1])
        assert bad.returncode == 1, out
        assert "rolling up failed on replica decode: decode rank 0 of group decode" in out, out
        assert "exited with exit code 1 (container roll-decode-r0)" in out, out
        assert f"FileNotFoundError: [Errno 2] No such file or directory: '{missing}'" in out, out  # its last log lines
        assert (
            "rolled back: decode runs the previous spec again. On the new spec: none. On the previous spec: decode.1"
            " (not reached)."
        ) in out, out
        assert load.bad() == [], load.bad()
        back = replicas(config, env, tmp_path)
        assert back["decode"]["running_spec"] == after["decode"]["running_spec"], back  # the previous spec
        assert back["decode-r0"]["state"].startswith("running"), back
        assert back["decode.1-r0"]["id"] == after["decode.1-r0"]["id"], back
        assert back["frontend"]["instances"]["backend"] == 2, back["frontend"]  # both serve: waited for
        assert "decode-r0.held" not in back and "roll-decode-r0.held" not in json.dumps(back)
        assert stream(port, 1, {}, max_tokens=8)["finish"] == "length"  # serving

        # 3. A held copy left by a rollback that failed (its service gone): shown as held, and the next `up`
        # restores it first (never removes it as an orphan), then finds everything as planned.
        del data["groups"]["decode"]["args"]["extra-engine-args"]  # decode as it runs
        rewrite(config, data)
        run = hold_by_hand(tmp_path, "roll-decode-r0")  # stopped and held, as a roll's hold leaves it
        shown = launcher("status", config, "--json", env=env, cwd=tmp_path)
        assert '"held (previous spec of roll-decode-r0)"' in shown.stdout and "not in plan" not in shown.stdout
        restored = launcher("up", config, env=env, cwd=tmp_path)
        out = restored.stdout + restored.stderr
        assert restored.returncode == 0, out
        assert (
            "restoring roll-decode-r0.held on node 0 (previous spec of roll-decode-r0): roll-decode-r0 is absent:"
            " its previous spec is started again"
        ) in out, out
        assert "unchanged" in out and "(re)create" not in out, out
        back = replicas(config, env, tmp_path)
        assert back["decode-r0"]["state"].startswith("running") and not (run / "roll-decode-r0.held").exists()

        # 4. Prefill has one replica: a change would take it down; refused, then allowed.
        data["groups"]["prefill"]["args"]["startup-time"] = STARTUP + 1
        rewrite(config, data)
        refused = launcher("up", config, env=env, cwd=tmp_path)
        assert refused.returncode == 2, refused.stdout + refused.stderr
        lines = refused.stderr.strip().splitlines()
        assert lines[-1].endswith(
            "up refused, nothing changed: role prefill would be unavailable during its restart (its only running"
            " replica's spec changed); pass --allow-downtime to restart it anyway, or give its group `replicas: 2`"
            " to roll it"
        ), refused.stderr
        assert replicas(config, env, tmp_path)["prefill-r0"]["id"] == before["prefill-r0"]["id"]
        allowed = launcher("up", config, "--allow-downtime", env=env, cwd=tmp_path)
        assert allowed.returncode == 0, allowed.stdout + allowed.stderr
        assert "--allow-downtime: role prefill is unavailable during its restart" in allowed.stderr, allowed.stderr
        # drained before it is recreated, as down drains: out of routing, its requests let finish
        assert "draining 1 worker(s) before recreating them, up to 30s" in allowed.stderr
        audit = (tmp_path / "state" / "roll" / "audit.log").read_text()
        (drained,) = [line for line in audit.splitlines() if "(recreate, drain_timeout 30s)" in line]
        assert "drain prefill-r0 on node 0: " in drained and "drain_timeout reached" not in drained, drained
        assert replicas(config, env, tmp_path)["prefill-r0"]["id"] != before["prefill-r0"]["id"]

        # 5. Ctrl-C while the first new replica starts: it is rolled back, the next one not reached.
        ready = replicas(config, env, tmp_path)
        data["groups"]["decode"]["args"]["startup-time"] = STARTUP
        rewrite(config, data)
        code, err = interrupted(
            "up", config, "--skip-doctor", env=env, cwd=tmp_path, when=lambda line: "started 1 container(s)" in line
        )
        assert code == 130 and "Traceback" not in err, err
        assert (
            "interrupted: rolling up stopped. On the new spec: none. On the previous spec: decode (rolled back:"
            " decode runs the previous spec again), decode.1 (not reached)."
        ) in err, err
        wait_for(lambda: replicas(config, env, tmp_path)["decode-r0"]["state"].startswith("running"), 30)
        now = replicas(config, env, tmp_path)
        assert [now[n]["running_spec"] for n in ("decode", "decode.1")] == [
            ready[n]["running_spec"] for n in ("decode", "decode.1")
        ], now
        assert not (tmp_path / "state" / "roll" / "lock").exists(), "the lock was left behind"

        # 6, 7. A roll stopped between steps, then one stopped with a replica held: what `status` says.
        rolls_in_progress(config, env, tmp_path, ready)
    finally:
        launcher("down", config, "--now", env=env, cwd=tmp_path)
    assert_gone([], (port, *ports, second))


def hold_by_hand(cwd: Path, name: str) -> Path:
    """The process-runtime service NAME stopped and its run directory renamed NAME.held, as a roll's hold
    leaves it; the run directory's parent, returned."""
    run = next((cwd / "state" / "roll" / "run").iterdir())
    leader = int((run / name / "pid").read_text())
    os.killpg(leader, signal.SIGTERM)
    wait_for(lambda: not session_members(leader), 30)
    (run / name).rename(run / f"{name}.held")
    return run


def rolls_in_progress(config: str, env: dict, cwd: Path, ready: dict) -> None:
    """Ctrl-C once decode was replaced (decode.1's step rolled back): the replicas run two specs, and a
    fresh `launcher status` (--json, and its table) says a roll is in progress that `up` finishes. Then
    decode.1 stopped and held as a roll's step leaves it: `status` names the replica being replaced, from
    which spec to which, and that `up` rolls it back first; that `up` does so and finishes the roll."""
    when = lambda line: "rolling decode.1: draining" in line  # noqa: E731
    code, err = interrupted("up", config, "--skip-doctor", env=env, cwd=cwd, when=when, limit=120)
    assert code == 130 and "On the new spec: decode. On the previous spec: decode.1 (rolled back" in err, err
    wait_for(lambda: replicas(config, env, cwd)["decode.1-r0"]["state"].startswith("running"), 30)
    status = launcher("status", config, "--json", env=env, cwd=cwd)
    [roll] = json.loads(status.stdout)["rolls"]
    assert (roll["group"], roll["current"], roll["outdated"], roll["replacing"], roll["next"]) == (
        "decode", ["decode"], ["decode.1"], [], "finish"
    ), roll  # fmt: skip
    says = "roll in progress: decode: replicas on two specs. `launcher up` will roll decode.1 to the plan's spec"
    assert roll["says"] == says
    table = launcher("status", config, env=env, cwd=cwd)
    assert says in table.stdout.splitlines(), table.stdout
    now = replicas(config, env, cwd)
    assert now["decode.1"]["running_spec"] == ready["decode.1"]["running_spec"] != [now["decode.1"]["spec"]], now

    hold_by_hand(cwd, "roll-decode.1-r0")  # as a roll's step leaves it before the new copy starts
    status = launcher("status", config, "--json", env=env, cwd=cwd)
    [roll] = json.loads(status.stdout)["rolls"]
    assert roll["replacing"] == [
        {"replica": "decode.1", "from_spec": ready["decode.1"]["running_spec"], "to_spec": now["decode.1"]["spec"],
         "running_spec": [], "state": "missing", "next": "roll back"}
    ], roll  # fmt: skip
    assert roll["next"] == "roll back" and roll["current"] == ["decode"], roll
    assert roll["says"] == (
        f"roll in progress: decode: replacing decode.1 (spec {ready['decode.1']['running_spec'][0]} ->"
        f" {now['decode.1']['spec']}, missing). `launcher up` will roll back decode.1 (start the held copy again),"
        " then roll decode.1 to the plan's spec"
    ), roll
    finished = launcher("up", config, "--skip-doctor", env=env, cwd=cwd)
    out = finished.stdout + finished.stderr
    assert finished.returncode == 0, out
    assert "restoring roll-decode.1-r0.held on node 0" in out and "rolled decode.1: replaced in" in out, out
    status = launcher("status", config, "--json", env=env, cwd=cwd)
    assert status.returncode == 0 and json.loads(status.stdout)["rolls"] == [], status.stdout
