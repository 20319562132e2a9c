"""`launcher watch` on the testbed: a killed decode rank gets the decode group recreated; etcd restarted."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import REPO, STATE_DIR, Lines, assert_workers_logged, chat, launcher_on, wait_for

pytestmark = pytest.mark.testbed

CONFIG = REPO / "configs" / "testbed-small.yaml"


def launcher(testbed, command: str, *args: str, cwd: Path, timeout: float = 300):
    return launcher_on(testbed, CONFIG, command, *args, cwd=cwd, timeout=timeout)


def serving(address: str) -> dict | None:
    """A chat answered with text through the frontend (the reply), or None."""
    try:
        return chat(f"http://{address}:8000", content="hi", max_tokens=4, timeout=10)
    except (OSError, AssertionError) as exc:
        print(f"not serving: {type(exc).__name__}: {str(exc)[:300]}")
        return None


def containers(testbed, nodes: set[int] | None = None) -> dict[str, tuple[int, str, str, str]]:
    """Every container of the deployment on every node (or on NODES only: a wait polls the nodes it watches,
    an SSH connection and a docker call each): name -> (node, id, started at, state). Fails on a container
    docker itself restarted (watch acts, not a restart policy) or on one name on two nodes."""
    found = {}
    listing = (
        "docker ps -aq --filter label=launcher.deployment=testbed-small | xargs -r docker inspect --format "
        "'{{.Name}} {{.Id}} {{.State.StartedAt}} {{.State.Status}} {{.RestartCount}}'"
    )
    for i in sorted(nodes) if nodes is not None else range(len(testbed.nodes)):
        for _ in range(3):  # watch may remove a container between `ps` and `inspect`: listed again
            r = testbed.ssh(i, listing)
            if "No such object" not in r.stderr:
                break
        assert r.returncode == 0, r.stderr
        for line in r.stdout.splitlines():
            name, cid, started, state, restarts = line.split()
            name = name.lstrip("/")
            assert restarts == "0", line  # no container is restarted in place: watch recreates
            assert name not in found, f"{name} twice: node {found[name][0]} and node {i}"
            found[name] = (i, cid, started, state)
    return found


def audit(testbed) -> str:
    return testbed.ssh(0, f"cat {STATE_DIR}/testbed-small/audit.log").stdout


@pytest.fixture
def deployed(testbed, tmp_path):
    up = launcher(testbed, "up", "--skip-doctor", cwd=tmp_path)
    assert up.returncode == 0, up.stderr
    watcher = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "launcher",
            "watch",
            "-c",
            str(CONFIG),
            "-i",
            str(testbed.inventory),
            "--interval",
            "1",
            "--backoff",
            "1",
        ],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    watcher.lines = Lines(watcher.stdout)  # read as it comes: a full pipe would block watch
    yield watcher
    watcher.terminate()
    try:
        watcher.wait(20)
    finally:
        if watcher.poll() is None:
            watcher.kill()
    launcher(testbed, "down", cwd=tmp_path)


def etcd_leases(address: str) -> dict[str, int]:
    """The leases etcd on ADDRESS holds: {lease id: its granted TTL in seconds} (etcdctl of `uv sync`)."""
    etcdctl = [str(REPO / ".venv" / "bin" / "etcdctl"), f"--endpoints=http://{address}:2379", "--command-timeout=5s"]
    listed = subprocess.run([*etcdctl, "lease", "list"], capture_output=True, text=True, timeout=30)
    assert listed.returncode == 0, listed.stderr
    leases = {}
    for lease in listed.stdout.split()[3:]:  # "found N leases" first
        alive = subprocess.run([*etcdctl, "lease", "timetolive", lease], capture_output=True, text=True, timeout=30)
        granted = re.search(r"granted with TTL\((\d+)s\)", alive.stdout)
        if alive.returncode == 0 and granted:
            leases[lease] = int(granted.group(1))
    return leases


def wait_serving(address: str, limit: float) -> dict | None:
    return wait_for(lambda: serving(address), limit, interval=0.5, what="serving again")


def test_killed_decode_rank_recreates_the_group_and_serves_again(testbed, deployed, tmp_path):
    head = testbed.nodes[0][1]
    assert serving(head)
    audit_from = len(audit(testbed))
    before = containers(testbed)
    decode = {name for name in before if "-decode-r" in name}
    assert decode == {"testbed-small-decode-r0", "testbed-small-decode-r1"}
    victim = "testbed-small-decode-r1"
    killed = time.monotonic()
    testbed.ssh(before[victim][0], f"docker kill {victim}", check=True)

    def group_recreated():
        now = containers(testbed, {before[n][0] for n in decode})
        fresh = [n for n in decode if n in now and now[n][1] != before[n][1] and now[n][3] == "running"]
        return len(fresh) == len(decode)

    # Both ranks of the group recreated (new containers, started anew), not only the one that died.
    wait_for(group_recreated, 120, interval=1, what="both decode ranks recreated")
    after = containers(testbed)
    for name in decode:
        assert after[name][0] == before[name][0] and after[name][2] != before[name][2], (before[name], after[name])
    reply = wait_serving(head, 120)
    assert reply is not None, "never served again"
    print(f"\nkill of a decode rank -> serving again: {time.monotonic() - killed:.1f}s")
    # Everything else was left alone: same containers, never restarted.
    others = {n: before[n] for n in before if n not in decode}
    assert {n: after[n] for n in others} == others, containers(testbed)
    # The request crossed the prefill and the new decode ranks.
    assert_workers_logged(reply, lambda role, request: launcher(testbed, "logs", "--role", role, "--grep", request,
                                                                cwd=tmp_path))  # fmt: skip
    actions = audit(testbed)[audit_from:]
    assert "restarting group decode" in actions and "serving again" in actions, actions
    assert "restarting group decode" in deployed.lines.text()


def test_killed_etcd_is_restarted_and_workers_serve_again(testbed, deployed, tmp_path):
    """Watch restarts etcd alone and in place (same container, its data kept): the workers, NATS and the frontend
        are the same containers, never restarted, and the round that restarted etcd did nothing else. They are still
        the same half a minute later: a fresh, empty etcd would have lost every Dynamo process's lease, and they all
        exit (code 0) some 12-20 s after it (ai-dynamo/dynamo#3493): the test waits until every lease held before the
    kill has outlived its TTL since, renewed by its process."""
    head = testbed.nodes[0][1]
    etcd = "testbed-small-etcd"
    audit_from = len(audit(testbed))
    before = containers(testbed)
    assert before[etcd][3] == "running"
    leases = etcd_leases(head)
    assert leases, "no Dynamo process holds an etcd lease"
    killed = time.monotonic()
    testbed.ssh(before[etcd][0], f"docker kill {etcd}", check=True)

    def etcd_restarted():
        now = containers(testbed, {before[etcd][0]})
        return etcd in now and now[etcd][2] != before[etcd][2] and now[etcd][3] == "running"

    wait_for(etcd_restarted, 90, interval=1, what="watch restarted etcd")
    restarted = time.monotonic() - killed
    back = containers(testbed)
    assert back[etcd][1] == before[etcd][1], "etcd was recreated (its data lost), not restarted in place"
    others = {n: before[n] for n in before if n != etcd}
    assert any("-prefill-r" in n for n in others) and any("-decode-r" in n for n in others), others
    changed = {n: (before[n], back.get(n)) for n in others if back.get(n) != before[n]}
    assert not changed, f"{changed}\nwatch said:\n{deployed.lines.text()}\naudit:\n{audit(testbed)[audit_from:]}"
    reply = wait_serving(head, 60)
    print(f"\nkill of etcd -> etcd restarted: {restarted:.1f}s, serving: {time.monotonic() - killed:.1f}s")
    assert_workers_logged(reply, lambda role, request: launcher(testbed, "logs", "--role", role, "--grep", request,
                                                                cwd=tmp_path))  # fmt: skip
    # watch's own actions, up to etcd serving again: etcd restarted, nothing else touched.
    actions = [line for line in audit(testbed)[audit_from:].splitlines() if '"watch: ' in line]
    done = next(i for i, line in enumerate(actions) if "etcd serving again" in line)
    assert len(actions[: done + 1]) == 2 and "watch: restarting etcd (1/" in actions[0], actions
    # Every lease held before the kill is kept alive by its process: still there a whole TTL after etcd came
    # back (a lease not renewed expires within its TTL; an empty etcd would have none of them), so no worker
    # loses its lease and exits, as they do some 12-20 s after an etcd that forgot them.
    ttl = max(leases.values())
    back_at = time.monotonic()
    wait_for(lambda: time.monotonic() - back_at > ttl + 2 and etcd_leases(head).keys() >= leases.keys(), ttl + 60,
             interval=1, what=f"the leases held before the kill ({sorted(leases)}) renewed past their TTL")  # fmt: skip
    later = containers(testbed)
    assert {n: later.get(n) for n in others} == others, f"workers restarted after etcd came back: {later}"
    assert wait_serving(head, 30)
