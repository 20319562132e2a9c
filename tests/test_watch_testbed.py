"""`launcher watch` on the testbed: a killed decode rank gets the decode group recreated; etcd restarted."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.helpers import REPO, STATE_DIR, launcher_on

pytestmark = pytest.mark.testbed

CONFIG = REPO / "configs" / "testbed-small.yaml"


def launcher(testbed, command: str, *args: str, cwd: Path, timeout: float = 300):
    return launcher_on(testbed, CONFIG, command, *args, cwd=cwd, timeout=timeout)


def chat_ok(address: str) -> bool:
    body = json.dumps({"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}).encode()
    req = urllib.request.Request(
        f"http://{address}:8000/v1/chat/completions", body, {"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status == 200
    except OSError:
        return False


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
    yield watcher
    watcher.terminate()
    try:
        watcher.wait(20)
    finally:
        if watcher.poll() is None:
            watcher.kill()
    launcher(testbed, "down", cwd=tmp_path)


def wait_serving(address: str, limit: float) -> float | None:
    start = time.monotonic()
    while time.monotonic() - start < limit:
        if chat_ok(address):
            return time.monotonic() - start
        time.sleep(0.5)
    return None


def test_killed_decode_rank_recreates_the_group_and_serves_again(testbed, deployed):
    head = testbed.nodes[0][1]
    assert chat_ok(head)
    before = testbed.ssh(3, "docker ps -q --no-trunc --filter name=testbed-small-decode-r1").stdout.strip()
    other = testbed.ssh(2, "docker ps -q --no-trunc --filter name=testbed-small-decode-r0").stdout.strip()
    killed = time.monotonic()
    testbed.ssh(3, "docker kill testbed-small-decode-r1", check=True)
    # serving again means: the group was recreated (new containers for both ranks) and a chat answers
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        now = testbed.ssh(2, "docker ps -q --no-trunc --filter name=testbed-small-decode-r0 --filter status=running")
        if now.stdout.strip() and now.stdout.strip() != other:
            break
        time.sleep(0.5)
    took = wait_serving(head, 120)
    assert took is not None, "never served again"
    print(f"\nkill of a decode rank -> serving again: {time.monotonic() - killed:.1f}s")
    after = testbed.ssh(3, "docker ps -q --no-trunc --filter name=testbed-small-decode-r1").stdout.strip()
    assert after and after != before
    audit = testbed.ssh(0, f"cat {STATE_DIR}/testbed-small/audit.log").stdout
    assert "restarting group decode" in audit and "serving again" in audit


def test_killed_etcd_is_restarted_and_workers_serve_again(testbed, deployed):
    head = testbed.nodes[0][1]
    etcd = "docker ps -q --no-trunc --filter name=testbed-small-etcd --filter status=running"
    old = testbed.ssh(0, etcd).stdout.strip()
    assert old
    killed = time.monotonic()
    testbed.ssh(0, "docker kill testbed-small-etcd", check=True)
    new = ""
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        new = testbed.ssh(0, etcd).stdout.strip()
        if new and new != old:
            break
        time.sleep(0.5)
    assert new and new != old, "watch never restarted etcd"
    restarted = time.monotonic() - killed
    took = wait_serving(head, 180)
    assert took is not None, "never served again after etcd was restarted"
    print(f"\nkill of etcd -> etcd restarted: {restarted:.1f}s, serving: {time.monotonic() - killed:.1f}s")
