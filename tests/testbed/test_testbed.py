"""The testbed itself: real SSH with checked host keys, one Docker engine per node, containers on the node's own
address, fault injection (kill-sshd, kill-docker, cut) with heal, and a `down` that leaves nothing behind."""

from __future__ import annotations

import concurrent.futures
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from tests.conftest import (
    REPO,
    SMALL_TESTBED,
    Testbed,
    bring_up,
    env_for_testbed,
    max_testbed_nodes,
    require_testbed_capable,
    unavailable,
)
from tests.helpers import wait_for

pytestmark = pytest.mark.testbed

# Prints the address of eth0 and the interface names, from inside a container (`--network host` = the node's netns).
ADDRESS_PY = (
    "import fcntl, socket, struct; "
    "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
    "addr = socket.inet_ntoa(fcntl.ioctl(s.fileno(), 0x8915, struct.pack('256s', b'eth0'))[20:24]); "
    "print(addr, ','.join(sorted(n for _, n in socket.if_nameindex())))"
)


def status(tb: Testbed) -> dict[str, dict]:
    out = tb.run("status", "--json", check=False).stdout
    return {row["name"]: row for row in json.loads(out)["nodes"]}


def assert_healthy(tb: Testbed, i: int) -> None:
    ok = tb.ssh(i, "docker info --format '{{.ServerVersion}}'")
    assert ok.returncode == 0, f"{tb.nodes[i][0]} not healthy after heal: {ok.stderr}"
    run = tb.ssh(i, tb.docker_run(tb.vars["TESTBED_IMAGE"], "true"))
    assert run.returncode == 0, run.stderr


def test_bring_up_time(testbed: Testbed, capsys: pytest.CaptureFixture[str]) -> None:
    with capsys.disabled():
        print(f"\n[testbed] `scripts/testbed up {len(testbed.nodes)}` took {testbed.up_seconds:.2f} s")
        print(f"[testbed] {testbed.up_output.strip()}")
    n = len(testbed.nodes)  # 5 (SMALL_TESTBED), or 13 where this process ran a file that grew it first
    assert n in {min(max_testbed_nodes(), SMALL_TESTBED), max_testbed_nodes()}
    assert re.search(rf"^testbed: {n} nodes up in [\d.]+ s", testbed.up_output, re.M), testbed.up_output
    # What `up` said is so: each node's SSH reaches that node, in the namespace that holds its own address.
    for i, (name, address) in enumerate(testbed.nodes):
        seen = testbed.ssh(i, "ip -o -4 addr show")
        assert seen.returncode == 0 and f"inet {address}/" in seen.stdout, (name, seen.stdout + seen.stderr)


def test_inventory_shape(testbed: Testbed) -> None:
    inv = yaml.safe_load(testbed.inventory.read_text())
    assert testbed.inventory.read_text().startswith("# written by scripts/testbed up ")
    assert list(inv) == ["ssh", "vars", "nodes"]
    assert inv["ssh"] == {
        "user": "root",
        "port": 22,
        "key": str(testbed.dir / "id_ed25519"),
        "known_hosts": str(testbed.dir / "known_hosts"),
        "connect_timeout": 5,
    }
    assert set(inv["vars"]) == {"TESTBED_IMAGE", "TESTBED_PYTHON_HOME", "TESTBED_VENV", "TESTBED_REPO"}
    assert inv["vars"]["TESTBED_IMAGE"] == "launcher-testbed:latest"
    assert inv["vars"]["TESTBED_REPO"] == str(REPO)
    for key in ("TESTBED_PYTHON_HOME", "TESTBED_VENV", "TESTBED_REPO"):
        assert Path(inv["vars"][key]).is_dir(), key
    prefix, subnet = os.environ.get("TESTBED_PREFIX") or "tb", os.environ.get("TESTBED_SUBNET") or "10.213.0"
    assert [n["name"] for n in inv["nodes"]] == [f"{prefix}{i}" for i in range(len(inv["nodes"]))]
    assert [n["address"] for n in inv["nodes"]] == [f"{subnet}.{10 + i}" for i in range(len(inv["nodes"]))]
    hosts = [line.split()[0] for line in testbed.known_hosts.read_text().splitlines()]
    assert hosts == [n["address"] for n in inv["nodes"]]


def test_up_is_idempotent_and_grows_without_touching_nodes(testbed: Testbed) -> None:
    n = len(testbed.nodes)
    before = status(testbed)
    assert all(r["sshd"] and r["dockerd"] and r["link"] for r in before.values()), before
    t0 = time.monotonic()
    testbed.run("up", str(n))
    again = time.monotonic() - t0
    assert status(testbed) == before  # same pids: nothing restarted
    testbed.run("up", str(n + 1))  # grow by one ...
    grown = status(testbed)
    assert {k: grown[k] for k in before} == before
    added = f"{os.environ.get('TESTBED_PREFIX') or 'tb'}{n}"
    assert set(grown) - set(before) == {added} and grown[added]["sshd"] and grown[added]["dockerd"]
    testbed.run("up", str(n))  # ... and shrink back
    assert status(testbed) == before
    print(f"\nre-running `up {n}` on a running testbed took {again:.1f} s")


def test_host_keys_are_checked(testbed: Testbed, tmp_path: Path) -> None:
    ok = testbed.ssh(0, "true")
    assert ok.returncode == 0, ok.stderr
    # a known_hosts naming node 1's key for node 0's address must be refused under StrictHostKeyChecking=yes
    lines = testbed.known_hosts.read_text().splitlines()
    wrong = tmp_path / "known_hosts"
    wrong.write_text(f"{testbed.nodes[0][1]} {' '.join(lines[1].split()[1:])}\n")
    bad = subprocess.run(testbed.ssh_command(0, "true", known_hosts=wrong), capture_output=True, text=True, timeout=60)
    assert bad.returncode == 255 and "host key" in bad.stderr.lower(), bad.stderr


def test_every_node_runs_containers_on_its_own_address(testbed: Testbed) -> None:
    image = testbed.vars["TESTBED_IMAGE"]

    def probe(i: int) -> tuple[int, subprocess.CompletedProcess, subprocess.CompletedProcess]:
        engine = testbed.ssh(i, "docker info --format '{{.DockerRootDir}}'")
        inside = testbed.ssh(i, testbed.docker_run(image, "python3", "-c", ADDRESS_PY))
        return i, engine, inside

    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(probe, range(len(testbed.nodes))))
    for i, engine, inside in results:
        name, address = testbed.nodes[i]
        assert engine.returncode == 0, f"{name}: {engine.stderr}"
        # the SSH session's plain `docker` reaches this node's own engine (sshd SetEnv DOCKER_HOST)
        assert engine.stdout.strip() == str(testbed.dir / "nodes" / name / "docker-root"), engine.stdout
        assert inside.returncode == 0, f"{name}: {inside.stderr}"
        assert inside.stdout.split() == [address, "eth0,lo"], f"{name}: {inside.stdout!r}"


def test_every_node_has_a_fresh_servers_bashrc(testbed: Testbed) -> None:
    """A node's root `~/.bashrc` is its own (a freshly installed server's), not this machine's: sshd's shell
    reads it for every command, and this machine's may run `pyenv init` (about 100 processes each time)."""
    mine = Path("/root/.bashrc")
    before = mine.read_bytes() if mine.exists() else None
    for i in (0, len(testbed.nodes) - 1):
        r = testbed.ssh(i, "head -n 1 ~/.bashrc; echo rc=$?")
        assert r.returncode == 0, r.stderr
        if before is None:  # nothing to hide: the node sees this machine's (absent) file
            assert "No such file" in r.stderr
        else:
            assert r.stdout.splitlines()[0] == "# this testbed node's own ~/.bashrc (scripts/testbed node_bashrc)"
    if before is not None:
        assert mine.read_bytes() == before  # this machine's own file untouched


def test_container_runs_the_venv_stack(testbed: Testbed) -> None:
    """What deployments run: the venv's python (symlinked into TESTBED_PYTHON_HOME), etcd and nats-server."""
    venv = testbed.vars["TESTBED_VENV"]
    code = "import sys, dynamo.frontend, dynamo.mocker; print(sys.prefix)"
    cmd = " && ".join(
        [
            testbed.docker_run(testbed.vars["TESTBED_IMAGE"], "python3", "-c", code),
            testbed.docker_run(testbed.vars["TESTBED_IMAGE"], "sh", "-c", "command -v etcd; command -v nats-server"),
        ]
    )
    out = testbed.ssh(1, cmd, timeout=180)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [venv, f"{venv}/bin/etcd", f"{venv}/bin/nats-server"]


def test_kill_sshd_refuses_connections_until_heal(testbed: Testbed) -> None:
    i = len(testbed.nodes) - 1
    try:
        testbed.run("kill-sshd", str(i))
        refused = testbed.ssh(i, "true", timeout=60)
        assert refused.returncode == 255 and "Connection refused" in refused.stderr, refused.stderr
        assert status(testbed)[testbed.nodes[i][0]]["sshd"] is False
    finally:
        testbed.run("heal", str(i))
    assert_healthy(testbed, i)


def test_kill_docker_fails_docker_until_heal(testbed: Testbed) -> None:
    i = len(testbed.nodes) - 1
    name = "survivor-of-kill-docker"
    started = testbed.ssh(
        i, testbed.docker_run("--name", name, testbed.vars["TESTBED_IMAGE"], "sleep", "600", detach=True)
    )
    assert started.returncode == 0, started.stderr
    try:
        testbed.run("kill-docker", str(i))
        assert testbed.ssh(i, "true").returncode == 0  # sshd still answers
        info = testbed.ssh(i, "docker info")
        assert info.returncode != 0, info.stdout
        assert "Cannot connect to the Docker daemon" in info.stderr, info.stderr
        assert status(testbed)[testbed.nodes[i][0]]["dockerd"] is False
    finally:
        t0 = time.monotonic()
        testbed.run("heal", str(i))
        healed_in = time.monotonic() - t0
    assert_healthy(testbed, i)
    # containers die with the engine (no live-restore), and heal does not wait out dockerd's 10 s stop timeout
    ps = testbed.ssh(i, f"docker ps -a --filter name={name} --format '{{{{.State}}}}'; docker rm -f {name}")
    assert ps.stdout.split()[:1] == ["exited"], ps
    print(f"\nheal of node {i}'s dockerd took {healed_in:.1f} s")


def test_cut_times_out_until_heal(testbed: Testbed) -> None:
    i = len(testbed.nodes) - 2
    try:
        testbed.run("cut", str(i))
        t0 = time.monotonic()
        cut = testbed.ssh(i, "true", timeout=60)
        elapsed = time.monotonic() - t0
        assert cut.returncode == 255 and "timed out" in cut.stderr, cut.stderr
        assert elapsed >= 4.5, f"gave up after {elapsed:.1f} s, expected the 5 s connect timeout"
        row = status(testbed)[testbed.nodes[i][0]]
        assert row["link"] is False and row["sshd"] and row["dockerd"], row
    finally:
        testbed.run("heal", str(i))
    assert_healthy(testbed, i)


def _our_pids_alive(pids: list[int]) -> list[int]:
    alive = []
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state not in ("Z", "X"):  # a zombie is dead; it only waits for a parent that may not reap
            alive.append(pid)
    return alive


def test_block_ssh_times_ssh_out_while_the_nodes_ports_answer_until_heal(testbed: Testbed) -> None:
    """block-ssh: the node's SSH port drops everything (a node the launcher cannot manage) while its other
    ports (here a python http.server started on it) still answer; heal lets SSH through again."""
    i = len(testbed.nodes) - 2
    address = testbed.nodes[i][1]
    server = testbed.ssh(i, "nohup python3 -m http.server 18089 --bind 0.0.0.0 >/dev/null 2>&1 & echo $!")
    assert server.returncode == 0 and server.stdout.strip().isdigit(), server.stderr
    try:
        wait_for(lambda: port_answers(address, 18089), 30)
        testbed.run("block-ssh", str(i))
        blocked = testbed.ssh(i, "true", timeout=60)
        assert blocked.returncode == 255 and "timed out" in blocked.stderr, blocked.stderr
        assert port_answers(address, 18089)
        testbed.run("block-ssh", str(i))  # idempotent: one rule, which heal removes
    finally:
        testbed.run("heal", str(i))
    assert testbed.ssh(i, f"kill {server.stdout.strip()}").returncode == 0  # SSH answers again
    assert_healthy(testbed, i)


def port_answers(address: str, port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://{address}:{port}/", timeout=5) as r:
            return r.status == 200
    except OSError:
        return False


def test_down_leaves_nothing_behind() -> None:
    """A second, 2-node testbed (own dir, prefix, subnet, bridge) with running containers, then `down`."""
    require_testbed_capable()
    state_dir = Path(tempfile.mkdtemp(prefix="tbz-", dir="/tmp"))  # short: unix socket paths live under it
    # Next to the session's testbed, whatever TESTBED_PREFIX/SUBNET it uses (two testbeds may run at once).
    prefix = (os.environ.get("TESTBED_PREFIX") or "tb")[:6] + "z"
    a, b, c = (os.environ.get("TESTBED_SUBNET") or "10.213.0").split(".")
    subnet = f"{a}.{b}.{(int(c) + 1) % 256}"
    env = env_for_testbed(TESTBED_DIR=str(state_dir), TESTBED_PREFIX=prefix, TESTBED_SUBNET=subnet,
                          TESTBED_BRIDGE=f"{prefix}br0")  # fmt: skip
    tb = None
    try:
        tb = bring_up(2, env)
        assert [a for _, a in tb.nodes] == [f"{subnet}.10", f"{subnet}.11"]
        for i in range(2):
            started = tb.ssh(i, tb.docker_run(tb.vars["TESTBED_IMAGE"], "sleep", "600", detach=True))
            assert started.returncode == 0, started.stderr
        pids = []
        for row in json.loads(tb.run("status", "--json").stdout)["nodes"]:
            assert all(row["pids"].values()), row
            pids += row["pids"].values()
            # everything in the namespace: sshd, containerd, dockerd, shims, the containers' processes
            pids += [int(p) for p in subprocess.run(["ip", "netns", "pids", row["name"]], capture_output=True,
                                                    text=True, check=True).stdout.split()]  # fmt: skip
        assert len(pids) >= 2 * 5

        t0 = time.monotonic()
        down = tb.run("down")
        print(f"\n[testbed] down (2 nodes, 2 containers) took {time.monotonic() - t0:.2f} s: {down.stdout.strip()}")

        netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
        assert not [line for line in netns.splitlines() if line.startswith("tbz")], netns
        links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True).stdout
        assert "tbz" not in links, links
        assert _our_pids_alive(pids) == []
        assert str(state_dir) not in Path("/proc/self/mountinfo").read_text()
        assert not (state_dir / "nodes").exists()
        assert not (state_dir / "inventory.yaml").exists()
        tb.run("down")  # idempotent
        # the main testbed (if any) is untouched: its bridge is still there when it is up
    finally:
        if tb is None or _leftovers(state_dir):
            subprocess.run(
                [sys.executable, str(REPO / "scripts" / "testbed"), "down"],
                env=env,
                capture_output=True,
                timeout=300,
            )
        if not _leftovers(state_dir):
            shutil.rmtree(state_dir, ignore_errors=True)


def _leftovers(state_dir: Path) -> bool:
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return any(line.startswith("tbz") for line in netns.splitlines()) or (state_dir / "nodes").exists()


def test_fixture_skips_locally_but_fails_in_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="needs root"):
        require_testbed_capable()
    for value in ("true", "1", "yes", "TRUE"):
        monkeypatch.setenv("CI", value)
        with pytest.raises(pytest.fail.Exception, match="testbed required in CI"):
            require_testbed_capable()
        with pytest.raises(pytest.fail.Exception, match="required in CI but unavailable: no tool"):
            unavailable("no tool")
    monkeypatch.setenv("CI", "false")
    with pytest.raises(pytest.skip.Exception, match="no tool"):
        unavailable("no tool")


def test_every_ci_guard_uses_the_one_rule() -> None:
    """Only tests/conftest.py reads $CI (in_ci: true, 1 or yes); every other guard calls it or `unavailable`."""
    import re

    reads_ci = re.compile(r"""(environ(\.get)?|getenv)\(?\[?\s*["']CI["']""")
    readers = [
        path.name
        for path in sorted((REPO / "tests").glob("*.py"))
        if path.name != "conftest.py" and reads_ci.search(path.read_text())
    ]
    assert readers == [], readers


def test_not_root_is_a_clear_error() -> None:
    if os.geteuid() != 0:
        unavailable("runs as root only (checks the message a non-root user gets)")
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        unavailable("no setpriv (util-linux)")
    as_nobody = [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups"]
    script = str(REPO / "scripts" / "testbed")
    proc = subprocess.run(
        [*as_nobody, "/usr/bin/python3", script, "status"], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 2, proc
    assert proc.stderr.count("\n") == 1 and "must run as root" in proc.stderr, proc.stderr


def test_a_second_testbeds_down_leaves_this_ones_node_disks(testbed: Testbed) -> None:
    """Two testbeds side by side share /srv/testbed-node as the mount point of their nodes' private
    dirs: one's `down` must not detach the other's (it used to remove the mount point)."""
    assert testbed.ssh(0, "cat /srv/testbed-node/.node").stdout.strip() == testbed.nodes[0][0]
    state_dir = Path(tempfile.mkdtemp(prefix="tby-", dir="/tmp"))
    prefix = (os.environ.get("TESTBED_PREFIX") or "tb")[:6] + "y"
    a, b, c = (os.environ.get("TESTBED_SUBNET") or "10.213.0").split(".")
    env = env_for_testbed(
        TESTBED_DIR=str(state_dir), TESTBED_PREFIX=prefix, TESTBED_SUBNET=f"{a}.{b}.{(int(c) + 2) % 256}",
        TESTBED_BRIDGE=f"{prefix}br0",
    )  # fmt: skip
    other = bring_up(1, env)
    try:
        assert other.ssh(0, "cat /srv/testbed-node/.node").stdout.strip() == other.nodes[0][0]
    finally:
        other.run("down")
        shutil.rmtree(state_dir, ignore_errors=True)
    assert testbed.ssh(0, "cat /srv/testbed-node/.node").stdout.strip() == testbed.nodes[0][0]
