"""`launcher scale GROUP=N` as a user runs it (fresh processes): the file edited in place with its comments
and layout kept byte for byte but the one value, every refusal one line and exit 2 with the file
untouched, and `--dry-run` saying what would start and stop while touching neither file nor node.
(Converging is `up`'s code: tests/local/test_scale_local.py runs it for real.)"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

from launcher.config.load import load
from launcher.plan.build import build
from launcher.plan.scale import strays
from launcher.plan.state import Container
from launcher.plan.types import LABEL
from tests.helpers import fresh_env, local_stack, run_cli

# Comments everywhere, flow and block styles, quotes, a `null`, odd spacing: all of it must survive.
FILE = """\
# Four nodes, mockers only.   (a comment with  odd   spacing)
deployment: scale-demo
image: "example/image:1"      # quoted on purpose
gpus_per_node: 0
model: {path: /model, name: tiny}
ssh: {port: 1, connect_timeout: 1}   # nothing listens on port 1: any connection is refused at once
container:
  ulimits:
    memlock: null
nodes:
  - {address: 127.0.1.1}
  - {address: 127.0.1.2}
  - {address: 127.0.1.3}
  - {address: 127.0.1.4}

groups:
  # prefill first: decode's replicas take the nodes after it
  prefill:
    engine: mocker
    nodes: 1
    args: {speedup-ratio: 10}
  decode:
    engine: mocker
    nodes: 1
    replicas: 2        # how many decode instances
    system_port: 9090
    args:
      speedup-ratio: 10
"""


def launcher(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    argv = [sys.executable, "-m", "launcher", *args]
    return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=120, env=fresh_env())


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "deploy.yaml"
    path.write_text(FILE)
    path.chmod(0o640)
    return path


def test_scale_edits_only_the_value_then_converges_as_up(config: Path, tmp_path: Path) -> None:
    proc = launcher("scale", "decode=3", str(config), "--skip-doctor", cwd=tmp_path)
    # The file is written before `up` runs; `up` then fails to reach the nodes (nothing listens there).
    assert "scale: decode: replicas 2 -> 3 in" in proc.stdout, proc.stdout + proc.stderr
    assert proc.returncode == 1 and "127.0.1." in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    expected = FILE.replace("replicas: 2        #", "replicas: 3        #")
    assert config.read_text() == expected
    assert config.stat().st_mode & 0o777 == 0o640
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []
    # A group without `replicas:` gets the key after its `nodes:`, and nothing else moves; a file reached
    # through a symbolic link is edited where it lies (the link stays a link).
    config.write_text(FILE)
    link = tmp_path / "link.yaml"
    link.symlink_to(config.name)
    proc = launcher("scale", "prefill=2", str(link), "--skip-doctor", cwd=tmp_path)
    assert proc.returncode == 1 and "scale: prefill: replicas 1 -> 2 in" in proc.stdout, proc.stdout + proc.stderr
    assert link.is_symlink()
    assert config.read_text() == FILE.replace("    nodes: 1\n    args:", "    nodes: 1\n    replicas: 2\n    args:", 1)


def test_dry_run_says_what_starts_and_stops_and_touches_nothing(config: Path, tmp_path: Path) -> None:
    up, down = [launcher("scale", f"decode={n}", str(config), "--dry-run", cwd=tmp_path) for n in (3, 1)]
    assert up.returncode == 0, up.stderr
    assert up.stdout.splitlines() == [
        f"scale --dry-run: decode: replicas 2 -> 3 in {config} (the file is not written, no node is touched)",
        "would start: decode.2-r0 (replica 2) on node 3 (node3 127.0.1.4)",
    ]
    assert down.returncode == 0, down.stderr
    assert "would stop: decode.1-r0 (replica 1) on node 2 (node2 127.0.1.3) (drained first)" in down.stdout
    assert config.read_text() == FILE


REFUSALS = [
    ("decode=0", "replicas of decode must be 1 to 1000"),
    ("decode=1001", "replicas of decode must be 1 to 1000"),
    ("decode=two", "replicas of decode must be a whole number, got 'two'"),
    ("decode=-1", "must be a whole number"),
    ("decode", "expected a group of the file and its replica count"),
    ("nope=2", "no group 'nope' in the file: expected one of prefill, decode"),
    ("frontend=2", "frontend is a role, not a group"),
    ("etcd=2", "etcd is a role, not a group"),
    # prefill holds node 0; 4 replicas of decode need 4 of the 3 nodes left
    ("decode=4", "cannot scale decode to 4: asks for 4 replicas of 1 node(s) but the inventory has 4 and only 3"),
]


FRESH = {"decode=two", "frontend=2", "decode=4"}  # one of each kind in a fresh process; the rest in-process (CPU)


def test_every_refusal_is_one_line_exit_2_and_the_file_untouched(config: Path, tmp_path: Path, capsys) -> None:
    fresh = [r for r in REFUSALS if r[0] in FRESH]
    with ThreadPoolExecutor(max_workers=2) as pool:
        procs = pool.map(lambda r: launcher("scale", r[0], str(config), cwd=tmp_path), fresh)
        runs = dict(zip(fresh, procs, strict=True))
    for request, says in REFUSALS:
        if (request, says) in runs:
            proc = runs[(request, says)]
            code, out, err = proc.returncode, proc.stdout, proc.stderr
        else:
            code, out, err = run_cli(["scale", request, str(config)], capsys)
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and says in lines[0], (request, err)
        assert out == "", (request, out)
    assert config.read_text() == FILE
    assert [p.name for p in tmp_path.iterdir()] == ["deploy.yaml"]  # no temporary file left either


def test_a_group_sharing_an_anchor_or_an_unwritable_directory_is_refused(tmp_path: Path, capsys) -> None:
    """An alias would carry the new count into another group; a directory where no file can be written is
    one line, not a traceback. Both: exit 2, the file untouched."""
    shared = FILE.replace("  prefill:\n    engine: mocker\n    nodes: 1\n    args: {speedup-ratio: 10}\n", "")
    shared = shared.replace("  decode:\n    engine: mocker", "  decode: &worker\n    engine: mocker")
    shared += "  prefill: *worker\n"
    path = tmp_path / "anchored.yaml"
    path.write_text(shared)
    assert build(load(path, None)).deployment == "scale-demo"  # a valid file: decode and prefill alike
    code, out, err = run_cli(["scale", "decode=1", str(path), "--dry-run"], capsys)  # prefill: 1 too
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1, err
    assert "the edit would change more than groups.decode.replicas (a YAML anchor or alias" in err
    assert path.read_text() == shared
    # A directory another user (nobody) may read but not write, outside pytest's root-only tmp dirs.
    sealed = Path(tempfile.mkdtemp(prefix="launcher-test-sealed-"))
    try:
        plain = sealed / "deploy.yaml"
        plain.write_text(FILE)
        plain.chmod(0o666)  # even a file it may write: the temporary beside it is what cannot be made
        sealed.chmod(0o555)
        as_nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
        proc = subprocess.run([*as_nobody, sys.executable, "-m", "launcher", "scale", "decode=3", str(plain)],
                              capture_output=True, text=True, timeout=120, env=fresh_env(), cwd="/")  # fmt: skip
        after = plain.read_text()
    finally:
        sealed.chmod(0o700)
        shutil.rmtree(sealed)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and "cannot write beside it: Permission denied" in lines[0], (
        proc.stderr
    )
    assert after == FILE


# -- which running workers the plan no longer has, and as what they were started (pure) ----------


def container(plan, group: str, replica: int, node: int = 0, rank: int = 0) -> Container:
    service = f"{group}-r{rank}" if replica == 0 else f"{group}.{replica}-r{rank}"
    labels = {
        f"{LABEL}.deployment": plan.deployment, f"{LABEL}.service": service, f"{LABEL}.role": group.split(".")[0],
        f"{LABEL}.group": group if replica == 0 else f"{group}.{replica}", f"{LABEL}.rank": str(rank),
        f"{LABEL}.replica": str(replica),
    }  # fmt: skip
    return Container(node, "id", f"{plan.deployment}-{service}", labels, "running", 0)


def test_a_replica_the_file_lost_is_found_with_its_ports_and_others_are_left_alone(tmp_path: Path) -> None:
    data, _ = local_stack(tmp_path, "strays")
    path = tmp_path / "local.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    loaded = load(path)
    plan = build(loaded)
    base = int(data["groups"]["decode"]["system_port"])
    running = [container(plan, "decode", 0), container(plan, "decode", 2), container(plan, "gone", 1)]
    found = strays(loaded, plan, running)
    # decode.2 as replica 2 was started: its /metrics on the group's system port + 2 x 100, drained.
    assert [(s.service, s.env.get("DYN_SYSTEM_PORT")) for s in found] == [("decode.2-r0", str(base + 200))]
    # A replica number no plan could hold (a node's label): still drained, until it exits (no metrics port).
    hostile = container(plan, "decode", 999_999_999)
    assert [(s.service, s.env.get("DYN_SYSTEM_PORT")) for s in strays(loaded, plan, [hostile])] == [
        ("decode.999999999-r0", None)
    ]
    # A container whose service label names another container (here the live decode-r0), or a held copy
    # `NAME.held`: never signalled under the name its label gives.
    liar = container(plan, "decode", 999_999_999)
    liar.labels[f"{LABEL}.service"] = "decode-r0"
    held = container(plan, "decode", 999_999_998)
    held.name += ".held"
    assert strays(loaded, plan, [liar, held]) == []
