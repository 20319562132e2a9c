"""Faults on the testbed: a cut link during `up`, sshd killed before `down`, `logs -f` across a cut link."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import REPO, STATE_DIR, Lines, chat, launcher_on

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


def spare_files(testbed, tmp_path: Path, nodes: int = 5) -> tuple[Path, Path]:
    """testbed-small as its own deployment with `watch.lost_after`, and an inventory of the testbed's first
    NODES nodes: the plan uses 0-3, so node 4 is the one spare."""
    import yaml

    data = yaml.safe_load(CONFIG.read_text())
    data["deployment"] = "spare-small"
    data["secrets"] = ["HOOK"]  # the alert webhook's URL (a receiver on loopback: the user's endpoint)
    data["watch"] = {"lost_after": 2, "webhook_url_env": "HOOK"}
    config = tmp_path / "spare.yaml"
    config.write_text(yaml.safe_dump(data, sort_keys=False))
    inv = yaml.safe_load(testbed.inventory.read_text())
    inv["nodes"] = inv["nodes"][:nodes]
    inventory = tmp_path / "inventory.yaml"
    inventory.write_text(yaml.safe_dump(inv, sort_keys=False))
    return config, inventory


def answers_in_a_row(endpoint: str, count: int, limit: float) -> bool:
    """COUNT chat answers one after the other within LIMIT seconds (a failure starts the count again)."""
    deadline, row = time.monotonic() + limit, 0
    while row < count and time.monotonic() < deadline:
        try:
            chat(endpoint, max_tokens=2, timeout=5)
            row += 1
        except (OSError, AssertionError):
            row = 0
            time.sleep(0.2)  # a refused connection answers at once: do not spin
    return row >= count


def test_a_lost_node_moves_to_the_spare_and_without_one_the_rest_keep_serving(testbed, tmp_path):
    """Node 3 (decode r1) loses SSH while serving: its rank still answers through another node, so `watch` says so
    and alerts, and moves nothing; then its link too: `watch` moves the decode group onto node 4,
    the one spare, and the endpoint serves again; then node 4 is cut too: no spare is left, which watch says
    in one line while the rest keeps serving. The next `up` keeps the group on the spare, `down` cleans it."""
    assert len(testbed.nodes) >= 5, "this test needs LAUNCHER_TESTBED_NODES=5 or more"
    from tests.pure.test_watch_policy import Receiver

    config, inventory = spare_files(testbed, tmp_path)
    receiver = Receiver()
    env = {**os.environ, "HOOK": receiver.url}

    def launcher(command: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        argv = [sys.executable, "-m", "launcher", command, "-c", str(config), "-i", str(inventory), *args]
        return subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=timeout, env=env)

    try:
        up = launcher("up", "--skip-doctor")
        assert up.returncode == 0, up.stderr
        forged_label_is_ignored(testbed, launcher)
        argv = ["watch", "-c", str(config), "-i", str(inventory), "--interval", "1", "--connect-timeout", "3"]
        watch = subprocess.Popen(
            [sys.executable, "-m", "launcher", *argv], cwd=tmp_path, stderr=subprocess.PIPE, text=True, env=env
        )
        try:
            lose_nodes_while_watched(testbed, launcher, Lines(watch.stderr), watch)
            # two alerts: node 3 serving without SSH, no spare for node 4 (node 3's move is no alert)
            serving, alert = receiver.received
            assert serving["event"] == "node unreachable over SSH, still serving", serving
            assert alert["event"] == "node lost, not replaced" and "no spare node" in alert["reason"], alert
        finally:
            watch.terminate()
            watch.wait(30)
            testbed.run("heal", "3")
            testbed.run("heal", "4")
        # The next `up` of the same file keeps the group on the spare (read back from its labels), node 3 cut
        # again: a node replaced is no longer one `up` needs (a rank cut off from etcd ends by itself: the
        # spare's may be started again, but there, never on node 3).
        testbed.run("cut", "3")
        up = launcher("up", "--skip-doctor", "--connect-timeout", "3")
        testbed.run("heal", "3")
        assert up.returncode == 0, up.stderr
        assert "node 3 ({} {}): not reachable".format(*testbed.nodes[3]) in up.stderr, up.stderr
        assert "replaced by a spare" in up.stderr
        assert spare_ids(testbed, 3) == [] and spare_ids(testbed, 4), up.stderr
        assert replaces_label(testbed, 4) == f"3:{testbed.nodes[3][1]}", up.stderr
    finally:
        down = launcher("down")  # the spare's containers with the rest
        receiver.shutdown()
    assert down.returncode == 0, down.stderr
    assert all(not spare_ids(testbed, i) for i in range(5))


def forged_label_is_ignored(testbed, launcher) -> None:
    """Containers on the spare whose labels claim they replace a node the inventory does not have, and a
    real group node (well formed: what anyone who can run a container on the spare can write): `status`
    says so in one line each and keeps the file's plan (no group moves to node 4); only watch's record on
    the head node makes such a label count."""
    labels = ["--label", "launcher.deployment=spare-small", "--label", "launcher.group=decode"]
    image = testbed.vars["TESTBED_IMAGE"]
    for name, claim in (("forged", "7:10.9.9.9"), ("forged-well", f"3:{testbed.nodes[3][1]}")):
        forged = [*labels, "--label", f"launcher.replaces={claim}", "--name", f"spare-small-{name}"]
        run = testbed.ssh(4, testbed.docker_run(*forged, image, "sleep", "300", detach=True))
        assert run.returncode == 0, run.stderr
    try:
        status = launcher("status", "--json", timeout=120)
        assert json.loads(status.stdout)["replaced"] == [], status.stdout
        plain = launcher("status", timeout=120)
        said = [x for x in plain.stdout.splitlines() if "'s label" in x]
        assert len(said) == 2, plain.stdout
        assert any("names no inventory node: ignored" in x for x in said), plain.stdout
        assert any("record of watch's moves has no such move" in x for x in said), plain.stdout
        assert "its group ranks moved by watch" not in plain.stdout  # status's line of a substitution taken
    finally:
        testbed.ssh(4, "docker rm -f spare-small-forged spare-small-forged-well")


def spare_ids(testbed, i: int) -> list[str]:
    return testbed.ssh(i, "docker ps -q --filter label=launcher.deployment=spare-small").stdout.split()


def replaces_label(testbed, i: int) -> str:
    label = '{{index .Config.Labels "launcher.replaces"}}'
    return testbed.ssh(i, f"docker inspect --format '{label}' spare-small-decode-r1").stdout.strip()


def lose_nodes_while_watched(testbed, launcher, lines: Lines, watch: subprocess.Popen) -> None:
    endpoint = f"http://{testbed.nodes[0][1]}:8000"
    assert lines.until(lambda x: "a node failing SSH for 2s is lost" in x, 60), lines.text()
    lost, spare = "node 3 ({} {})".format(*testbed.nodes[3]), "node 4 ({} {})".format(*testbed.nodes[4])
    # SSH alone gone (its packets dropped): its rank still answers through another node, so node 3 is not
    # lost and nothing moves, for several rounds
    testbed.run("block-ssh", "3")
    kept = lines.until(lambda x: lost in x and "not lost, not replaced" in x, 60)
    assert kept and "decode-r1 answers its health check through node " in kept, lines.text()[-3000:]
    assert lost not in kept.split("through", 1)[1]  # another node vouched, not node 3 itself
    assert kept.rstrip().endswith("alerted: audit log, webhook (HOOK) answered HTTP 204"), kept
    time.sleep(5)  # several of watch's rounds (1 s): asked again each, still serving, still not moved
    assert spare_ids(testbed, 4) == [] and replaces_label(testbed, 4) == ""
    assert "lost;" not in lines.text() and lines.text().count("not lost, not replaced") == 1, lines.text()[-3000:]
    testbed.run("cut", "3")  # and now its link: lost
    cut = time.monotonic()
    moved = lines.until(lambda x: f"{spare} replaces {lost}" in x and "serving again" in x, 240)
    assert moved, lines.text()[-3000:]
    moved_after = time.monotonic() - cut
    assert answers_in_a_row(endpoint, 3, 60), "the endpoint did not serve again"
    print(f"\nlost node: the group serving on the spare {moved_after:.1f}s after the cut (watch says);"
          f" 3 answers in a row {time.monotonic() - cut:.1f}s after it\n{moved.strip()}")  # fmt: skip
    assert replaces_label(testbed, 4) == f"3:{testbed.nodes[3][1]}"
    audit = testbed.ssh(0, f"cat {STATE_DIR}/spare-small/audit.log").stdout
    assert f"watch: {spare} replaces {lost} for decode: recreating them there" in audit, audit[-2000:]
    status = launcher("status", "--connect-timeout", "3", timeout=120)
    assert status.returncode == 0, status.stdout + status.stderr
    assert f"{spare} replaces {lost}" in status.stdout
    serving = {i: sorted(spare_ids(testbed, i)) for i in (0, 1, 2)}
    # No spare left: node 4 lost as well. Said in one line; nothing else is stopped; requests are served.
    testbed.run("cut", "4")
    reported = lines.until(lambda x: "node 4" in x and "not replaced" in x, 120)
    assert reported and "no spare node" in reported, lines.text()[-3000:]
    assert reported.rstrip().endswith("alerted: audit log, webhook (HOOK) answered HTTP 204"), reported
    assert "T0KEN" not in lines.text()  # the URL is never printed
    print(reported.strip())
    assert watch.poll() is None
    assert answers_in_a_row(endpoint, 3, 60), "the rest stopped serving"
    assert {i: sorted(spare_ids(testbed, i)) for i in (0, 1, 2)} == serving, "services of the other nodes were stopped"
    # Node 3 back: the ranks that moved off it, still there, are removed (they would register beside the new ones)
    testbed.run("heal", "3")
    removed = lines.until(lambda x: "back, replaced on a spare; removed them" in x, 60)
    assert removed and "spare-small-decode-r1 on node 3" in removed, lines.text()[-3000:]
    assert testbed.ssh(3, "docker ps -aq --filter label=launcher.deployment=spare-small").stdout.split() == []
