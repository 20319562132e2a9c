"""`launcher bench` on the 13-node testbed (configs/testbed-104.yaml: the real Dynamo frontend and 13 mocker
workers at a fixed speed-up ratio; with its metrics stack, up once for these and the observe tests:
tests/testbed_104.py), with the real AIPerf 0.13 client: from this machine through a port
forwarded over the head node's SSH connection, then on the head node (`--on-head`); `bench compare` of the
two runs; the seed's e2e defaults refused against the tiny model's context; and the SGLang router deployment,
which cannot serve here (no SGLang worker without GPUs): bench says so (exit 1), while the router's own
`/flush_cache` is what bench would flush through.

Throughput is printed, not asserted (no timed assertions); what is asserted is what a person relies on:
every request made exactly OSL tokens, no errors, one row per concurrency, the plot, the recipe."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from launcher.config.load import load as load_config
from launcher.operations import bench_recipe
from launcher.operations.nodes import start
from launcher.output.progress import Progress
from launcher.plan.build import build as build_plan
from tests.bench_env import bench_env  # noqa: F401
from tests.helpers import STATE_DIR, connected_target, fresh_env, launcher_on, wait_for
from tests.testbed.test_router_testbed import router_config
from tests.testbed_104 import DEPLOYMENT_FILE, testbed_104  # noqa: F401

pytestmark = pytest.mark.testbed
TESTBED_NODES = 13  # the 104-GPU shape (tests/conftest.py grows the session's testbed to it)

# A tiny workload (the assertions are structural): two concurrencies from this machine, one on the head node
# (each is a run of AIPerf: its start-up is most of the test's CPU), 10 requests each per unit of it.
ARGS = ["--workload", "e2e", "--isl", "100", "--osl", "16"]
CONCURRENCIES = {"local": [1, 2], "head": [2]}


def launcher(testbed, command: str, *args: str, cwd: Path, timeout: float = 900, env=None):
    """`launcher COMMAND` on the session's testbed-104 (its file in cwd, the shared fixture's directory)."""
    config = cwd / DEPLOYMENT_FILE
    argv = [sys.executable, "-m", "launcher", command, "-c", str(config), "-i", str(testbed.inventory), *args]
    return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env or fresh_env())


@pytest.fixture(scope="module")
def deployed(testbed_104, bench_env):  # noqa: F811
    """The directory of the session's testbed-104 (tests/testbed_104.py: configs/testbed-104.yaml with its
    metrics stack, shared with the observe tests)."""
    return testbed_104[0]


def check_run(out: Path, where: str) -> dict:
    """What every finished run must hold; returns results.json."""
    assert sorted(p.name for p in out.iterdir()) == [
        "aiperf", "plot.png", "recipe", "results.json", "results.txt", *(["tokenizer"] if where == "local" else []),
    ]  # fmt: skip
    results = json.loads((out / "results.json").read_text())
    rows = results["results"]
    assert [r["concurrency"] for r in rows] == CONCURRENCIES[where]
    assert [r["requests"] for r in rows] == [10 * c for c in CONCURRENCIES[where]]  # after 2 x c warm-up
    assert all(r["errors"] == 0 for r in rows), rows
    assert all(r["output_tokens_per_request"] == 16 for r in rows)  # the server's count: exactly OSL each
    assert all(r["input_tokens_per_request"] >= 100 for r in rows)  # 100 synthetic tokens, plus the template
    for r in rows:
        assert r["output_tokens_per_s_per_node"] == pytest.approx(r["output_tokens_per_s"] / 13)
        assert r["output_tokens_per_s_per_decode_node"] == pytest.approx(r["output_tokens_per_s"] / 9)
        assert r["output_tokens_per_s_per_gpu"] is None  # mockers: no GPUs
        assert 0 < r["ttft_p50_ms"] <= r["ttft_p90_ms"] <= r["ttft_p99_ms"]
        assert (out / "aiperf" / f"c{r['concurrency']}" / "profile_export_aiperf.json").exists()
    assert results["client"]["where"] == where and results["client"]["aiperf"] == "0.13.0"
    assert results["flush"]["kind"] == "none" and "clear_kv_blocks" in results["flush"]["targets"][0]
    nodes = json.loads((out / "recipe" / "nodes.json").read_text())
    assert len(nodes) == 13
    images = {i for n in nodes.values() for i in n["images"].values()}
    assert len(images) == 1 and next(iter(images)).startswith("sha256:")  # the same image ID on every node
    assert results["recipe"]["images"] == sorted(images)
    models = {m["config_sha256"] for n in nodes.values() for m in n["model"].values()}
    assert len(models) == 1 and len(next(iter(models))) == 16
    deployment = out.parent / DEPLOYMENT_FILE  # the run's directory is beside the deployment file
    assert (out / "recipe" / DEPLOYMENT_FILE).read_text() == deployment.read_text()  # no secrets in this file
    plan = json.loads((out / "recipe" / "plan.json").read_text())
    assert sum(s["role"] in ("prefill", "decode") for s in plan["services"]) == 13
    assert "bench" in (out / "recipe" / "command.txt").read_text()
    png = (out / "plot.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and struct.unpack(">II", png[16:24]) == (1320, 550)
    print(f"\n{where}: output tok/s by concurrency:",
          {r["concurrency"]: round(r["output_tokens_per_s"]) for r in rows},
          "TTFT p50 ms:", {r["concurrency"]: round(r["ttft_p50_ms"], 1) for r in rows})  # fmt: skip
    return results


def test_the_seed_e2e_defaults_exceed_the_tiny_model_context(testbed, deployed):
    out = launcher(testbed, "bench", "--workload", "e2e", "--concurrency", "1,4,16", cwd=deployed)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        "error: --isl/--osl: ISL 8192 + OSL 256 = 8448 tokens exceed the context of 4096"
        " (max_position_embeddings in /model/config.json): lower --isl/--osl"
    ]
    assert not (deployed / "bench-results").exists()


def test_bench_from_this_machine_through_the_head_node(testbed, deployed):
    started = time.monotonic()
    out = launcher(testbed, "bench", *ARGS, "--concurrency", "1,2", "--out", str(deployed / "local-run"), cwd=deployed)
    print(f"\nbench (2 concurrencies, local client) took {time.monotonic() - started:.0f} s")
    assert out.returncode == 0, out.stdout + out.stderr
    head = testbed.nodes[0]
    assert f"-> http://{head[1]}:8000 through node 0 ({head[0]} {head[1]})'s SSH connection" in out.stderr
    assert "client: AIPerf 0.13.0 on this machine, http://127.0.0.1:" in out.stderr
    assert "KV-cache flush: none in this deployment (no worker registers clear_kv_blocks" in out.stderr
    header = out.stdout.splitlines()[0].split()
    assert header[:6] == ["conc", "req/s", "in", "tok/s", "out", "tok/s"] and "errors" in header
    table = [line.split() for line in out.stdout.splitlines()[1:3]]
    assert [row[0] for row in table] == ["1", "2"]
    results = check_run(deployed / "local-run", "local")
    assert [row[-2] for row in table] == [str(r["requests"]) for r in results["results"]]


def test_bench_on_the_head_node_then_compare(testbed, deployed, bench_env):  # noqa: F811
    out = launcher(testbed, "bench", *ARGS, "--concurrency", "2", "--on-head", "--head-env", str(bench_env),
                   "--out", str(deployed / "head-run"), cwd=deployed)  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"client: AIPerf 0.13.0 on the head node, node 0 ({testbed.nodes[0][0]}" in out.stderr
    check_run(deployed / "head-run", "head")
    assert not testbed.ssh(0, f"ls {STATE_DIR}/bench-runs 2>/dev/null; true").stdout.strip()  # cleaned up

    if not (deployed / "local-run").exists():
        pytest.fail("the local run (previous test) is needed for the comparison")
    compared = subprocess.run([sys.executable, "-m", "launcher", "bench", "compare", str(deployed / "local-run"),
                               str(deployed / "head-run")], capture_output=True, text=True, env=fresh_env(),
                              timeout=60)  # fmt: skip
    assert compared.returncode == 0, compared.stderr
    lines = compared.stdout.splitlines()
    assert lines[0].split() == ["conc", "metric", "local-run", "head-run", "change"]
    assert sum(line.split()[:1] in (["1"], ["2"]) for line in lines) == 2
    one_sided = next(line for line in lines if line.split()[:1] == ["1"]).split()  # "1 req/s 1.2 - -"
    assert one_sided[-2:] == ["-", "-"] and one_sided[-3] != "-"  # concurrency 1 ran only from this machine
    assert 'recipe differs: client.where: "local" -> "head"' in lines
    assert not any("recipe differs: recipe." in line for line in lines)  # same file, plan, images, model
    print("\n" + "\n".join(lines[:12]))


def test_the_router_deployment_cannot_serve_without_sglang_workers(testbed, tmp_path, bench_env):  # noqa: F811
    """No SGLang worker runs without GPUs, and the router serves only once a prefill and a decode worker
    answer its health checks: bench refuses it (exit 1) and writes nothing. The flush bench would do there,
    the router's own POST /flush_cache, is asked of the real router."""
    path = router_config(tmp_path)
    data = yaml.safe_load(path.read_text())  # beside testbed-104's frontend on node 0:8000, other ports
    data["services"]["router"].update({"port": 8100, "prometheus_port": 29100})
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    plan = build_plan(load_config(path, testbed.inventory, environ={}))
    (router,) = [s for s in plan.services if s.role == "router"]
    try:
        with connected_target(plan, parallel=8, connect_timeout=5) as target:
            start(target, [router], Progress(live=False))
            host = target.fleet.host(router.node.index)
            wait_for(lambda: _answers(host, plan.endpoint + "/health"), 60, 0.5, "the router's /health")
            kind, targets = bench_recipe.flush_endpoints(target)
            assert (kind, targets) == ("router", [plan.endpoint + "/flush_cache"])
            done = bench_recipe.flush(target, kind, targets)  # what bench does before each concurrency
            print(f"\nrouter flush without workers: {done}")
            assert done.startswith("router POST /flush_cache: 200 ")
            status, body = host.http("POST", targets[0], timeout=30)
            assert status == 200 and body["message"] == "No HTTP workers available for cache flush", body
            assert (body["status"], body["total_workers"]) == ("success", 0)
        out = launcher_on(testbed, path, "bench", "--isl", "10", "--osl", "10", "--out", str(tmp_path / "r"),
                          cwd=tmp_path)  # fmt: skip
        assert out.returncode == 1, out.stderr
        assert out.stderr.strip().splitlines() == [
            f"error: endpoint {plan.endpoint} is not serving: HTTP 503 not ready: insufficient healthy workers"
            " (see `launcher status`)"
        ]
        assert not (tmp_path / "r").exists() and not (tmp_path / "r.partial").exists()
    finally:
        launcher_on(testbed, path, "down", cwd=tmp_path)


def _answers(host, url: str) -> bool:
    try:
        return host.http("GET", url, timeout=3)[0] == 200
    except (OSError, ConnectionError):
        return False
