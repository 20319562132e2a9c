"""`replicas: 2` on the testbed (docker over SSH, one node per replica): each replica's container on its own
node under its own name, both registered and serving, a change to the file recreating only the replica whose
spec changed (per-replica spec hash), `down` removing both."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import yaml

from tests.helpers import REPO, launcher_on, printed_curl_reply

pytestmark = pytest.mark.testbed

CONFIG = REPO / "configs" / "testbed-small.yaml"
NAME = "testbed-replicas"
LABEL = f"label=launcher.deployment={NAME}"


def config(tmp_path: Path, decode_nodes) -> Path:
    """testbed-small (4 nodes) with prefill on node 0 and decode as 2 replicas of one node each."""
    data = yaml.safe_load(CONFIG.read_text())
    data["deployment"] = NAME
    data["groups"]["prefill"]["nodes"] = [0]
    data["groups"]["decode"].update(nodes=decode_nodes, replicas=2)
    path = tmp_path / f"replicas-{len(list(tmp_path.iterdir()))}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def names_on(testbed, i: int) -> list[str]:
    r = testbed.ssh(i, f"docker ps --format '{{{{.Names}}}}' --filter {LABEL}")
    assert r.returncode == 0, r.stderr
    return sorted(r.stdout.split())


def test_two_replicas_on_their_own_nodes(testbed, tmp_path):
    first = config(tmp_path, [1, 2])
    started = time.monotonic()
    up = launcher_on(testbed, first, "up", cwd=tmp_path)
    print(f"\nup with 2 decode replicas on the testbed, to ready: {time.monotonic() - started:.1f}s")
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        printed_curl_reply(up.stdout)
        assert names_on(testbed, 1) == [f"{NAME}-decode-r0"]
        assert names_on(testbed, 2) == [f"{NAME}-decode.1-r0"]
        status = launcher_on(testbed, first, "status", "--json", cwd=tmp_path)
        assert status.returncode == 0, status.stdout + status.stderr
        state = json.loads(status.stdout)
        assert state["frontend"]["instances"]["backend"] == 2
        replicas = {r["name"]: r for r in state["replicas"] if r["group"] == "decode"}
        assert {n: (r["nodes"], r["state"]) for n, r in replicas.items()} == {
            "decode": ([1], "current"),
            "decode.1": ([2], "current"),
        }

        # Replica 1 moves to node 3: only it is recreated (replica 0's spec hash is unchanged).
        second = config(tmp_path, [1, 3])
        again = launcher_on(testbed, second, "up", cwd=tmp_path)
        assert again.returncode == 0, again.stdout + again.stderr
        assert names_on(testbed, 2) == [] and names_on(testbed, 3) == [f"{NAME}-decode.1-r0"]
        after = json.loads(launcher_on(testbed, second, "status", "--json", cwd=tmp_path).stdout)
        ids = {s["service"]: s["id"] for s in after["services"]}
        before = {s["service"]: s["id"] for s in state["services"]}
        assert ids["decode-r0"] == before["decode-r0"] and ids["decode.1-r0"] != before["decode.1-r0"]
    finally:
        down = launcher_on(testbed, first, "down", cwd=tmp_path)
    assert down.returncode == 0, down.stdout + down.stderr
    assert [i for i in range(4) if names_on(testbed, i)] == []
