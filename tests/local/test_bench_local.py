"""`launcher bench` against the embedded default (configs/local.yaml: the real Dynamo frontend and two
mockers as local processes) with the real AIPerf 0.13 client, as fresh `launcher` processes. The file is
configs/local.yaml with every fixed port replaced by a free one (and its own state directory), so that this
test needs no lock against other runs of the default on this machine.

Ctrl-C in the middle of an AIPerf run: exit 130, AIPerf's processes gone, DIR.incomplete left and no DIR."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.bench_env import bench_env  # noqa: F401
from tests.helpers import REPO, Lines, free_port, fresh_env, local_stack, wait_for

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def local(tmp_path_factory, bench_env):  # noqa: F811
    """configs/local.yaml on free ports, up; yields (config, cwd, env); down at the end."""
    work = tmp_path_factory.mktemp("bench-local")
    data, _ = local_stack(work, "bench-local")
    config = work / "local.yaml"
    config.write_text(yaml.safe_dump(data, sort_keys=False))
    env = {**fresh_env(), "LAUNCHER_PORT": str(free_port()), "LAUNCHER_BENCH_ENV": str(bench_env)}
    up = subprocess.run([sys.executable, "-m", "launcher", "up", str(config)], cwd=work, env=env,
                        capture_output=True, text=True, timeout=300)  # fmt: skip
    assert up.returncode == 0, up.stdout + up.stderr
    yield config, work, env
    subprocess.run([sys.executable, "-m", "launcher", "down", str(config)], cwd=work, env=env, timeout=120)


def bench(local, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    config, work, env = local
    return subprocess.run([sys.executable, "-m", "launcher", "bench", str(config), *args], cwd=work, env=env,
                          capture_output=True, text=True, timeout=timeout)  # fmt: skip


def test_bench_the_embedded_default(local):
    config, work, env = local
    out = bench(local, "--workload", "custom", "--isl", "200", "--osl", "32", "--concurrency", "1,4",
                "--out", str(work / "run"))  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    url = f"http://127.0.0.1:{env['LAUNCHER_PORT']}"
    assert f"client: AIPerf 0.13.0 on this machine, {url} -> {url} directly" in out.stderr
    assert re.search(r"^c=4: 40 requests, [\d,]+ output tok/s, TTFT p50 [\d.]+ ms", out.stderr, re.M), out.stderr
    results = json.loads((work / "run" / "results.json").read_text())
    rows = results["results"]
    assert [(r["concurrency"], r["requests"], r["errors"]) for r in rows] == [(1, 10, 0), (4, 40, 0)]
    assert all(r["output_tokens_per_request"] == 32 for r in rows)
    assert results["workload"]["isl"] == 200 and results["workload"]["seed"] == 100
    nodes = json.loads((work / "run" / "recipe" / "nodes.json").read_text())
    (images,) = [n["images"] for n in nodes.values()]  # the process runtime: the env's Dynamo stands for an image
    assert images == {f"python_env:{REPO / 'configs'}/../.venv": "ai-dynamo==1.6.1"}
    assert (work / "run" / "tokenizer" / "tokenizer.json").read_bytes() == (
        REPO / "models/tiny/tokenizer.json"
    ).read_bytes()
    assert (work / "run" / "plot.png").stat().st_size > 20_000
    print("\nlocal: output tok/s", {r["concurrency"]: round(r["output_tokens_per_s"]) for r in rows})


def aiperf_processes(marker: str) -> list[int]:
    """Processes whose command line names `marker` (AIPerf's main one: its --artifact-dir is under
    DIR.partial, which the launcher's own command line (--out DIR) does not name)."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and marker in (proc / "cmdline").read_bytes().decode(errors="replace"):
                found.append(int(proc.name))
        except OSError:
            continue
    return found


def live_group_members(pgid: int) -> list[int]:
    """Processes of this process group still running (zombies write nothing: they do not count)."""
    members = []
    for proc in Path("/proc").iterdir():
        try:
            fields = (proc / "stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        if proc.name.isdigit() and int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(proc.name))
    return members


def test_ctrl_c_during_a_run_stops_aiperf_and_leaves_an_incomplete_directory(local):
    config, work, env = local
    out = work / "stopped"
    proc = subprocess.Popen([sys.executable, "-m", "launcher", "bench", str(config), "--isl", "100", "--osl", "500",
                             "--concurrency", "2", "--requests", "400", "--out", str(out)],
                            cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        lines = Lines(proc.stderr)
        assert lines.until(lambda line: line.startswith("c=2: 400 requests"), 120), lines.text()
        aiperf = min(wait_for(lambda: aiperf_processes(f"{out}.partial"), 60, 0.2, "AIPerf to start"))
        assert os.getpgid(aiperf) == aiperf  # AIPerf's main process leads its own group: the one to end
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 130
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
    assert "interrupted: AIPerf stopped; what was measured is in" in lines.rest(10)
    assert not live_group_members(aiperf)  # AIPerf leads a session of its own: all of it was ended
    assert not out.exists() and not Path(f"{out}.partial").exists()
    left = Path(f"{out}.incomplete")
    assert (left / "aiperf" / "c2.log").exists() and not (left / "results.json").exists()
