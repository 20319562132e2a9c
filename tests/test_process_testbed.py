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
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from tests.helpers import REPO, launcher_on

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


def alive(pid: int) -> bool:
    """True if pid runs (a zombie, dead but not yet reaped by init, counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def session_members(session: int) -> list[int]:
    """Every live process of a session (the testbed's nodes share this PID namespace)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            fields = stat[stat.rindex(")") + 2 :].split()
            if int(fields[3]) == session and fields[0] != "Z":
                found.append(int(entry.name))
    return found


def chat(address: str) -> dict:
    body = json.dumps({"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}).encode()
    req = urllib.request.Request(
        f"http://{address}:8000/v1/chat/completions", body, {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=30) as resp:
        assert resp.status == 200
        return json.loads(resp.read())


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
        assert chat(testbed.nodes[0][1])["usage"]["completion_tokens"] > 0

        status = launcher("status", "--json")
        assert status.returncode == 0, status.stderr
        services = json.loads(status.stdout)["services"]
        running = {s["service"]: s for s in services if s["state"] == "running"}
        roles = sorted(s["role"] for s in running.values())
        assert roles == sorted(["etcd", "nats", "frontend", "prefill", "prefill", "decode", "decode", "orphans"]), roles
        # Each service runs on the node the plan put it on: its own run directory, keyed by hostname.
        run_dir = tmp_path / "state" / "testbed-small" / "run"
        for s in running.values():
            assert (run_dir / s["node"] / s["container"] / "pid").read_text().strip() == s["id"], s

        leaders = {name: int(s["id"]) for name, s in running.items()}
        members = {name: session_members(pid) for name, pid in leaders.items()}
        orphans = members["orphans-r0"]
        assert len(orphans) >= 3, f"the orphan maker's session should hold three sleeps: {orphans}"

        logs = launcher("logs", "--role", "decode", "--tail", "20")
        assert logs.returncode == 0 and " decode r1]" in logs.stdout, logs.stdout + logs.stderr

        where = launcher("exec", "--role", "decode", "--", "uname", "-n")
        assert where.returncode == 0, where.stderr
        decode_nodes = {s["node"] for s in running.values() if s["role"] == "decode"}
        assert len(decode_nodes) == 2

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
