"""The fabric check on the real testbed (13 nodes, each a network namespace with its own sshd and dockerd):
dsr1-104gpu's own group shapes (prefill on 4 nodes, decode on 9) in configs/testbed-dsr1.yaml, their
torch.distributed rendezvous for real with Gloo across the namespaces (the CPU torch env of scripts/fabric-env
mounted into the containers), all met and measured. The faults (a blocked port, a leader down, a route
through another interface, `up`'s check before it starts anything, a node cut off from the mockers' bootstrap
ports) are shown on the smallest shape in tests/testbed/test_fabric_faults.py. Each test prints its figures (times,
bandwidth); none asserts a time."""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import in_ci
from tests.helpers import REPO, STATE_DIR, launcher_on

pytestmark = pytest.mark.testbed
TESTBED_NODES = 13  # the 104-GPU shape (tests/conftest.py grows the session's testbed to it)

DSR1 = REPO / "configs" / "testbed-dsr1.yaml"
PREFILL, DECODE = list(range(4)), list(range(4, 13))


@pytest.fixture(scope="module")
def fabric_testbed(testbed, fabric_python):
    """The 13-node testbed with iptables on this machine (for rules inside the nodes' namespaces) and the
    torch env built (the configs mount it)."""
    if len(testbed.nodes) < 13:
        pytest.fail(f"the fabric tests need 13 testbed nodes (LAUNCHER_TESTBED_NODES), got {len(testbed.nodes)}")
    if shutil.which("iptables") is None:
        install = subprocess.run(
            "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq iptables",
            shell=True, capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        if install.returncode != 0 or shutil.which("iptables") is None:
            if in_ci():
                pytest.fail(f"cannot install iptables: {install.stderr[-1000:]}", pytrace=False)
            pytest.skip("iptables is not installed and cannot be")
    return testbed


def doctor(testbed, config: Path, cwd: Path, *extra: str) -> tuple[int, dict, float]:
    began = time.monotonic()
    r = launcher_on(testbed, config, "doctor", "--fabric", "--no-args", "--json", *extra, cwd=cwd, timeout=600)
    took = time.monotonic() - began
    assert r.stdout, r.stderr[-3000:]
    return r.returncode, json.loads(r.stdout), took


def failing(data: dict, name: str) -> list[dict]:
    return [c for c in data["checks"] if c["status"] == "fail" and c["name"] == name]


def label(testbed, i: int) -> str:
    name, address = testbed.nodes[i]
    return f"node {i} ({name} {address})"


@contextlib.contextmanager
def firewall(testbed, i: int, rule: str) -> Iterator[None]:
    """An iptables rule inside node i's network namespace (its own netfilter tables), removed after."""
    ns = testbed.nodes[i][0]
    subprocess.run(f"ip netns exec {ns} iptables -I {rule}", shell=True, check=True, timeout=30)
    try:
        yield
    finally:
        subprocess.run(f"ip netns exec {ns} iptables -D {rule}", shell=True, check=True, timeout=30)


def containers(testbed, deployment: str) -> list[str]:
    found = []
    for i in range(len(testbed.nodes)):
        found += testbed.ssh(i, f"docker ps -aq --filter label=launcher.deployment={deployment}").stdout.split()
    return found


def test_healthy_104_shape_every_group_meets(fabric_testbed, tmp_path):
    tb = fabric_testbed
    code, data, took = doctor(tb, DSR1, tmp_path)
    fabric = data["fabric"]
    print(f"\ndoctor --fabric on 13 nodes: {took:.1f}s in all, the fabric check {fabric['seconds']:.1f}s")
    for g in fabric["groups"]:
        for r in g["ranks"]:
            print(f"  {g['name']} r{r['rank']} {tb.nodes[r['node']][0]}: rendezvous {r['rendezvous_s']}s, "
                  f"send {r['ring_gbps']} GB/s, all-reduce busbw {r['busbw_gbps']} GB/s")  # fmt: skip
    assert code == 0, [c for c in data["checks"] if c["status"] == "fail"]
    assert fabric["ok"] and [(g["name"], len(g["ranks"])) for g in fabric["groups"]] == [("prefill", 4), ("decode", 9)]
    for g, nodes in zip(fabric["groups"], (PREFILL, DECODE), strict=True):
        assert [r["node"] for r in g["ranks"]] == nodes
        for r in g["ranks"]:
            answer = r["answer"]
            assert r["ok"] and answer["allreduce"]["gloo"]["ok"] and answer["allreduce"]["gloo"]["wrong"] == 0
            assert answer["world"] == len(nodes) and r["ring_gbps"] > 0
            assert answer["interface"]["GLOO_SOCKET_IFNAME"] == "eth0"  # network.interface: auto, read on the node
    assert all(p["ok"] for p in fabric["peers"]) and len(fabric["peers"]) == 44
    interfaces = [c for c in data["checks"] if c["name"] == "interface"]
    assert len(interfaces) == 13 and all(c["status"] == "ok" and " eth0 " in c["detail"] for c in interfaces)
    audit = Path(STATE_DIR, "testbed-dsr1", "audit.log").read_text().splitlines()[-1]
    assert "fabric check (doctor --fabric) ok" in audit and f"{tb.nodes[12][0]}=" in audit
