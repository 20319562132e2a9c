"""`launcher image build`, `image push` and `stage` on the testbed, as a user runs them (fresh `launcher`
processes). This machine has no Docker engine of its own: the last testbed node's engine plays the
operator's (DOCKER_HOST at its socket, as scripts/testbed's sshd does for the nodes); the first four
nodes are the deployment. Each node sees its own /srv/testbed-node: the weights' local disk."""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml

from launcher.config.schema import SSHSettings
from launcher.operations import ship as ship_module
from launcher.plan.types import Node
from launcher.transport.host import Options
from launcher.transport.relay import Feed, Hop, Relay
from launcher.transport.ssh import SSHHost
from tests.helpers import REPO, STATE_DIR

pytestmark = pytest.mark.testbed

LAUNCHER = str(Path(sys.executable).with_name("launcher"))
LOCAL = "/srv/testbed-node"
TARGET = f"{LOCAL}/models/w"
TAG = "launcher-ship-test:1"
NODES = 4


class Ship:
    def __init__(self, testbed, tmp: Path):
        assert len(testbed.nodes) > NODES, f"needs {NODES + 1} testbed nodes (LAUNCHER_TESTBED_NODES)"
        self.testbed, self.tmp = testbed, tmp
        engine_node = testbed.nodes[-1][0]
        self.env = dict(os.environ, DOCKER_HOST=f"unix://{testbed.dir}/nodes/{engine_node}/docker.sock")
        inv = yaml.safe_load(testbed.inventory.read_text())
        inv["nodes"] = inv["nodes"][:NODES]
        self.inventory = tmp / "inventory.yaml"
        self.inventory.write_text(yaml.safe_dump(inv))
        self.config = self.deployment(TAG)
        self.names = [name for name, _ in testbed.nodes[:NODES]]

    def deployment(self, image: str) -> Path:
        data = yaml.safe_load((REPO / "configs" / "testbed-small.yaml").read_text())
        data["image"] = image
        data["state_dir"] = STATE_DIR
        data["container"]["volumes"] = [
            v.replace("${TESTBED_REPO}/models/tiny", TARGET) for v in data["container"]["volumes"]
        ]
        path = self.tmp / f"deploy-{image.replace(':', '-').replace('/', '-')}.yaml"
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        return path

    def launcher(self, *args: str, config: Path | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
        argv = [LAUNCHER, *args, "-c", str(config or self.config), "-i", str(self.inventory)]
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=self.env, cwd=self.tmp)

    def popen(self, *args: str) -> subprocess.Popen:
        argv = [LAUNCHER, *args, "-c", str(self.config), "-i", str(self.inventory)]
        return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=self.env)

    def image_id(self, i: int) -> str:
        return self.image_id_of(i, TAG)

    def image_id_of(self, i: int, ref: str) -> str:
        return self.testbed.ssh(i, f"docker image inspect --format '{{{{.Id}}}}' {ref} 2>/dev/null").stdout.strip()

    def drop_image(self, i: int) -> None:
        self.testbed.ssh(i, f"docker image rm -f {TAG} >/dev/null 2>&1; true", check=True)

    def clean_disks(self) -> None:
        for i in range(NODES):
            self.testbed.ssh(i, f"rm -rf {LOCAL}/models {LOCAL}/src", check=True)


@pytest.fixture(scope="module")
def ship(testbed, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ship")
    s = Ship(testbed, tmp)
    for i in range(NODES):  # each node's own disk, or the stage tests prove nothing
        seen = testbed.ssh(i, f"cat {LOCAL}/.node").stdout.strip()
        assert seen == testbed.nodes[i][0], f"node {i} has no private {LOCAL}: restart the testbed ({seen!r})"
    yield s
    testbed.run("shape", "off", check=False)
    for i in range(NODES):
        s.drop_image(i)
        testbed.ssh(i, "docker image rm launcher-ship-victim:1 >/dev/null 2>&1; true")
    s.clean_disks()


@pytest.fixture(scope="module")
def built(ship):
    """`launcher image build` of a ~40 MB image (random bytes on the testbed image) on the operator's
    engine, tagged with the deployment file's `image` (no --tag)."""
    context = ship.tmp / "context"
    context.mkdir()
    (context / "blob").write_bytes(os.urandom(40 << 20))
    (context / "Dockerfile").write_text(f"FROM {ship.testbed.vars['TESTBED_IMAGE']}\nCOPY blob /blob\n")
    proc = ship.launcher("image", "build", "-f", str(context / "Dockerfile"), timeout=600)
    engine_id = subprocess.run(
        ["docker", "image", "inspect", "--format", "{{.Id}}", TAG], capture_output=True, text=True, env=ship.env
    ).stdout.strip()
    return proc, engine_id


@contextmanager
def shaped(testbed, rate: str):
    testbed.run("shape", rate)
    try:
        yield
    finally:
        testbed.run("shape", "off")


class Progress:
    """A running `launcher` whose progress lines (stderr) are read as they come."""

    def __init__(self, proc: subprocess.Popen):
        self.proc, self.lines = proc, []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.proc.stderr:
            self.lines.append(line)

    def received(self, name: str) -> float:
        """MB the node held at the last progress line that named it."""
        for line in reversed(self.lines):
            m = re.search(rf"\b{re.escape(name)} ([\d.]+) (B|kB|MB|GB)\b", line)
            if m:
                return float(m.group(1)) * {"B": 1e-6, "kB": 1e-3, "MB": 1, "GB": 1e3}[m.group(2)]
        return 0.0

    def wait_for(self, name: str, mb: float, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while self.received(name) < mb:
            assert self.proc.poll() is None, "".join(self.lines)
            assert time.monotonic() < deadline, f"{name} never reached {mb} MB:\n" + "".join(self.lines)
            time.sleep(0.1)

    def finish(self, timeout: float = 300) -> tuple[int, str, str]:
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise
        self.reader.join(10)
        return code, self.proc.stdout.read(), "".join(self.lines)


def nodes_of(stdout: str) -> dict[str, dict]:
    return {n["node"]: n for n in json.loads(stdout)["nodes"]}


# -- image build -------------------------------------------------------------------------------------


def test_build_streams_the_log_and_tags_the_files_image(built):
    proc, engine_id = built
    assert proc.returncode == 0, proc.stderr + proc.stdout
    assert "Step 2/2 : COPY blob /blob" in proc.stdout  # the build's own log, as it ran
    assert f"built {TAG} ({engine_id})" in proc.stdout and engine_id.startswith("sha256:")


def test_a_failing_build_exits_1_with_its_last_lines(ship):
    context = ship.tmp / "bad-context"
    context.mkdir(exist_ok=True)
    (context / "Dockerfile").write_text(f"FROM {ship.testbed.vars['TESTBED_IMAGE']}\nCOPY no-such-file /x\n")
    proc = ship.launcher("image", "build", "-f", str(context / "Dockerfile"), "--tag", "launcher-ship-bad:1")
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.strip().splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith("error: "))
    assert lines[first].startswith("error: the build failed:") and "no-such-file" in lines[first], proc.stderr
    assert any("Step 2/2 : COPY no-such-file /x" in line for line in lines[first + 1 :]), proc.stderr
    assert "Traceback" not in proc.stderr


# -- image push --------------------------------------------------------------------------------------


def test_push_relays_one_stream_to_every_node_and_skips_holders(ship, built):
    _, engine_id = built
    for i in range(NODES):
        ship.drop_image(i)
    # node 2 already holds it: loaded from the engine's own save, the old way
    save = subprocess.Popen(["docker", "save", TAG], stdout=subprocess.PIPE, env=ship.env)
    subprocess.run(ship.testbed.ssh_command(2, "docker load"), stdin=save.stdout, capture_output=True, check=True)
    save.wait(60)
    proc = ship.launcher("image", "push", "--json")
    assert proc.returncode == 0, proc.stderr + proc.stdout
    nodes = nodes_of(proc.stdout)
    assert nodes[ship.names[2]]["status"] == "skipped"
    pushed = [n for n in ship.names if n != ship.names[2]]
    assert [nodes[n]["status"] for n in pushed] == ["pushed"] * 3, nodes
    # ONE stream left this machine; the other nodes got it from a node
    assert [nodes[n]["from"] for n in pushed].count("this machine") == 1, nodes
    assert {ship.image_id(i) for i in range(NODES)} == {engine_id}
    assert re.search(rf"{ship.names[0]} [\d.]+ [kM]?B [\d.]+ [kM]?B/s", proc.stderr), proc.stderr  # bytes and rate
    again = ship.launcher("image", "push", "--json")
    assert again.returncode == 0 and {n["status"] for n in nodes_of(again.stdout).values()} == {"skipped"}


def test_a_link_cut_mid_push_names_the_node_and_the_others_still_get_it(ship, built):
    _, engine_id = built
    for i in range(NODES):
        ship.drop_image(i)
    testbed, cut = ship.testbed, 1
    with shaped(testbed, "40mbit"):  # 40 MB at 5 MB/s: the cut lands mid-way
        run = Progress(ship.popen("image", "push", "--json"))
        try:
            run.wait_for(ship.names[cut], 12)
            testbed.run("cut", str(cut))
            code, out, err = run.finish()
        finally:
            testbed.run("heal", str(cut))
    assert code == 1, err
    nodes = nodes_of(out)
    assert nodes[ship.names[cut]]["status"] == "failed" and "no answer" in nodes[ship.names[cut]]["detail"], nodes
    next_node = rf"node {cut + 1} \({ship.names[cut + 1]} [\d.]+\)"
    assert re.search(rf"{next_node}: re-routed around node {cut} ", err), err
    for i in range(NODES):
        if i != cut:
            assert nodes[ship.names[i]]["status"] == "pushed", nodes
            assert ship.image_id(i) == engine_id, f"node {i}"
    again = ship.launcher("image", "push", "--json")
    assert again.returncode == 0, again.stderr
    nodes = nodes_of(again.stdout)
    # Pushed now; or, where the cut landed after its engine had loaded every byte (only the answer was
    # lost: seen on a loaded CI machine), found there already. Either way it holds the image after.
    assert nodes[ship.names[cut]]["status"] in ("pushed", "skipped"), nodes
    assert [nodes[n]["status"] for n in ship.names if n != ship.names[cut]] == ["skipped"] * 3
    assert ship.image_id(cut) == engine_id


def relays_running(names: list[str]) -> list[int]:
    """The relay processes running in these testbed nodes' network namespaces (not another test's or
    another checkout's relays on this machine)."""
    spaces = {f"net:[{os.stat(f'/run/netns/{n}').st_ino}]" for n in names if os.path.exists(f"/run/netns/{n}")}
    assert spaces, f"no network namespace of {names}"
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if b"launcher-relay" in (entry / "cmdline").read_bytes() and os.readlink(entry / "ns/net") in spaces:
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def test_ctrl_c_during_push_stops_every_relay_and_says_what_each_node_holds(ship, built):
    for i in range(NODES):
        ship.drop_image(i)
    with shaped(ship.testbed, "40mbit"):
        run = Progress(ship.popen("image", "push"))
        run.wait_for(ship.names[NODES - 1], 5)
        run.proc.send_signal(signal.SIGINT)
        code, _, err = run.finish(120)
    assert code == 130, err
    assert "interrupted" in err and "Traceback" not in err
    for i, name in enumerate(ship.names):
        assert re.search(rf"node {i} \({name} [\d.]+\): lacks it", err), err
    deadline = time.monotonic() + 30
    while relays_running(ship.names) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not relays_running(ship.names), "a relay outlived Ctrl-C"


def test_a_node_keeps_only_the_launchers_image_id_and_no_other_tag_changes(ship, built):
    """A stream sealed with the run's key (a compromised upstream holds it) carrying ANOTHER image under
    the plan's name, and retagging an image the node holds: the node loads it, sees the plan's name
    hold an ID that is not the launcher's, and undoes it all: no tag changed, nothing of it left."""
    _, engine_id = built
    victim, base = "launcher-ship-victim:1", ship.testbed.vars["TESTBED_IMAGE"]
    ship.drop_image(0)
    ship.testbed.ssh(0, f"docker tag {base} {victim}", check=True)
    before = ship.image_id_of(0, victim)
    hostile = ship.tmp / "hostile"
    hostile.mkdir(exist_ok=True)
    (hostile / "Dockerfile").write_text(f"FROM {base}\nLABEL launcher.test=hostile\n")
    docker = ["docker", "--host", ship.env["DOCKER_HOST"]]
    subprocess.run([*docker, "build", "-q", "-t", victim, str(hostile)], check=True, capture_output=True)
    subprocess.run([*docker, "tag", victim, TAG], check=True)  # the operator's TAG put back below
    inv = yaml.safe_load(ship.inventory.read_text())
    ssh = SSHSettings(**{k: inv["ssh"][k] for k in ("user", "key", "known_hosts", "connect_timeout")})
    host = SSHHost(Node(0, ship.names[0], inv["nodes"][0]["address"], ssh, 0), Options())
    hop = Hop("0", host, {"sink": {"kind": "image", "ref": TAG, "id": engine_id}})

    def save():
        proc = subprocess.Popen([*docker, "save", TAG, victim], stdout=subprocess.PIPE)
        while data := proc.stdout.read(1 << 20):
            yield data
        proc.wait(60)

    try:
        result = Relay([hop], ship_module.relay_script(None, "relay"), ship_module.program(), Feed(save)).run()
    finally:
        subprocess.run([*docker, "tag", engine_id, TAG], check=True)
        host.close()
    sink = result["0"].sink
    assert sink["ok"] is False and "not the launcher's" in sink["detail"], sink
    assert ship.image_id(0) == "", "the plan's name was kept for another image"
    assert ship.image_id_of(0, victim) == before, "another tag was changed"
    hostile_id = subprocess.run([*docker, "image", "inspect", "-f", "{{.Id}}", victim], capture_output=True,
                                text=True).stdout.strip()  # fmt: skip
    assert ship.image_id_of(0, hostile_id) == "", "the image it brought in is still there"
    proc = ship.launcher("image", "push", "--json")  # the honest push still works after it
    assert proc.returncode == 0 and ship.image_id(0) == engine_id, proc.stderr + proc.stdout


def test_an_image_the_local_engine_does_not_hold_is_one_line_and_exit_2(ship):
    proc = ship.launcher("image", "push", config=ship.deployment("launcher-ship-missing:404"))
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"error: image: launcher-ship-missing:404 is not in the local Docker engine ({ship.env['DOCKER_HOST']}): "
        "build it (launcher image build) or pull it (docker pull launcher-ship-missing:404) first"
    ]


# -- stage -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def weights(ship):
    src = ship.tmp / "weights"
    (src / "tokenizer").mkdir(parents=True)
    (src / "config.json").write_text('{"num_hidden_layers": 2}\n')
    (src / "model-00001-of-00002.safetensors").write_bytes(os.urandom(6 << 20))
    (src / "model-00002-of-00002.safetensors").write_bytes(os.urandom(4 << 20))
    (src / "tokenizer" / "tokenizer.json").write_bytes(os.urandom(100_000))
    return src


def doctor_models(ship) -> dict[int, dict]:
    proc = ship.launcher("doctor", "--json", "--no-args", "--connect-timeout", "5")
    return {c["node"]: c for c in json.loads(proc.stdout)["checks"] if c["name"] == "model"}


def stage(ship, *args: str) -> tuple[subprocess.CompletedProcess, dict]:
    proc = ship.launcher("stage", "--json", *args)
    return proc, nodes_of(proc.stdout) if proc.stdout.strip() else {}


def test_stage_then_an_altered_file_is_named_by_doctor_and_repaired_alone(ship, weights):
    ship.clean_disks()
    proc, nodes = stage(ship, "--from", str(weights))
    assert proc.returncode == 0, proc.stderr + proc.stdout
    assert {n["status"] for n in nodes.values()} == {"staged"} and all(n["path"] == TARGET for n in nodes.values())
    assert [n["from"] for n in nodes.values()].count("this machine") == 1
    for i in range(NODES):  # the manifest is next to the weights, on every node
        manifest = json.loads(ship.testbed.ssh(i, f"cat {TARGET}/.launcher-manifest").stdout)
        assert sorted(f["path"] for f in manifest["files"]) == [
            "config.json", "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors",
            "tokenizer/tokenizer.json",
        ]  # fmt: skip
    checks = doctor_models(ship)
    assert {c["status"] for c in checks.values()} == {"ok"} and len({c["detail"] for c in checks.values()}) == 1
    # one byte changed on node 2, in place (same size)
    altered = "model-00002-of-00002.safetensors"
    ship.testbed.ssh(2, f"printf Z | dd of={TARGET}/{altered} bs=1 seek=4096 conv=notrunc status=none", check=True)
    before = ship.testbed.ssh(2, f"stat -c '%n %Y' {TARGET}/config.json {TARGET}/model-00001*").stdout
    checks = doctor_models(ship)
    assert checks[2]["status"] == "fail" and f"altered {altered}" in checks[2]["detail"], checks[2]
    assert "launcher stage" in checks[2]["fix"]
    assert [checks[i]["status"] for i in (0, 1, 3)] == ["ok"] * 3
    proc, nodes = stage(ship, "--from", str(weights))
    assert proc.returncode == 0, proc.stderr + proc.stdout
    assert nodes[ship.names[2]]["status"] == "staged" and nodes[ship.names[2]]["written"] == [altered]
    assert [nodes[ship.names[i]]["status"] for i in (0, 1, 3)] == ["complete"] * 3
    assert ship.testbed.ssh(2, f"stat -c '%n %Y' {TARGET}/config.json {TARGET}/model-00001*").stdout == before
    assert {c["status"] for c in doctor_models(ship).values()} == {"ok"}


def weights_files(ship, nodes: tuple[int, ...]) -> dict[int, str]:
    """Every weights file on each node (not stage's own manifest): path, size and mtime to the nanosecond.
    The nodes are asked at once (an SSH round trip costs about a second here)."""
    find = f"cd {TARGET} && find . -type f ! -name .launcher-manifest -exec stat -c '%n %s %y' {{}} + | sort"
    with ThreadPoolExecutor(len(nodes)) as pool:
        listings = pool.map(lambda i: ship.testbed.ssh(i, find, check=True).stdout, nodes)
        return dict(zip(nodes, listings, strict=True))


def test_verify_finds_a_file_altered_with_its_size_and_mtime_kept(ship, weights):
    """Plain `stage` trusts a file whose size and mtime match what it staged; `stage --verify` hashes every
    file again, names the altered one on its node, copies it again, and leaves the other nodes' files alone."""
    first = stage(ship, "--from", str(weights))[0]  # whatever an earlier test left, every node holds the weights
    assert first.returncode == 0, first.stderr + first.stdout
    others = weights_files(ship, (0, 2, 3))
    altered = "model-00002-of-00002.safetensors"
    path, source = f"{TARGET}/{altered}", (weights / altered).read_bytes()
    flipped = f"\\{source[4096] ^ 0xFF:03o}"  # that byte with every bit flipped (printf's octal escape)
    flip = f"printf '{flipped}' | dd of={path} bs=1 seek=4096 conv=notrunc status=none"
    listed = f"stat -c '%s %y' {path}"
    # the byte flipped in place, then the file's mtime set back to what it was
    keep = f"touch -r {path} {LOCAL}/ref && {flip} && touch -r {LOCAL}/ref {path} && rm {LOCAL}/ref"
    done = ship.testbed.ssh(1, f"{listed} && {keep} && {listed} && sha256sum {path}", check=True).stdout.splitlines()
    assert done[0] == done[1] and done[2].split()[0] != hashlib.sha256(source).hexdigest(), done
    proc, nodes = stage(ship, "--from", str(weights))
    assert proc.returncode == 0, proc.stderr + proc.stdout
    assert {n["status"] for n in nodes.values()} == {"complete"}, nodes  # size and mtime match: trusted
    proc, nodes = stage(ship, "--verify", "--from", str(weights))
    assert proc.returncode == 0, proc.stderr + proc.stdout
    assert nodes[ship.names[1]]["status"] == "staged" and nodes[ship.names[1]]["written"] == [altered], nodes
    assert [nodes[ship.names[i]]["status"] for i in (0, 2, 3)] == ["complete"] * 3, nodes
    repaired = ship.testbed.ssh(1, f"sha256sum {path}", check=True).stdout.split()[0]
    assert repaired == hashlib.sha256(source).hexdigest()
    assert weights_files(ship, (0, 2, 3)) == others  # nothing rewritten there, by either stage


def test_a_partial_file_continues_and_a_missing_one_is_named(ship, weights):
    ship.clean_disks()
    first = stage(ship, "--from", str(weights))[0]
    assert first.returncode == 0, first.stderr + first.stdout
    big = "model-00001-of-00002.safetensors"
    part = f"{TARGET}/{big}.launcher-part"
    ship.testbed.ssh(3, f"mv {TARGET}/{big} {part} && truncate -s 3000000 {part}", check=True)
    ship.testbed.ssh(1, f"rm {TARGET}/tokenizer/tokenizer.json", check=True)
    checks = doctor_models(ship)
    assert checks[3]["status"] == "fail" and f"missing {big}" in checks[3]["detail"]
    assert checks[1]["status"] == "fail" and "missing tokenizer/tokenizer.json" in checks[1]["detail"]
    proc, nodes = stage(ship, "--from", str(weights))
    assert proc.returncode == 0, proc.stderr + proc.stdout
    assert nodes[ship.names[3]]["written"] == [big] and f"continued {big} at 3.0 MB" in nodes[ship.names[3]]["detail"]
    assert nodes[ship.names[1]]["written"] == ["tokenizer/tokenizer.json"]
    assert ship.testbed.ssh(3, f"cmp {TARGET}/{big} {weights}/{big}").returncode == 0
    assert {c["status"] for c in doctor_models(ship).values()} == {"ok"}


def test_stage_from_a_node_sends_nothing_through_this_machine(ship, weights):
    ship.clean_disks()
    ship.testbed.ssh(0, f"mkdir -p {LOCAL}/src && cp -r {weights}/. {LOCAL}/src/", check=True)
    proc, nodes = stage(ship, "--from", f"{ship.names[0]}:{LOCAL}/src")
    assert proc.returncode == 0, proc.stderr + proc.stdout
    assert {n["status"] for n in nodes.values()} == {"staged"}
    assert "this machine" not in [n["from"] for n in nodes.values()], nodes
    for i in range(1, NODES):
        assert ship.testbed.ssh(i, f"cmp {TARGET}/config.json {weights}/config.json").returncode == 0


def test_out_of_disk_on_one_node_is_named_and_nothing_is_copied(ship, weights):
    ship.clean_disks()
    ship.testbed.ssh(1, f"mkdir -p {TARGET} && mount -t tmpfs -o size=1m launcher-ship-test {TARGET}", check=True)
    try:
        proc, nodes = stage(ship, "--from", str(weights))
        assert proc.returncode == 1, proc.stderr
        named = [line for line in proc.stderr.splitlines() if "not enough space" in line]
        assert len(named) == 1 and f"node 1 ({ship.names[1]} " in named[0], proc.stderr
        assert re.search(r"needs 10\.\d MB, has 1\.0 MB free", named[0]), named[0]
        assert "nothing was copied to any node" in proc.stderr
        assert nodes[ship.names[1]]["status"] == "no-space"
        for i in range(NODES):
            listing = ship.testbed.ssh(i, f"ls -A {TARGET} 2>/dev/null").stdout
            assert listing == "", f"node {i} was touched: {listing}"
    finally:
        ship.testbed.ssh(1, f"umount {TARGET}")


BAD_FROM = [
    ("/no/such/weights", "--from: /no/such/weights: no such directory here"),
    ("{node0}:/no/such/weights", "--from: {node0}:/no/such/weights: no such directory on node 0"),
    ("nosuchnode:/x", "--from: nosuchnode:/x: no node 'nosuchnode'"),
]


@pytest.mark.parametrize(("given", "says"), BAD_FROM, ids=["here", "on-a-node", "no-node"])
def test_a_bad_from_is_one_line_and_exit_2(ship, given, says):
    given, says = given.format(node0=ship.names[0]), says.format(node0=ship.names[0])
    proc = ship.launcher("stage", "--from", given)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {says}"), proc.stderr


def test_ctrl_c_during_stage_keeps_the_partial_file_and_the_next_stage_continues_it(ship):
    ship.clean_disks()
    src = ship.tmp / "big-weights"
    src.mkdir(exist_ok=True)
    (src / "config.json").write_text("{}\n")
    (src / "model.safetensors").write_bytes(os.urandom(24 << 20))
    with shaped(ship.testbed, "16mbit"):  # 24 MB at 2 MB/s
        run = Progress(ship.popen("stage", "--from", str(src)))
        run.wait_for(ship.names[NODES - 1], 2)
        run.proc.send_signal(signal.SIGINT)
        code, _, err = run.finish(120)
    assert code == 130, err
    assert "interrupted" in err and "Traceback" not in err
    said = [line for line in err.splitlines() if line.startswith(f"  node {NODES - 1} ")]
    assert said and "model.safetensors" in said[0] and "partial (kept" in said[0], err
    part = f"{TARGET}/model.safetensors.launcher-part"
    held = int(ship.testbed.ssh(NODES - 1, f"stat -c %s {part}").stdout or 0)
    assert 0 < held < 24 << 20
    proc, nodes = stage(ship, "--from", str(src))
    assert proc.returncode == 0, proc.stderr + proc.stdout
    assert "continued model.safetensors at" in nodes[ship.names[NODES - 1]]["detail"], nodes
    assert ship.testbed.ssh(NODES - 1, f"cmp {TARGET}/model.safetensors {src}/model.safetensors").returncode == 0
