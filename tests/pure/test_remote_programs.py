"""The one loader of remote programs (launcher/remote/__init__.py `program`): what it gives runs under a
bare `python3 -I` where no launcher is importable, as on a node, siblings and all. Pure: this machine's
python3, temporary directories."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

import pytest

from launcher.operations import ship
from launcher.remote import program, siblings

REPO = Path(__file__).resolve().parents[2]
PROGRAMS = sorted(p.stem for p in (REPO / "launcher" / "remote").glob("*.py") if p.stem != "__init__")
BARE = ["/usr/bin/python3", "-I"]  # no site-packages, no current directory: the launcher is not there


def bare(args: list[str], cwd: Path, stdin: bytes = b"") -> subprocess.CompletedProcess:
    return subprocess.run(BARE + args, input=stdin, capture_output=True, cwd=cwd, timeout=60)


def test_the_bare_python_has_no_launcher(tmp_path):
    """Else the tests below would prove nothing."""
    done = bare(["-c", "import launcher"], tmp_path)
    assert done.returncode == 1 and b"No module named 'launcher'" in done.stderr


@pytest.mark.parametrize("name", PROGRAMS)
def test_every_program_loads_where_the_launcher_is_not(name, tmp_path):
    """Each program's module-level code (its imports, its siblings') runs; its main does not."""
    loader = "import sys;exec(compile(sys.stdin.read(),'p','exec'),{'__name__':'loaded'});print('loaded')"
    done = bare(["-c", loader], tmp_path, program(name).encode())
    assert done.returncode == 0 and done.stdout == b"loaded\n", done.stderr.decode()[-2000:]


def test_the_relay_brings_its_siblings_and_the_manifest_program_stands_alone():
    assert siblings("relay") == ["relay_core", "manifest"]
    assert "relay_core" in program("relay") and "_launcher_module('manifest'" in program("relay")
    assert siblings("manifest") == [] and program("manifest") == (REPO / "launcher/remote/manifest.py").read_text()


def test_the_bundled_relay_emits_a_directory_as_the_launcher_starts_it(tmp_path):
    """`emit` as stage starts it (ship.BOOT: the program, then the request, on stdin): its records,
    with relay_core's and manifest's code at work, under the bare python."""
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a.bin").write_bytes(b"weights")
    request = {"root": str(tmp_path / "src"), "records": [{"path": "a.bin", "size": 7, "start": 0}]}
    text = ship.program("emit")
    done = bare(["-u", "-c", ship.BOOT, str(len(text)), "emit"], tmp_path, text + json.dumps(request).encode() + b"\n")
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    head = json.dumps({"path": "a.bin", "size": 7, "start": 0, "length": 7}).encode()
    end = json.dumps({"end": True}).encode()
    assert (
        done.stdout
        == b"LR" + len(head).to_bytes(4, "big") + head + b"weights" + b"LR" + len(end).to_bytes(4, "big") + end
    )


def test_the_manifest_program_scans_and_checks_under_the_bare_python(tmp_path):
    root = tmp_path / "w"
    root.mkdir()
    (root / "config.json").write_text('{"layers": 2}\n')
    text = program("manifest")
    no_manifest = bare(["-c", text, "check", str(root), "M"], tmp_path)
    assert no_manifest.returncode == 3 and no_manifest.stdout == b""
    scan = {"root": str(root), "write_manifest": True}
    done = bare(["-c", text, "scan"], tmp_path, json.dumps(scan).encode() + b"\n")
    files = json.loads(done.stdout.decode().splitlines()[-1])["files"]
    sha = hashlib.sha256(b'{"layers": 2}\n').hexdigest()
    assert files == [{"path": "config.json", "size": 14, "sha256": sha}], done.stderr.decode()[-2000:]
    checked = bare(["-c", text, "check", str(root), "M"], tmp_path)
    assert checked.stdout.decode().startswith(f"M model ok {root}=manifest:"), checked.stderr.decode()
    (root / "config.json").write_text("{}")
    assert bare(["-c", text, "check", str(root), "M"], tmp_path).stdout.decode().startswith(f"M model fail {root}")


def test_a_program_that_imports_the_launcher_is_refused(tmp_path, monkeypatch):
    """A program that would need the launcher on the node is stopped here, not on the node."""
    import launcher.remote as remote

    monkeypatch.setattr(remote, "source", lambda name: "from launcher.errors import Exit\n")
    with pytest.raises(ImportError, match="imports the launcher"):
        remote.siblings("bad")
