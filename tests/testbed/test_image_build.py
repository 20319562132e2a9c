"""`launcher image build` sends only what the context's .dockerignore lets through, and says how much.

The computed context (pure: the archive the engine would receive), the repository's own .dockerignore,
and a real build on a testbed node's Docker engine (this machine has no engine of its own; the node's
plays the operator's, as in tests/testbed/test_ship_testbed.py): the image's /ctx holds what reached the engine."""

from __future__ import annotations

import io
import os
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from launcher.transport.docker_engine import build_context
from tests.helpers import REPO, fresh_env

SECRET = "sk-never-sent-0123456789"


def context_with_junk(tmp_path: Path) -> Path:
    """A context as a checkout has it: the Dockerfile, a source file, a 64 MB .cache, .env files, .venv."""
    context = tmp_path / "context"
    (context / "src").mkdir(parents=True)
    (context / "src" / "app.py").write_text("print('hi')\n")
    (context / ".cache" / "hub").mkdir(parents=True)
    with open(context / ".cache" / "hub" / "weights.bin", "wb") as f:
        f.truncate(64 << 20)  # sparse: 64 MB to read, nothing on disk
    (context / ".venv" / "bin").mkdir(parents=True)
    (context / ".venv" / "bin" / "python3").write_text("#!/bin/sh\n")
    (context / ".env").write_text(f"HF_TOKEN={SECRET}\n")
    (context / ".env.local").write_text(f"API_KEY={SECRET}\n")
    (context / "src" / "__pycache__").mkdir()
    (context / "src" / "__pycache__" / "app.cpython-311.pyc").write_bytes(b"\0" * 100)
    shutil.copy(REPO / ".dockerignore", context / ".dockerignore")
    return context


def sent(context: Path, dockerfile: Path) -> tuple[dict[str, bytes], int, int]:
    ctx = build_context(context, dockerfile)
    with ctx.archive, tarfile.open(fileobj=ctx.archive, mode="r:") as tar:
        files = {m.name: tar.extractfile(m).read() for m in tar if m.isfile()}
    return files, ctx.bytes, ctx.files


def test_the_context_leaves_out_cache_venv_env_files_and_bytecode(tmp_path):
    context = context_with_junk(tmp_path)
    (context / "Dockerfile").write_text("FROM scratch\nCOPY . /ctx\n")
    files, size, count = sent(context, context / "Dockerfile")
    assert sorted(files) == [".dockerignore", "Dockerfile", "src/app.py"]
    assert count == 3 and size < 64 << 10 and not any(SECRET.encode() in body for body in files.values())
    (context / ".dockerignore").unlink()  # without one, everything goes: what the file is for
    files, size, _ = sent(context, context / "Dockerfile")
    assert ".env" in files and ".cache/hub/weights.bin" in files and size > 64 << 20


def test_a_dockerfile_outside_the_context_travels_inside_the_archive(tmp_path):
    context = context_with_junk(tmp_path)
    outside = tmp_path / "Dockerfile.other"
    outside.write_text("FROM scratch\n")
    ctx = build_context(context, outside)
    with ctx.archive, tarfile.open(fileobj=ctx.archive, mode="r:") as tar:
        assert tar.extractfile(ctx.dockerfile).read() == b"FROM scratch\n"


def test_the_repositorys_own_context_is_small(tmp_path):
    files, size, count = sent(REPO, REPO / "Dockerfile.wideep")
    tops = {name.split("/")[0] for name in files}
    assert not tops & {".venv", ".cache", ".git", ".testbed", ".launcher", "bench-results"}, tops
    assert not [n for n in files if "__pycache__" in n or n.split("/")[-1].startswith(".env")]
    assert "Dockerfile.wideep" in files and "launcher/cli.py" in files
    print(f"\nimage build: the repository's context is {size / 1e6:.1f} MB in {count} files")


@pytest.mark.testbed
def test_image_build_sends_neither_cache_nor_env_and_says_the_size(testbed, tmp_path):
    context = context_with_junk(tmp_path)
    (context / "Dockerfile").write_text("FROM scratch\nCOPY . /ctx\n")  # the image holds what reached the engine
    engine = testbed.nodes[-1][0]
    env = {**fresh_env(), "DOCKER_HOST": f"unix://{testbed.dir}/nodes/{engine}/docker.sock"}
    tag = f"launcher-context-test-{os.getpid()}:1"
    argv = [sys.executable, "-m", "launcher", "image", "build", "-f", str(context / "Dockerfile"), "--tag", tag]
    try:
        run = subprocess.run(argv, capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
        assert run.returncode == 0, run.stdout + run.stderr
        container = docker(env, "create", tag, "/none").stdout.strip()
        exported = subprocess.run(["docker", "export", container], capture_output=True, env=env, timeout=120)
        docker(env, "rm", container)
        with tarfile.open(fileobj=io.BytesIO(exported.stdout)) as image:
            files = {m.name: image.extractfile(m).read() for m in image if m.isfile() and m.name.startswith("ctx/")}
        assert sorted(files) == ["ctx/.dockerignore", "ctx/Dockerfile", "ctx/src/app.py"], sorted(files)
        assert not any(SECRET.encode() in body for body in files.values())
        said = re.search(r"^sending build context: ([\d.]+ (?:B|kB|MB)) \((\d+) files\)$", run.stderr, flags=re.M)
        assert said and said.group(2) == "3" and not said.group(1).endswith("MB"), run.stderr
        assert f"built {tag} (sha256:" in run.stdout
    finally:
        subprocess.run(["docker", "image", "rm", "-f", tag], capture_output=True, env=env, timeout=60)


def docker(env: dict, *args: str) -> subprocess.CompletedProcess:
    run = subprocess.run(["docker", *args], capture_output=True, text=True, env=env, timeout=120)
    assert run.returncode == 0, run.stderr
    return run
