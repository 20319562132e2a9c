"""`launcher bench` as a user runs it (fresh processes), on bad input: one line naming the option, exit 2,
no node contacted, no result directory; an endpoint that does not serve: one line, exit 1, no directory."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.bench_env import bench_env  # noqa: F401
from tests.helpers import MINIMAL, REPO, free_port, fresh_env, write


def bench(*args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "launcher", "bench", *args],
        capture_output=True, text=True, cwd=cwd, env=env or fresh_env(), timeout=300,
    )  # fmt: skip


def only_line(out: subprocess.CompletedProcess) -> str:
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in out.stderr, out.stderr
    return lines[0]


@pytest.fixture
def unreachable(tmp_path) -> Path:
    """MINIMAL's nodes are TEST-NET addresses nobody answers on: any contact would hang or fail, not exit 2."""
    data = yaml.safe_load(MINIMAL)
    data["nodes"] = [{"address": f"192.0.2.{i}"} for i in range(1, 5)]
    data["model"] = {"path": "/m", "name": "m"}
    data["groups"]["decode"]["args"]["context-length"] = 1000
    return write(tmp_path, yaml.safe_dump(data))


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--concurrency", "0"], "error: --concurrency: a concurrency is at least 1 and at most 1000000, got 0"),
        (["--concurrency", "1,-4"], "error: --concurrency: a concurrency is at least 1 and at most 1000000, got -4"),
        (["--concurrency", "many"], "error: --concurrency: expected whole numbers from 1 up separated by commas"),
        (["--workload", "nope"], "error: --workload: 'nope' is not one of"),
        (["--workload", "custom", "--isl", "10"], "error: --workload: the custom workload needs --osl, --concurrency"),
        (["--isl", "500", "--osl", "501"], "error: --isl/--osl: ISL 500 + OSL 501 = 1001 tokens exceed the context"
                                           " of 1000 (groups.decode --context-length)"),
        (["--isl", "0"], "error: --isl: input should be greater than or equal to 1, got '0'"),
        (["--timeout", "0"], "error: --timeout:"),
    ],
)  # fmt: skip
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, unreachable, args, expected):
    out = bench(str(unreachable), *args, cwd=tmp_path)
    assert out.returncode == 2, out.stderr
    assert only_line(out).startswith(expected)
    assert not (tmp_path / "bench-results").exists()


def test_an_existing_result_directory_is_not_overwritten(tmp_path, unreachable):
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "results.json").write_text("{}")
    out = bench(str(unreachable), "--isl", "10", "--osl", "10", "--out", str(tmp_path / "old"), cwd=tmp_path)
    assert out.returncode == 2
    assert only_line(out) == f"error: --out: {tmp_path / 'old'} already exists and is not an empty directory: " \
                             "choose another --out"  # fmt: skip
    assert (tmp_path / "old" / "results.json").read_text() == "{}"


def test_a_deployment_without_an_endpoint_is_bad_input(tmp_path):
    data = yaml.safe_load(MINIMAL)
    data["groups"] = {"prefill": {"engine": "sglang", "nodes": 1, "args": {"tp-size": 8}}}
    data["services"] = {"frontend": {"enabled": False}}
    out = bench(str(write(tmp_path, yaml.safe_dump(data))), cwd=tmp_path)
    assert out.returncode == 2
    assert "the deployment serves no endpoint with a model name: nothing to benchmark" in only_line(out)


def test_an_endpoint_that_is_not_serving_is_exit_1_and_leaves_no_directory(tmp_path, bench_env):  # noqa: F811
    """configs/local.yaml with nothing running (its frontend port free): the endpoint does not answer."""
    env = {**fresh_env(), "LAUNCHER_PORT": str(free_port()), "LAUNCHER_BENCH_ENV": str(bench_env)}
    out = bench(str(REPO / "configs" / "local.yaml"), "--isl", "10", "--osl", "10", "--out", str(tmp_path / "r"),
                cwd=tmp_path, env=env)  # fmt: skip
    assert out.returncode == 1, out.stderr
    line = only_line(out)
    assert line.startswith(f"error: endpoint http://127.0.0.1:{env['LAUNCHER_PORT']} is not serving: frontend not")
    assert line.endswith("(see `launcher status`)")
    assert sorted(p.name for p in tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["compare", "a"], "error: compare: expected `launcher bench compare DIR1 DIR2`"),
        (["x.yaml", "y.yaml"], "error: CONFIG: expected at most one CONFIG, got 2: x.yaml y.yaml"),
    ],
)
def test_command_line_shapes(tmp_path, args, expected):
    out = bench(*args, cwd=tmp_path)
    assert out.returncode == 2 and only_line(out) == expected


def test_compare_of_something_that_is_not_a_result(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "results.json").write_text('{"results": []}')
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "results.json").write_text("not json")
    out = bench("compare", str(tmp_path / "a"), str(tmp_path / "b"), cwd=tmp_path)
    assert out.returncode == 2
    assert only_line(out).startswith(f"error: DIR2: {tmp_path / 'b' / 'results.json'}: not a `launcher bench` result")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"results": [1, 2]}', "results[0]: expected an object (one row per concurrency), got 1"),
        ('{"results": [{"x": 1}]}', "results[0].concurrency: expected a whole number, got nothing"),
        ('{"results": [{"concurrency": [1]}]}', "results[0].concurrency: expected a whole number, got [1]"),
        ('{"results": [{"concurrency": 1, "output_tokens_per_s": "fast"}]}',
         'results[0].output_tokens_per_s: expected a number or null, got "fast"'),
        ('{"results": [{"concurrency": 1}, {"concurrency": 2, "errors": true}]}',
         "results[1].errors: expected a number or null, got true"),
    ],
)  # fmt: skip
def test_compare_of_malformed_result_rows(tmp_path, text, expected):
    """Rows of a results.json that are not what `launcher bench` writes: one line naming the file, the row and
    what was expected; exit 2 (before, a traceback)."""
    good = tmp_path / "a" / "results.json"
    good.parent.mkdir()
    good.write_text('{"results": [{"concurrency": 1, "output_tokens_per_s": 10.5}]}')
    bad = tmp_path / "b.json"
    bad.write_text(text)
    out = bench("compare", str(good.parent), str(bad), cwd=tmp_path)
    assert out.returncode == 2, out.stderr
    assert only_line(out) == f"error: DIR2: {bad}: not a `launcher bench` result: {expected}"


def test_isl_osl_over_the_context_with_a_nested_out_leaves_no_directory(tmp_path, unreachable):
    """--out A/B with ISL + OSL beyond the context: refused (exit 2) before A/ is created."""
    out = bench(str(unreachable), "--isl", "500", "--osl", "501", "--out", str(tmp_path / "A" / "B"), cwd=tmp_path)
    assert out.returncode == 2 and only_line(out).startswith("error: --isl/--osl: ISL 500 + OSL 501")
    assert not (tmp_path / "A").exists()
