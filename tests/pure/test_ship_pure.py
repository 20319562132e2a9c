"""`image push` and `stage` without nodes: what the stream carries, where weights go, what `--from`
means, what a directory holds against a manifest (remote/relay.py's scan and doctor's check, run here
on real files), and the progress lines a pipe gets."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console

from launcher.commands import stage
from launcher.config.load import load as load_config
from launcher.errors import ConfigError
from launcher.operations import preflight, ship
from launcher.operations.context import Target
from launcher.output.transfer import Moving, TransferView, size
from launcher.plan.build import build as build_plan
from launcher.remote import manifest as remote
from launcher.runtime import for_plan
from tests.helpers import CONFIGS, REPO, UNREACHABLE, fresh_env
from tests.pure.test_relay_hostile import Started

INV = REPO / "tests" / "data" / "inventory-32.yaml"


def target(name: str = "dsr1-104gpu.yaml", inventory: Path | None = None) -> Target:
    plan = build_plan(load_config(CONFIGS / name, inventory, environ={}))
    return Target(CONFIGS / name, inventory, plan, for_plan(plan))


def test_the_stream_carries_each_needed_file_once_from_the_smallest_offset_held():
    files = [{"path": p, "size": 100, "sha256": p * 2} for p in ("a", "b", "c")]
    needs = {
        0: {"need": {"a": 0, "b": 40}},  # b: a partial file of 40 bytes
        1: {"need": {"b": 70}},
        2: {"need": {"a": 30}},  # c: nobody needs it
    }
    assert stage.records(files, needs) == [
        {"path": "a", "size": 100, "sha256": "aa", "start": 0},
        {"path": "b", "size": 100, "sha256": "bb", "start": 40},
    ]


def test_weights_go_to_the_host_side_of_the_model_volume_unless_told():
    t = target()
    dest = stage.destinations(t, None)
    workers = {s.node.index for s in t.plan.services if s.group}
    assert set(dest) == workers and set(dest.values()) == {"/models/DeepSeek-R1"}
    assert set(stage.destinations(t, "/raid/r1/").values()) == {"/raid/r1"}
    with pytest.raises(ConfigError, match="--to: 'raid/r1': expected an absolute path"):
        stage.destinations(t, "raid/r1")


def test_without_a_volume_for_the_model_stage_asks_for_to(tmp_path):
    text = (CONFIGS / "dsr1-104gpu.yaml").read_text().replace(":/model:ro", ":/elsewhere:ro")
    assert text != (CONFIGS / "dsr1-104gpu.yaml").read_text()
    path = tmp_path / "novol.yaml"
    path.write_text(text)
    plan = build_plan(load_config(path, environ={}))
    with pytest.raises(ConfigError, match="model.path: no target: .* pass --to PATH"):
        stage.destinations(Target(path, None, plan, for_plan(plan)), None)


def test_from_is_a_node_and_a_path_or_a_directory_here(tmp_path):
    t = target()
    first = t.plan.nodes[0]
    on_node = stage.parse_from(t, f"{first.name}:/data/r1/")
    assert (on_node.node, on_node.root) == (first, "/data/r1")
    assert stage.parse_from(t, "0:/data/r1").node == first
    here = stage.parse_from(t, str(tmp_path))
    assert here.node is None and here.root == str(tmp_path)
    with pytest.raises(ConfigError, match="no such directory here"):
        stage.parse_from(t, str(tmp_path / "missing"))
    with pytest.raises(ConfigError, match="no node 'nope'"):
        stage.parse_from(t, "nope:/data")


def weights(root: Path) -> list[dict]:
    (root / "sub").mkdir(parents=True)
    data = {"config.json": b'{"a": 1}\n', "model.safetensors": os.urandom(300_000), "sub/tok.bin": os.urandom(5000)}
    for rel, body in data.items():
        (root / rel).write_bytes(body)
    return [{"path": p, "size": len(b), "sha256": hashlib.sha256(b).hexdigest()} for p, b in sorted(data.items())]


def test_a_directory_against_the_files_expected(tmp_path):
    src = tmp_path / "src"
    expect = weights(src)
    assert remote.scan_source({"root": str(src)})["files"] == expect
    node = tmp_path / "node"
    state = remote.scan_target({"root": str(node), "expect": expect})
    assert not state["exists"] and state["need"] == sum(f["size"] for f in expect) and state["free"] > 0
    weights(node)
    (node / "config.json").write_bytes(b'{"a": 2}\n')  # same size, other bytes
    (node / "model.safetensors").rename(node / "model.safetensors.launcher-part")
    os.truncate(node / "model.safetensors.launcher-part", 1000)
    (node / "sub" / "tok.bin").unlink()
    state = remote.scan_target({"root": str(node), "expect": expect})["files"]
    assert state == {
        "config.json": {"state": "altered", "have": 0},
        "model.safetensors": {"state": "partial", "have": 1000},
        "sub/tok.bin": {"state": "missing", "have": 0},
    }


def test_the_manifest_spares_rehashing_until_a_file_changes(tmp_path, monkeypatch):
    root = tmp_path / "w"
    expect = weights(root)
    remote.write_manifest(str(root), expect, {f["path"] for f in expect})
    hashed: list[str] = []
    real = remote.sha256_file
    monkeypatch.setattr(remote, "sha256_file", lambda p, progress=None: hashed.append(p) or real(p))
    state = remote.scan_target({"root": str(root), "expect": expect})
    assert {s["state"] for s in state["files"].values()} == {"complete"} and hashed == []
    os.utime(root / "config.json", ns=(1, 1))  # touched: hashed again (and still complete)
    assert remote.scan_target({"root": str(root), "expect": expect})["files"]["config.json"]["state"] == "complete"
    assert hashed == [str(root / "config.json")]


def doctor_line(root: Path, python_env: str | None = None, env: dict | None = None) -> str:
    """Doctor's model check of `root`, as the node script runs it (bash, the node's python3)."""
    script = preflight.model_check(str(root), python_env)
    out = subprocess.run(["/bin/bash", "-c", script], capture_output=True, text=True, timeout=60, env=env)
    return out.stdout.strip()


def test_doctor_checks_the_manifest_with_python_env_when_the_node_has_no_python3(tmp_path):
    """As stage does (ship.relay_script): the node's python3, else python_env's."""
    root = tmp_path / "w"
    expect = weights(root)
    remote.write_manifest(str(root), expect, {f["path"] for f in expect})
    (tmp_path / "env" / "bin").mkdir(parents=True)
    (tmp_path / "env" / "bin" / "python3").symlink_to(os.path.realpath(sys.executable))  # not a shim: a binary
    (tmp_path / "bin").mkdir()
    for tool in ("sha256sum", "cut"):
        (tmp_path / "bin" / tool).symlink_to(shutil.which(tool))
    no_python = {"PATH": str(tmp_path / "bin")}  # this node has no python3 of its own
    assert doctor_line(root, str(tmp_path / "env"), no_python).startswith(f"@@check model ok {root}=manifest:")
    # no python anywhere: config.json's hash, as before
    digest = hashlib.sha256((root / "config.json").read_bytes()).hexdigest()[:16]
    assert doctor_line(root, str(tmp_path / "nowhere"), no_python) == f"@@check model ok {root}={digest}"


def test_doctor_names_each_missing_short_or_altered_file(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    expect = weights(a)
    shutil.copytree(a, b)  # the same weights on two nodes
    for root in (a, b):
        remote.write_manifest(str(root), expect, {f["path"] for f in expect})
    ok_a, ok_b = doctor_line(a), doctor_line(b)
    assert ok_a.startswith(f"@@check model ok {a}=manifest:") and "(3 files, " in ok_a
    assert ok_a.split("=", 1)[1] == ok_b.split("=", 1)[1]  # the same weights: the same value to compare
    with open(b / "model.safetensors", "r+b") as f:
        f.seek(1000)
        f.write(b"\0")
    os.truncate(b / "sub" / "tok.bin", 10)
    (b / "config.json").unlink()
    line = doctor_line(b)
    assert line.startswith(f"@@check model fail {b}: ")
    assert "missing config.json" in line and "short sub/tok.bin (10 of 5000 bytes)" in line
    assert "altered model.safetensors" in line


def test_without_a_manifest_doctor_hashes_config_json(tmp_path):
    weights(tmp_path / "w")
    digest = hashlib.sha256((tmp_path / "w" / "config.json").read_bytes()).hexdigest()[:16]
    assert doctor_line(tmp_path / "w") == f"@@check model ok {tmp_path / 'w'}={digest}"
    assert doctor_line(tmp_path / "none") == f"@@check model fail {tmp_path / 'none'}"


def test_a_pipe_gets_state_changes_and_bytes_and_rate_per_node():
    out = io.StringIO()
    view = TransferView("image", 300_000_000, console=Console(file=out, width=300), live=False)
    view.every = 0
    view.update([Moving("tb0", "waiting", 0), Moving("tb1", "waiting", 0)])
    view.rates.seen["tb0"].appendleft((view.rates.seen["tb0"][0][0] - 2, 0))
    view.update([Moving("tb0", "receiving", 50_000_000), Moving("tb1", "receiving", 10_000_000)])
    text = out.getvalue()
    assert "tb0: waiting" in text and "tb1: receiving" in text
    assert "image of ~300.0 MB: tb0 50.0 MB " in text and "MB/s, tb1 10.0 MB " in text
    assert size(1234) == "1.2 kB" and size(999) == "999 B" and size(2.5e9) == "2.5 GB"


def test_the_scan_program_stands_alone():
    """The program stage's scan sends (remote/manifest.py, as the loader gives it) runs on the node's
    python3 with nothing of the launcher: a fresh interpreter, no path."""
    program = ship.program("scan").decode()
    proc = subprocess.run(
        ["python3", "-I", "-c", program, "scan"], input=json.dumps({"root": "/nonexistent"}) + "\n",
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert json.loads(proc.stdout) == {"ev": "scan", "error": "missing", "detail": "/nonexistent: no such directory"}


@pytest.mark.parametrize("given", ["", "  ", "/", "n0:/", "0:/"])
def test_stage_refuses_an_empty_from_or_the_whole_filesystem(tmp_path, given):
    """`--from ""` once meant the current directory (staged, with a manifest written into it); `/` would
    stage the filesystem. One line naming --from, exit 2, before any node is reached (TEST-NET address)."""
    config = tmp_path / "deploy.yaml"
    config.write_text(UNREACHABLE)
    before = sorted(p.name for p in tmp_path.iterdir())
    args = ["stage", str(config), "--from", given, "--to", "/data/w", "--connect-timeout", "1"]
    proc = subprocess.run(
        [str(REPO / ".venv" / "bin" / "launcher"), *args],
        cwd=tmp_path, capture_output=True, text=True, timeout=120, env=fresh_env(),
    )  # fmt: skip
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines() + proc.stdout.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --from: ") and "expected " in lines[0], lines
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_links_are_followed_once_and_never_out_of_the_source(tmp_path):
    """A link back up (`up -> ..`) once made 40 copies of every file; a link to / would stage the disk; a
    link to a file outside (/etc/shadow) would send it to every node."""
    root = tmp_path / "weights"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "model.safetensors").write_bytes(b"w")
    (root / "config.json").write_text("{}")
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "secret").write_text("x")
    (root / "sub" / "up").symlink_to("..")  # back to root: a loop
    (root / "alias").symlink_to("sub")  # inside: its files once, under one name
    (root / "out").symlink_to(tmp_path / "outside")  # outside the source
    (root / "fs").symlink_to("/")
    (root / "blob").symlink_to(tmp_path / "outside" / "secret")  # a file outside: never read, never sent
    (root / "same.json").symlink_to("sub/model.safetensors")  # a file link inside the source stays
    (root / "sub" / ".launcher-manifest").write_text("{}")  # the launcher's own files, at any level
    (root / "sub" / "x.launcher-part").write_text("partial")
    skipped: list = []
    files = remote.source_files(str(root), skipped)
    assert files == ["config.json", "same.json", "alias/model.safetensors"], files
    assert sorted(skipped) == ["blob", "fs", "out"]
    found = remote.scan_source({"root": str(root)})
    assert sorted(found["skipped"]) == ["blob", "fs", "out"] and len(found["files"]) == 3


@pytest.mark.parametrize(("source", "to"), [("n0:/data/w", "/data/w/copy"), ("n0:/data/w/inner", "/data")])
def test_stage_refuses_a_destination_and_a_source_inside_one_another_on_one_node(tmp_path, source, to):
    """Each run once nested the previous copy one level deeper. One line, exit 2, no node reached."""
    config = tmp_path / "deploy.yaml"
    config.write_text(UNREACHABLE)
    args = ["stage", str(config), "--from", source, "--to", to, "--connect-timeout", "1"]
    proc = subprocess.run(
        [str(REPO / ".venv" / "bin" / "launcher"), *args],
        cwd=tmp_path, capture_output=True, text=True, timeout=120, env=fresh_env(),
    )  # fmt: skip
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines() + proc.stdout.strip().splitlines()
    assert len(lines) == 1 and f"the destination {to} on node 0 (n0" in lines[0], lines
    assert "inside one another" in lines[0]


def test_a_scan_naming_a_path_out_of_the_source_is_refused():
    """The source's scan is the list every node is held to: a path with `..` from it (a compromised
    source node) is bad input from the network, refused before anything moves."""
    good = {"path": "a.bin", "size": 1, "sha256": "0" * 64}
    assert stage.checked_scan("n0:/w", "on n0", [good]) == [good]
    for bad in ({"path": "../x", "size": 1, "sha256": "0" * 64}, {"path": "/etc/x", "size": 1, "sha256": "0" * 64},
                {"path": "a", "size": -1, "sha256": "0" * 64}, {"path": "a", "size": 1, "sha256": "z"}):  # fmt: skip
        with pytest.raises(ConfigError, match="refused"):
            stage.checked_scan("n0:/w", "on n0", [bad])


def test_the_relay_refuses_a_destination_inside_its_own_source_with_links_resolved(tmp_path):
    """The launcher compares the paths as typed; the node compares them with links resolved."""
    src = tmp_path / "src"
    weights(src)
    (tmp_path / "alias").symlink_to(src)
    files = remote.scan_source({"root": str(src)})["files"]
    sink = {"kind": "dir", "root": str(tmp_path / "alias" / "copy"), "files": files,
            "need": {f["path"]: 0 for f in files}, "complete": []}  # fmt: skip
    recs = [dict(f, start=0) for f in files]
    node = Started(sink, source={"root": str(src), "records": recs})
    try:
        said = node.event("sink")
    finally:
        node.close()
    assert said["ok"] is False and "inside one another on this node" in said["detail"], said
    assert not (src / "copy").exists()


def test_what_a_node_says_it_holds_counts_only_within_the_file():
    """A node's scan answer once set where the source starts reading: past the end, a negative length
    read a whole file into memory. Now an offset out of the file counts as nothing held."""
    files = [{"path": "a", "size": 100, "sha256": "aa"}]
    for claim in (10**18, 100, -5, "40", None):
        assert stage.records(files, {0: {"need": {"a": claim}}})[0]["start"] == 0, claim
    assert stage.records(files, {0: {"need": {"a": 99}}})[0]["start"] == 99
