"""Faults on the testbed: a cut link during `up`, sshd killed before `down`, `logs -f` across a cut link."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import REPO, Lines, chat, launcher_on

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
        assert containers(testbed, 0) == []  # nothing started anywhere
        # A sub-second connect timeout stays a timeout (fabric alone would truncate it to 0: no timeout,
        # then the kernel's two minutes); the subprocess limit turns a hang into a failure.
        started = time.monotonic()
        probe = launcher(
            testbed, "exec", "--node", "3", "--connect-timeout", "0.5", "--", "true", cwd=tmp_path, timeout=60
        )
        print(f"exec with --connect-timeout 0.5 on the cut node failed after {time.monotonic() - started:.1f}s")
        # README: `exec`'s exit code is the worst one, an unreachable node counting as 255
        assert probe.returncode == 255 and "timed out" in probe.stdout + probe.stderr, probe
        assert probe.stdout.startswith("== node 3 ({} {})\n".format(*testbed.nodes[3])), probe.stdout
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
        # Cut only once `up` is waiting: every container started, the frontend still short of the decode ranks.
        progress = Lines(proc.stderr)
        waiting = progress.until(lambda line: "frontend registry: waiting for" in line and "`backend`" in line, 120)
        assert waiting, f"up never reached its wait: {progress.text()}"
        running_r1 = "docker ps -q --filter name=testbed-small-decode-r1 --filter status=running"
        assert testbed.ssh(3, running_r1).stdout.strip(), "decode r1 is not running on node 3"
        assert proc.poll() is None, progress.text()
        testbed.run("cut", "3")
        cut = time.monotonic()
        err = progress.rest(180)
        proc.wait(30)
        print(f"\nup noticed the cut link after {time.monotonic() - cut:.1f}s")
        assert proc.returncode == 1, err
        # reported after the wait had begun, not before, as the lost node (not as a service that died or was slow)
        after = err[err.index(waiting) + len(waiting) :]
        assert "lost contact while waiting on 1 of" in after, err
        assert "  node 3 ({} {}): ".format(*testbed.nodes[3]) in after, err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        testbed.run("heal", "3")
        launcher(testbed, "lock", "break", cwd=tmp_path)
        began = time.monotonic()
        down = launcher(testbed, "down", cwd=tmp_path)
        print(f"down after the healed cut: {time.monotonic() - began:.1f}s\n{down.stdout}{down.stderr}")
    # The decode ranks never registered (no etcd): their /metrics never answer and SIGTERM does not end them;
    # the frontend, which never relayed a request, says none is in flight (down used to wait 60 s for them).
    assert down.returncode == 0 and "drain_timeout reached" not in down.stdout, down.stdout


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
    survivor, lost = f"[{testbed.nodes[2][0]} decode r0]", f"[{testbed.nodes[3][0]} decode r1]"
    try:
        assert proc.stdout is not None
        lines = Lines(proc.stdout)
        # Following has begun on both nodes: each printed its last line.
        started: set[str] = set()
        for _ in range(2):
            line = lines.until(lambda x: any(x.startswith(p) and p not in started for p in (survivor, lost)), 60)
            assert line, f"logs -f did not start on both nodes: {lines.text()}"
            started.add(survivor if line.startswith(survivor) else lost)
        testbed.run("cut", "3")
        cut = time.monotonic()
        reported = lines.until(lambda x: "lost" in x and testbed.nodes[3][0] in x, 120)
        assert reported, f"the cut node was never reported: {lines.text()[-2000:]}"
        print(f"\nlogs -f reported the cut node after {time.monotonic() - cut:.1f}s: {reported.strip()}")
        assert proc.poll() is None  # still following the other node
        # New lines keep flowing from node 2: requests made after the cut, whose ids its decode rank logs.
        answered: list[str] = []
        flowing = None
        deadline = time.monotonic() + 120
        while flowing is None and time.monotonic() < deadline:
            try:
                reply = chat(f"http://{testbed.nodes[0][1]}:8000", max_tokens=2, timeout=10)
                answered.append(reply["id"].removeprefix("chatcmpl-"))
            except OSError:
                pass  # routed to the cut node: try again
            flowing = lines.until(lambda x: x.startswith(survivor) and any(r in x for r in answered), 2)
        assert answered, "no request was answered after the cut"
        assert flowing, f"no line of {survivor} logged a request made after the cut: {lines.text()[-2000:]}"
    finally:
        proc.terminate()
        proc.wait(10)
        testbed.run("heal", "3")
        launcher(testbed, "down", cwd=tmp_path)
