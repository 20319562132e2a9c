"""Rolling `up` and its rollback on the docker runtime (the testbed: an sshd and a dockerd per node): two
decode replicas on nodes of their own, under constant streaming load through the frontend on node 0. The
old container is stopped and renamed (`NAME.held`) while its replacement proves itself, then removed; on a
rollback it is renamed back and started again, its spec label the previous one."""

from __future__ import annotations

import time

import pytest
import yaml

from tests.helpers import REPO, launcher_on
from tests.test_roll_local import STARTUP, streaming

pytestmark = pytest.mark.testbed

NAME = "testbed-small"


def decode_containers(testbed, nodes: tuple[int, ...]) -> dict[str, str]:
    """name -> 'state spec' of the deployment's decode containers on these nodes (held ones included)."""
    out = {}
    for i in nodes:
        listing = testbed.ssh(
            i,
            f"docker ps -a --filter label=launcher.deployment={NAME} --filter label=launcher.role=decode"
            " --format '{{.Names}} {{.State}} {{.Label \"launcher.spec\"}}'",
        ).stdout
        for line in listing.splitlines():
            name, state, spec = line.split()
            out[name] = f"{state} {spec}"
    return out


def test_rolling_up_and_rollback_on_docker(testbed, tmp_path):
    data = yaml.safe_load((REPO / "configs" / "testbed-small.yaml").read_text())
    data["groups"]["prefill"]["nodes"] = 1
    data["groups"]["decode"].update(nodes=1, replicas=2)
    for group in data["groups"].values():
        group["args"] = {"speedup-ratio": 1, "startup-time": STARTUP}
    config = tmp_path / "small.yaml"
    config.write_text(yaml.safe_dump(data, sort_keys=False))
    up = launcher_on(testbed, config, "up", cwd=tmp_path)
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        nodes = (1, 2)  # prefill takes node 0; each decode replica a node of its own
        before = decode_containers(testbed, nodes)
        assert sorted(before) == [f"{NAME}-decode-r0", f"{NAME}-decode.1-r0"], before

        data["groups"]["decode"]["args"]["startup-time"] = STARTUP + 1
        config.write_text(yaml.safe_dump(data, sort_keys=False))
        with streaming(8000, testbed.nodes[0][1]) as load:
            started = time.monotonic()
            roll = launcher_on(testbed, config, "up", cwd=tmp_path)
            took = time.monotonic() - started
        print(f"\ndocker rolling up of 2 decode replicas: {took:.1f}s; streams {len(load.results)}, bad {load.bad()}")
        assert roll.returncode == 0, roll.stdout + roll.stderr
        assert load.bad() == [] and len(load.results) >= 8, load.results
        after = decode_containers(testbed, nodes)
        assert sorted(after) == sorted(before), after  # the held ones removed
        assert all(after[n].startswith("running ") and after[n] != before[n] for n in after), (before, after)

        data["groups"]["decode"]["args"]["extra-engine-args"] = "/nonexistent/engine.json"
        config.write_text(yaml.safe_dump(data, sort_keys=False))
        with streaming(8000, testbed.nodes[0][1]) as load:
            bad = launcher_on(testbed, config, "up", cwd=tmp_path)
        out = bad.stdout + bad.stderr
        print(f"docker rollback: streams {len(load.results)}, bad {load.bad()}")
        assert bad.returncode == 1, out
        assert "rolling up failed on replica decode: " in out and "/nonexistent/engine.json" in out, out
        assert "rolled back: decode runs the previous spec again" in out, out
        assert load.bad() == [], load.bad()
        assert decode_containers(testbed, nodes) == after  # the previous container, running, its spec label
    finally:
        launcher_on(testbed, config, "down", "--now", cwd=tmp_path)
