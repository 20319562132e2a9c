"""The process runtime over SSH on the testbed: the same main job as with Docker, without Docker.

configs/testbed-small.yaml with `runtime: process`: etcd, NATS, the frontend and the mockers run as
plain processes from the project's venv on the nodes (a Docker-less cluster with a shared Python
environment, as HPC sites have). The testbed's nodes share one filesystem and one PID namespace, so
the state_dir here is shared as on NFS: each node must still see and stop only its own services.
One extra group leaves orphans behind (children that outlive their parent, as SGLang's schedulers
do): `down` must end them too.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.helpers import REPO, alive, assert_workers_logged, chat, launcher_on, session_members

pytestmark = pytest.mark.testbed

# A parent that exits right after starting two children of its own, which it never waits for.
ORPHANS = "(sleep 3600 &); (sleep 3601 &); exec sleep 3602"


def process_config(tmp_path: Path) -> Path:
    data = yaml.safe_load((REPO / "configs" / "testbed-small.yaml").read_text())
    data["runtime"] = "process"
    data["python_env"] = "${TESTBED_VENV}"
    data["state_dir"] = str(tmp_path / "state")  # one directory every node sees, as with NFS
    data.pop("image")
    data["model"]["path"] = "${TESTBED_REPO}/models/tiny"
    data["container"] = {"env": {"HF_HUB_OFFLINE": "1"}}
    data["groups"]["orphans"] = {"engine": "command", "nodes": 1, "args": ["sh", "-c", ORPHANS]}
    path = tmp_path / "testbed-small-process.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def test_process_runtime_main_job_on_the_testbed(testbed, tmp_path):
    config = process_config(tmp_path)

    def launcher(command: str, *args: str, timeout: float = 300):
        return launcher_on(testbed, config, command, *args, cwd=tmp_path, timeout=timeout)

    started = time.monotonic()
    up = launcher("up")
    print(f"\nprocess runtime, up on 5 busy nodes to ready: {time.monotonic() - started:.1f}s")
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        assert "ready: testbed-small on" in up.stdout and "8 service(s)" in up.stdout, up.stdout
        reply = chat(f"http://{testbed.nodes[0][1]}:8000")  # answered with text
        assert_workers_logged(reply, lambda role, request: launcher("logs", "--role", role, "--grep", request))

        status = launcher("status", "--json")
        services = json.loads(status.stdout)["services"]
        # The shared state_dir must not make a node list another node's services: per node, exactly the plan's
        # services, each once (a listing keyed by service name would hide a duplicate).
        planned = {
            0: ["etcd", "nats", "frontend", "prefill-r0"], 1: ["prefill-r1"], 2: ["decode-r0"], 3: ["decode-r1"],
            4: ["orphans-r0"],
        }  # fmt: skip
        listed = {i: sorted(s["service"] for s in services if s["node_index"] == i) for i in planned}
        assert listed == {i: sorted(names) for i, names in planned.items()}, listed
        assert status.returncode == 0, status.stdout + status.stderr
        assert len(services) == 8 and all(s["state"] == "running" for s in services), services
        running = {s["service"]: s for s in services}
        # Each service runs on the node the plan put it on: its own run directory, keyed by hostname.
        run_dir = tmp_path / "state" / "testbed-small" / "run"
        assert sorted(d.name for d in run_dir.iterdir()) == sorted(testbed.nodes[i][0] for i in planned)
        for i, names in planned.items():
            host = testbed.nodes[i][0]
            assert sorted(d.name for d in (run_dir / host).iterdir()) == sorted(f"testbed-small-{n}" for n in names)
            for name in names:
                s = running[name]
                assert s["node"] == host and (run_dir / host / s["container"] / "pid").read_text().strip() == s["id"]

        leaders = {name: int(s["id"]) for name, s in running.items()}
        members = {name: session_members(pid) for name, pid in leaders.items()}
        orphans = members["orphans-r0"]
        assert len(orphans) >= 3, f"the orphan maker's session should hold three sleeps: {orphans}"

        logs = launcher("logs", "--role", "decode", "--tail", "20")
        assert logs.returncode == 0 and " decode r1]" in logs.stdout, logs.stdout + logs.stderr

        # exec runs on the decode nodes and nowhere else, each node's output under its own header.
        where = launcher("exec", "--role", "decode", "--", "uname", "-n")
        assert where.returncode == 0, where.stderr
        expected = ""
        for i in (2, 3):
            name, address = testbed.nodes[i]
            expected += f"== node {i} ({name} {address})\n{name}\n"
        assert where.stdout == expected, where.stdout

        again = launcher("up")
        assert again.returncode == 0 and "unchanged" in again.stdout + again.stderr, again.stdout + again.stderr
    finally:
        started = time.monotonic()
        down = launcher("down")
        print(f"process runtime, down: {time.monotonic() - started:.1f}s")
    assert down.returncode == 0, down.stdout + down.stderr

    everything = [pid for pids in members.values() for pid in pids]
    survivors = [pid for pid in everything if alive(pid)]
    assert not survivors, f"processes outlived down: {survivors}"
    print(f"down ended {len(everything)} processes in {len(members)} sessions, orphans included")
    after = launcher("status", "--json")
    assert not [s for s in json.loads(after.stdout)["services"] if s["state"] == "running"]


def test_a_state_dir_another_user_owns_on_the_head_node_is_refused_over_ssh(testbed, tmp_path):
    """The check runs where the lock lives, on the head node over SSH: another user's state_dir there
    (mode 0777, as one pre-created in /var/tmp would be) makes `up` and `lock status` one line, exit 2,
    with nothing started or written; once it is gone, the head node creates a fresh one with mode 0700."""
    config = process_config(tmp_path)
    data = yaml.safe_load(config.read_text())
    del data["groups"]["orphans"]  # four nodes are enough: nothing is meant to start
    config.write_text(yaml.safe_dump(data, sort_keys=False))
    state = tmp_path / "state"
    state.mkdir()
    os.chown(state, 65534, 65534)
    state.chmod(0o777)
    head = f"node 0 ({testbed.nodes[0][0]} {testbed.nodes[0][1]})"
    inventory = ["-c", str(config), "-i", str(testbed.inventory)]
    for command in (["up", *inventory], ["lock", "status", *inventory]):
        run = subprocess.run([sys.executable, "-m", "launcher", *command], cwd=tmp_path, capture_output=True,
                             text=True, timeout=300)  # fmt: skip
        lines = [ln for ln in run.stderr.strip().splitlines() if not re.match(r"\[\d\d:\d\d:\d\d\] ", ln)]
        assert run.returncode == 2 and len(lines) == 1, run.stdout + run.stderr
        assert lines[0].startswith(f"error: state_dir {state} on {head}: owned by nobody (uid 65534), mode 777")
    assert list(state.iterdir()) == []  # no lock, no audit line, no run directory: nothing started
    state.rmdir()
    run = subprocess.run([sys.executable, "-m", "launcher", "lock", "status", *inventory], cwd=tmp_path,
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    assert run.returncode == 0 and run.stdout.strip() == "not locked", run.stderr
    assert (state.stat().st_mode & 0o777, state.stat().st_uid) == (0o700, 0)
