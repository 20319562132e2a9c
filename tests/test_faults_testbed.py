"""Faults on the testbed: a cut link during `up`, sshd killed before `down`, `logs -f` across a cut link."""

from __future__ import annotations

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


def containers(testbed, i: int) -> list[str]:
    return testbed.ssh(i, f"docker ps -aq --filter {LABEL}").stdout.split()


def test_link_cut_during_up_fails_naming_the_node_then_down_cleans(testbed, tmp_path):
    testbed.run("cut", "3")
    try:
        started = time.monotonic()
        up = launcher(testbed, "up", "--connect-timeout", "3", cwd=tmp_path)
        took = time.monotonic() - started
        print(f"\nup with node 3's link cut failed after {took:.1f}s (connect timeout 3 s)")
        assert up.returncode == 1
        assert "3 {} {}".format(*testbed.nodes[3]) in up.stderr
        assert "timed out" in up.stderr and "nothing was started" in up.stderr
        assert took < 15
        assert containers(testbed, 0) == []  # nothing started anywhere
        # A sub-second connect timeout stays a timeout (fabric alone would truncate it to 0: no timeout,
        # then the kernel's two minutes); the subprocess limit turns a hang into a failure.
        started = time.monotonic()
        probe = launcher(
            testbed, "exec", "--node", "3", "--connect-timeout", "0.5", "--", "true", cwd=tmp_path, timeout=60
        )
        print(f"exec with --connect-timeout 0.5 on the cut node failed after {time.monotonic() - started:.1f}s")
        assert probe.returncode != 0 and "timed out" in probe.stdout + probe.stderr, probe
    finally:
        testbed.run("heal", "3")
    down = launcher(testbed, "down", cwd=tmp_path)
    assert down.returncode == 0
    for i in range(len(testbed.nodes)):
        assert containers(testbed, i) == []


def test_link_cut_while_up_waits(testbed, tmp_path):
    """The cut happens after the containers started: the wait fails naming the node, bounded in time."""
    import yaml

    data = yaml.safe_load(CONFIG.read_text())
    # decode mockers that never find etcd: they run, never register, and `up` keeps waiting
    data["groups"]["decode"]["env"] = {"ETCD_ENDPOINTS": "http://127.0.0.1:9"}
    slow = tmp_path / "slow.yaml"
    slow.write_text(yaml.safe_dump(data, sort_keys=False))
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "launcher",
            "up",
            "-c",
            str(slow),
            "-i",
            str(testbed.inventory),
            "--skip-doctor",
            "--connect-timeout",
            "3",
        ],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while (
            time.monotonic() < deadline
            and not testbed.ssh(
                3, "docker ps -q --filter name=testbed-small-decode-r1 --filter status=running"
            ).stdout.strip()
        ):
            time.sleep(0.5)
        testbed.run("cut", "3")
        cut = time.monotonic()
        out, err = proc.communicate(timeout=90)
        print(f"\nup noticed the cut link after {time.monotonic() - cut:.1f}s")
        assert proc.returncode == 1 and "node 3 ({} {})".format(*testbed.nodes[3]) in err
    finally:
        if proc.poll() is None:
            proc.kill()
        testbed.run("heal", "3")
        launcher(testbed, "lock", "break", cwd=tmp_path)
        launcher(testbed, "down", cwd=tmp_path)


def test_sshd_killed_during_down(testbed, tmp_path):
    up = launcher(testbed, "up", "--skip-doctor", "--no-wait", cwd=tmp_path)
    assert up.returncode == 0, up.stderr
    testbed.run("kill-sshd", "2")
    try:
        started = time.monotonic()
        down = launcher(testbed, "down", "--connect-timeout", "3", cwd=tmp_path)
        print(f"\ndown with node 2's sshd dead: exit {down.returncode} after {time.monotonic() - started:.1f}s")
        assert down.returncode == 1
        assert "node 2 ({} {})".format(*testbed.nodes[2]) in down.stderr and "connection refused" in down.stderr
        for i in (0, 1, 3):
            assert containers(testbed, i) == [], f"node {i} not cleaned"
    finally:
        testbed.run("heal", "2")
    assert containers(testbed, 2)  # still there: its node could not be reached
    started = time.monotonic()
    down = launcher(testbed, "down", cwd=tmp_path)
    print(f"down once sshd is back finished the job in {time.monotonic() - started:.1f}s")
    assert down.returncode == 0 and containers(testbed, 2) == []


def test_logs_follow_survives_a_cut_link(testbed, tmp_path):
    up = launcher(testbed, "up", "--skip-doctor", cwd=tmp_path)
    assert up.returncode == 0, up.stderr
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "launcher",
            "logs",
            "-c",
            str(CONFIG),
            "-i",
            str(testbed.inventory),
            "--role",
            "decode",
            "-f",
            "--tail",
            "1",
        ],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        time.sleep(4)
        testbed.run("cut", "3")
        cut = time.monotonic()
        lines: list[str] = []
        assert proc.stdout is not None
        import selectors

        sel = selectors.DefaultSelector()
        sel.register(proc.stdout, selectors.EVENT_READ)
        lost_at = None
        while time.monotonic() - cut < 40:
            if sel.select(timeout=1):
                line = proc.stdout.readline()
                lines.append(line)
                if "lost" in line and testbed.nodes[3][0] in line and lost_at is None:
                    lost_at = time.monotonic() - cut
            if lost_at is not None:
                break
        print(f"\nlogs -f reported the cut node after {lost_at}s")
        assert lost_at is not None and lost_at < 20, lines[-5:]
        assert proc.poll() is None  # still following the other node
        # the other decode rank (node 2) keeps flowing: send a request and see its log line
        import json
        import urllib.request

        body = json.dumps({"model": "tiny", "messages": [{"role": "user", "content": "x"}], "max_tokens": 2}).encode()
        for _ in range(4):
            try:
                urllib.request.urlopen(
                    urllib.request.Request(
                        f"http://{testbed.nodes[0][1]}:8000/v1/chat/completions",
                        body,
                        {"Content-Type": "application/json"},
                    ),
                    timeout=5,
                ).read()
            except OSError:
                pass
        flowing = False
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not flowing:
            if sel.select(timeout=1):
                flowing = f"[{testbed.nodes[2][0]} decode r0]" in proc.stdout.readline()
        assert flowing, "the other node's logs stopped"
    finally:
        proc.terminate()
        proc.wait(10)
        testbed.run("heal", "3")
        launcher(testbed, "down", cwd=tmp_path)
