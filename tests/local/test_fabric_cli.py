"""`launcher doctor --fabric` and `up`'s fabric step as a user runs them: fresh `launcher` processes on a
deployment of two local "nodes" (127.0.0.1 and localhost, the process runtime) whose `command` group asks
for the check, so its two ranks really meet in torch.distributed's rendezvous on this machine. Bad input
is one line and exit 2."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.helpers import CONFIGS, REPO, free_port

LAUNCHER = str(Path(sys.executable).with_name("launcher"))
INVENTORY_32 = REPO / "tests" / "data" / "inventory-32.yaml"

pytestmark = pytest.mark.slow


def launcher(*args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    proc = subprocess.run([LAUNCHER, *args], capture_output=True, text=True, timeout=timeout, cwd=cwd)
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stderr[-3000:]
    return proc


def pair_file(tmp_path: Path, python: Path | str, name: str = "pair") -> Path:
    data = {
        "deployment": name,
        "runtime": "process",
        "state_dir": str(tmp_path / "state"),
        "gpus_per_node": 0,
        "nodes": [{"name": "a", "address": "127.0.0.1"}, {"name": "b", "address": "localhost"}],
        "services": {"etcd": {"enabled": False}, "nats": {"enabled": False}, "frontend": {"enabled": False}},
        "fabric": {"python": str(python), "timeout": 20, "connect_timeout": 5, "gloo_mb": 1, "iters": 2},
        "groups": {
            "duo": {
                "engine": "command",
                "nodes": ["a", "b"],
                "args": ["sleep", "120"],
                "fabric": True,
                "dist_init_port": free_port(),
                "timeout": 30,
            },
        },  # fmt: skip
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def test_doctor_fabric_json_proves_the_rendezvous(tmp_path, fabric_python):
    config = pair_file(tmp_path, fabric_python)
    began = time.monotonic()
    proc = launcher("doctor", str(config), "--fabric", "--json", "--no-args", cwd=tmp_path)
    print(f"\ndoctor --fabric on two local nodes: {time.monotonic() - began:.1f}s")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    data = json.loads(proc.stdout)
    fabric = data["fabric"]
    assert data["ok"] and fabric["ok"]
    (group,) = fabric["groups"]
    assert group["name"] == "duo" and [r["rank"] for r in group["ranks"] if r["ok"]] == [0, 1]
    for rank in group["ranks"]:
        assert rank["answer"]["allreduce"]["gloo"]["ok"] and rank["ring_gbps"] > 0 and rank["rendezvous_s"] >= 0
    (peer,) = fabric["peers"]
    assert (peer["user"], peer["owner"], peer["what"], peer["ok"]) == (1, 0, "dist-init", True)
    interfaces = {c["node"]: c["detail"] for c in data["checks"] if c["name"] == "interface"}
    assert interfaces == dict.fromkeys((0, 1), "duo: lo to leader 127.0.0.1 (src 127.0.0.1)")
    audit = (tmp_path / "state" / "pair" / "audit.log").read_text().splitlines()
    assert "fabric check (doctor --fabric) ok" in json.loads(audit[-1])["action"]
    assert "duo: rendezvous" in audit[-1] and "a=" in audit[-1] and "b=" in audit[-1]  # per-node figures


def test_up_runs_the_check_before_starting_and_skip_fabric_skips_it(tmp_path, fabric_python):
    config = pair_file(tmp_path, fabric_python)
    try:
        up = launcher("up", str(config), cwd=tmp_path)
        assert up.returncode == 0, up.stderr[-3000:]
        log = up.stderr
        assert "fabric: duo: 2 ranks met in" in log and "all-reduce correct (gloo)" in log
        assert log.index("fabric: duo: 2 ranks met") < log.index("started 2 ")  # before any rank starts
        assert launcher("down", str(config), cwd=tmp_path).returncode == 0
        skipped = launcher("up", str(config), "--skip-fabric", cwd=tmp_path)
        assert skipped.returncode == 0, skipped.stderr[-3000:]
        assert "fabric: not checked (--skip-fabric): duo" in skipped.stderr and "ranks met" not in skipped.stderr
    finally:
        launcher("down", str(config), cwd=tmp_path)


def test_up_starts_nothing_when_the_check_cannot_run(tmp_path):
    config = pair_file(tmp_path, "/nonexistent/bin/python")
    up = launcher("up", str(config), cwd=tmp_path)
    assert up.returncode == 1
    assert "nothing was started; fix the above, or `launcher up --skip-fabric`" in up.stderr
    assert "never started" in up.stderr and "fabric.python (/nonexistent/bin/python)" in up.stderr
    status = launcher("status", str(config), "--json", cwd=tmp_path)
    assert {s["state"] for s in json.loads(status.stdout)["services"]} == {"missing"}


BAD = [
    ({"network": {"interface": "eth 0"}}, "network.interface", "does not match"),
    ({"network": {"interface": 3}}, "network.interface", "expected a string"),
    ({"fabric": {"timeout": 0}}, "fabric.timeout", "greater than 0"),
    ({"fabric": {"python": ""}}, "fabric.python", ""),
    ({"fabric": {"bogus": 1}}, "fabric.bogus", ""),
    ({"groups": {"decode": {"fabric": True}}}, "groups.decode.fabric", "never rendezvous"),
    ({"network": {"interface": "auto"}, "groups": {"decode": {"env": {"NCCL_SOCKET_IFNAME": "x"}}}},
     "groups.decode.env.NCCL_SOCKET_IFNAME", "set by network.interface"),
]  # fmt: skip


def merge(into: dict, change: dict) -> None:
    for key, value in change.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            merge(into[key], value)
        else:
            into[key] = value


@pytest.mark.parametrize(("change", "key", "says"), BAD, ids=[b[1] for b in BAD])
def test_bad_fabric_keys_are_one_line_and_exit_2(tmp_path, change, key, says):
    data = yaml.safe_load((CONFIGS / "testbed-104.yaml").read_text())
    merge(data, change)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    proc = launcher("plan", str(path), "-i", str(INVENTORY_32), cwd=tmp_path, timeout=60)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"error: {path}:") and key in lines[0] and says in lines[0], lines[0]


def test_plan_shows_what_the_interface_will_be(tmp_path):
    proc = launcher("plan", str(CONFIGS / "testbed-dsr1.yaml"), "-i", str(INVENTORY_32), cwd=tmp_path, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert (
        "env: GLOO_SOCKET_IFNAME=NCCL_SOCKET_IFNAME=<auto: per node, the interface that routes to 10.213.0.14;"
        " read on the node by up/doctor>" in proc.stdout
    )
    assert "fabric: the ranks' rendezvous at 10.213.0.10:29500 is proven before they start" in proc.stdout
    data = json.loads(launcher("plan", str(CONFIGS / "testbed-dsr1.yaml"), "-i", str(INVENTORY_32), "-f", "json",
                               cwd=tmp_path, timeout=60).stdout)  # fmt: skip
    assert data["network"] == {"interface": "auto", "interfaces": {}}
    assert {(p["what"], p["owner"]) for p in data["peers"]} >= {("dist-init", 0), ("dist-init", 4), ("bootstrap", 0)}
