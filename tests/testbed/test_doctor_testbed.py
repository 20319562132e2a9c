"""`launcher doctor` on the testbed: a healthy cluster passes; each fault is reported on the right node
with the right check, and `up` then starts nothing anywhere."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import REPO, launcher_on

pytestmark = pytest.mark.testbed

CONFIG = REPO / "configs" / "testbed-small.yaml"
LABEL = "label=launcher.deployment=testbed-small"


def launcher(testbed, command: str, *args: str, cwd: Path, timeout: float = 300):
    return launcher_on(testbed, CONFIG, command, *args, cwd=cwd, timeout=timeout)


def doctor(testbed, cwd: Path, *extra: str) -> tuple[int, list[dict]]:
    r = launcher(testbed, "doctor", "--json", "--connect-timeout", "3", *extra, cwd=cwd)
    assert r.stdout, r.stderr
    return r.returncode, json.loads(r.stdout)["checks"]


def failing(checks: list[dict]) -> set[tuple[int | None, str]]:
    return {(c["node"], c["name"]) for c in checks if c["status"] == "fail"}


def nothing_started(testbed, cwd: Path) -> None:
    up = launcher(testbed, "up", "--connect-timeout", "3", cwd=cwd)
    assert up.returncode != 0
    assert "nothing was started" in up.stderr or "cannot start" in up.stderr, up.stderr
    for i in range(4):
        r = testbed.ssh(i, f"docker ps -aq --filter {LABEL}")
        assert r.stdout.strip() == "", f"node {i} has containers"


def test_healthy_cluster_passes(testbed, tmp_path):
    started = time.monotonic()
    code, checks = doctor(testbed, tmp_path)
    print(f"\ndoctor on 4 nodes (with the real mocker/frontend parsers): {time.monotonic() - started:.1f}s")
    assert code == 0, [c for c in checks if c["status"] != "ok"]
    names = {c["name"] for c in checks}
    assert {
        "ssh",
        "runtime",
        "image",
        "model",
        "port",
        "clock",
        "args:prefill",
        "args:decode",
        "args:frontend",
    } <= names


def test_sshd_killed(testbed, tmp_path):
    testbed.run("kill-sshd", "2")
    try:
        code, checks = doctor(testbed, tmp_path, "--no-args")
        assert code == 1 and failing(checks) == {(2, "ssh")}
        (c,) = [c for c in checks if c["node"] == 2]
        assert "connection refused" in c["detail"] and c["fix"] == "start sshd on the node"
        nothing_started(testbed, tmp_path)
    finally:
        testbed.run("heal", "2")


def test_docker_killed(testbed, tmp_path):
    testbed.run("kill-docker", "1")
    try:
        code, checks = doctor(testbed, tmp_path, "--no-args")
        assert code == 1 and (1, "runtime") in failing(checks)
        assert all(node == 1 for node, _ in failing(checks))
        nothing_started(testbed, tmp_path)
    finally:
        testbed.run("heal", "1")


def test_missing_image(testbed, tmp_path):
    image = testbed.vars["TESTBED_IMAGE"]
    testbed.ssh(3, f"docker image rm {image}", check=True)
    try:
        code, checks = doctor(testbed, tmp_path, "--no-args")
        assert code == 1 and failing(checks) == {(3, "image")}
        nothing_started(testbed, tmp_path)
    finally:
        testbed.run("up", str(len(testbed.nodes)))  # reloads the image where it is missing
    code, checks = doctor(testbed, tmp_path, "--no-args")
    assert code == 0


def test_busy_port(testbed, tmp_path):
    # Something else listens on the frontend's port on node 0.
    image = testbed.vars["TESTBED_IMAGE"]
    busy = testbed.docker_run("--name", "busy-port", image, "python3", "-m", "http.server", "8000", detach=True)
    testbed.ssh(0, busy, check=True)
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and "8000" not in testbed.ssh(0, "ss -Hltn 'sport = :8000'").stdout:
            time.sleep(0.3)
        code, checks = doctor(testbed, tmp_path, "--no-args")
        assert code == 1 and failing(checks) == {(0, "port")}
        (c,) = [c for c in checks if c["status"] == "fail"]
        assert "port 8000 is taken" in c["detail"]
        nothing_started(testbed, tmp_path)
    finally:
        testbed.ssh(0, "docker rm -f busy-port")


def test_bad_engine_flag_is_caught_by_the_real_parser(testbed, tmp_path):
    import yaml

    data = yaml.safe_load(CONFIG.read_text())
    data["groups"]["decode"]["args"]["speedup-ration"] = 10  # a typo the offline table cannot know
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(data, sort_keys=False))
    r = subprocess.run(
        [sys.executable, "-m", "launcher", "doctor", "-c", str(bad), "-i", str(testbed.inventory), "--json"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 1
    fails = [c for c in json.loads(r.stdout)["checks"] if c["status"] == "fail"]
    assert [c["name"] for c in fails] == ["args:decode"]
    assert "speedup-ration" in fails[0]["detail"]


def test_model_missing_on_one_node_and_different_on_another(testbed, tmp_path):
    """Each node's sessions see their own /srv/testbed-node (scripts/testbed): a per-node model disk."""
    import yaml

    local = "/srv/testbed-node"
    for i in range(4):
        seen = testbed.ssh(i, f"cat {local}/.node").stdout.strip()
        assert seen == testbed.nodes[i][0], f"node {i} has no private {local}: restart the testbed ({seen!r})"
    data = yaml.safe_load(CONFIG.read_text())
    data["container"]["volumes"] = [
        v.replace("${TESTBED_REPO}/models/tiny", f"{local}/models/tiny") for v in data["container"]["volumes"]
    ]
    cfg = tmp_path / "per-node-model.yaml"
    cfg.write_text(yaml.safe_dump(data, sort_keys=False))
    copy = f"mkdir -p {local}/models && cp -r {REPO}/models/tiny {local}/models/"
    try:
        for i in (0, 1, 3):
            testbed.ssh(i, copy, check=True)
        # node 2: no model at all; node 3: another model's config (one layer more)
        testbed.ssh(3, f"sed -i 's/\"num_hidden_layers\": */&1/' {local}/models/tiny/config.json", check=True)
        assert testbed.ssh(3, f"cmp -s {REPO}/models/tiny/config.json {local}/models/tiny/config.json").returncode == 1

        def run(*args: str) -> subprocess.CompletedProcess:
            argv = [sys.executable, "-m", "launcher", *args, "-c", str(cfg), "-i", str(testbed.inventory)]
            return subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=300)

        started = time.monotonic()
        r = run("doctor", "--json", "--no-args")
        print(f"\ndoctor found the per-node model faults in {time.monotonic() - started:.1f}s")
        checks = json.loads(r.stdout)["checks"]
        assert r.returncode == 1 and failing(checks) == {(2, "model"), (3, "model")}, failing(checks)
        detail = {c["node"]: c["detail"] for c in checks if c["name"] == "model"}
        assert detail[2] == f"{local}/models/tiny" and "differs between nodes" in detail[3]
        up = run("up", "--connect-timeout", "3")
        assert up.returncode != 0 and "nothing was started" in up.stderr, up.stderr
        named = [line for line in up.stderr.splitlines() if " model " in line and "fail" in line]
        assert [line.split()[1] for line in named] == [testbed.nodes[2][0], testbed.nodes[3][0]], up.stderr
        for i in range(4):
            assert testbed.ssh(i, f"docker ps -aq --filter {LABEL}").stdout.strip() == "", f"node {i} has containers"
    finally:
        for i in range(4):
            testbed.ssh(i, f"rm -rf {local}/models")
