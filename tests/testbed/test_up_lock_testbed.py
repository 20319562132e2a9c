"""`up` takes the lock in the same round trip as the head node's check (issue 25): when another node is
not ready, nothing may look changed afterwards: the lock is free again, a `down` mark left by an earlier
`down` is still there (a `watch` must still obey it), and the audit log says that this `up` failed."""

from __future__ import annotations

import json

import pytest
import yaml

pytestmark = pytest.mark.testbed


def deployment(tmp_path, nodes: int):
    data = {
        "deployment": "lockcheck",
        "image": "${TESTBED_IMAGE}",
        "state_dir": str(tmp_path / "state"),  # testbed nodes share this machine's filesystem
        "gpus_per_node": 0,
        "container": {"shm_size": "", "ulimits": {"memlock": None, "nofile": None}, "volumes": ["/usr:/usr:ro"]},
        "services": {"etcd": {"enabled": False}, "nats": {"enabled": False}, "frontend": {"enabled": False}},
        "groups": {"work": {"engine": "command", "nodes": nodes, "args": ["sleep", "infinity"]}},
    }
    config = tmp_path / f"lockcheck{nodes}.yaml"
    config.write_text(yaml.safe_dump(data, sort_keys=False))
    return config


def inventory(testbed, tmp_path, unreachable: bool):
    inv = yaml.safe_load(testbed.inventory.read_text())
    inv["nodes"] = inv["nodes"][:2]
    if unreachable:  # TEST-NET-1 (RFC 5737): nothing answers there
        inv["nodes"].append({"name": "gone", "address": "192.0.2.10"})
    path = tmp_path / f"inventory-{'bad' if unreachable else 'good'}.yaml"
    path.write_text(yaml.safe_dump(inv, sort_keys=False))
    return path


def test_a_node_not_ready_leaves_the_lock_free_and_the_down_mark_in_place(testbed, tmp_path):
    import subprocess
    import sys

    state = tmp_path / "state" / "lockcheck"
    good, bad = inventory(testbed, tmp_path, False), inventory(testbed, tmp_path, True)

    def launcher(config, inv, *args):
        argv = [sys.executable, "-m", "launcher", *args, "-c", str(config), "-i", str(inv)]
        return subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=300)

    two, three = deployment(tmp_path, 2), deployment(tmp_path, 3)
    try:
        down = launcher(two, good, "down")
        assert down.returncode == 0, down.stderr
        mark = (state / "down").read_text()
        assert json.loads(mark)["command"].startswith("launcher down")

        refused = launcher(three, bad, "up", "--skip-doctor", "--no-wait", "--connect-timeout", "1")
        assert refused.returncode == 1, refused.stdout + refused.stderr
        assert "cannot start: nodes not ready" in refused.stderr and "gone" in refused.stderr, refused.stderr
        assert "Traceback" not in refused.stderr
        assert not (state / "lock").exists(), "the lock was left held"
        assert (state / "down").read_text() == mark, "the down mark was not put back"
        actions = [json.loads(line)["action"] for line in (state / "audit.log").read_text().splitlines()]
        assert actions[-2].startswith("up started (launcher up") and str(bad) in actions[-2], actions
        assert actions[-1] == "up failed: nodes not ready", actions

        up = launcher(two, good, "up", "--skip-doctor", "--no-wait")  # the lock is free: it starts
        assert up.returncode == 0, up.stdout + up.stderr
        assert not (state / "down").exists() and not (state / "lock").exists()
        assert json.loads((state / "audit.log").read_text().splitlines()[-1])["action"].startswith("up done")
    finally:
        launcher(two, good, "down")
