"""`launcher bench`'s pure parts: settings from the command line (bad input is exit 2 naming the option),
the AIPerf command line (Dynamo's perf.sh options), the context check, the node/GPU division, reading a
real AIPerf 0.13 export (captured from a testbed run), `bench compare`'s rows, and the plot program."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from launcher.commands.bench import finish, lmsys_line
from launcher.config.load import load
from launcher.errors import ConfigError
from launcher.plan import bench as B
from launcher.plan import bench_results as R
from launcher.plan.build import build
from tests.bench_env import bench_env  # noqa: F401
from tests.helpers import REPO

EXPORT = json.loads((REPO / "tests" / "data" / "aiperf-0.13.0-profile_export_aiperf.json").read_text())
PLOT = REPO / "launcher" / "remote" / "bench_plot.py"


def plan(name: str, profile: str | None = None):
    return build(load(REPO / "configs" / name, environ={}, profile=profile))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("0", "a concurrency is at least 1 and at most 1000000, got 0"),
        ("4,-1", "a concurrency is at least 1 and at most 1000000, got -1"),
        ("1,x", "expected whole numbers from 1 up separated by commas (1,4,16), got '1,x'"),
        ("", "expected whole numbers from 1 up separated by commas (1,4,16), got ''"),
    ],
)
def test_bad_concurrency_names_the_option(text, message):
    with pytest.raises(ConfigError) as bad:
        B.settings("e2e", text, None, None, None, None, True)
    assert bad.value.key == "--concurrency" and bad.value.message == message


def test_workload_defaults_and_overrides():
    e2e = B.settings("e2e", None, None, None, None, None, True)
    assert (e2e.isl, e2e.osl, e2e.concurrency) == (8192, 256, (1, 8, 64, 256))  # seed 004: 8k in, 256 out
    assert (e2e.requests_at(64), e2e.warmup_at(64)) == (640, 128)  # perf.sh: 10 x and 2 x concurrency
    prefill = B.settings("prefill", None, None, None, None, None, False)
    assert (prefill.isl, prefill.osl, prefill.concurrency, prefill.requests_at(8192)) == (4096, 5, (8192,), 8192)
    decode = B.settings("decode", None, None, None, None, None, True)
    assert (decode.isl, decode.osl, decode.requests_at(40000)) == (2000, 100, 40000)
    # The warm-up is 2 x concurrency up to a cap: not 80,000 requests before the decode stress test's 40,000.
    assert (e2e.warmup_at(256), prefill.warmup_at(8192), decode.warmup_at(40000)) == (256, 256, 256)
    assert (
        e2e.warmup_at(100) == 200 and B.settings("custom", "40000", 10, 10, None, 5000, True).warmup_at(40000) == 5000
    )
    mine = B.settings("e2e", "16,1,16", 100, 10, 7, 0, True)
    assert (mine.concurrency, mine.isl, mine.osl, mine.requests_at(16), mine.warmup_at(16)) == ((16, 1), 100, 10, 7, 0)


@pytest.mark.parametrize(
    ("args", "key"),
    [
        (("nope", "1", None, None), "--workload"),
        (("custom", "1", None, 5), "--workload"),  # custom needs --isl, --osl, --concurrency
        (("custom", None, 5, 5), "--workload"),
        (("e2e", "1", 0, None), "--isl"),
        (("e2e", "1", None, -3), "--osl"),
    ],
)
def test_bad_settings_are_config_errors(args, key):
    workload, concurrency, isl, osl = args
    with pytest.raises(ConfigError) as bad:
        B.settings(workload, concurrency, isl, osl, None, None, True)
    assert bad.value.key == key


def test_aiperf_argv_is_perf_sh_s():
    s = B.settings("e2e", "4", 2000, 256, None, None, True, seed=7)
    argv = B.aiperf_argv("/env/bin/aiperf", s, 4, "http://127.0.0.1:5", "tiny", "/tok", "/out/c4")
    text = " ".join(argv)
    for part in (
        "/env/bin/aiperf profile --model tiny --tokenizer /tok --endpoint-type chat --endpoint /v1/chat/completions",
        "--streaming --url http://127.0.0.1:5",
        "--isl 2000 --isl-stddev 0 --osl 256 --osl-stddev 0",
        "--extra-inputs max_tokens:256 --extra-inputs min_tokens:256 --extra-inputs ignore_eos:true",
        "--use-server-token-count",
        "--concurrency 4 --request-count 40 --num-dataset-entries 48 --random-seed 7",
        "--artifact-dir /out/c4 --ui none --no-gpu-telemetry --no-server-metrics --warmup-request-count 8",
    ):
        assert part in text, part
    assert "nvext" not in text  # Dynamo 1.6.1's frontend answers 400 to nvext.ignore_eos
    assert "--warmup-request-count" not in B.aiperf_argv("a", B.settings("e2e", "4", 9, 9, None, 0, True), 4, "u",
                                                         "m", "t", "o")  # fmt: skip


def test_context_from_args_and_the_check():
    stressed = plan("dsr1-104gpu.yaml", "decode-stress")
    assert B.context_from_args(stressed) == (4500, "groups.decode --context-length")
    assert B.context_from_args(plan("dsr1-104gpu.yaml")) is None
    e2e = B.settings("e2e", None, None, None, None, None, True)
    with pytest.raises(ConfigError) as bad:
        B.check_context(e2e, B.context_from_args(stressed))
    assert bad.value.message == (
        "ISL 8192 + OSL 256 = 8448 tokens exceed the context of 4500 (groups.decode --context-length):"
        " lower --isl/--osl"
    )
    B.check_context(B.settings("decode", None, None, None, None, None, True), (4500, "x"))  # 2000 + 100 fits


def test_scale_counts_worker_nodes_and_gpus_per_phase():
    assert B.scale(plan("dsr1-104gpu.yaml")) == B.Scale(13, 104, 4, 9, 32, 72)
    assert B.scale(plan("sglang-1p1d-32gpu.yaml")) == B.Scale(4, 32, 2, 2, 16, 16)
    assert B.scale(plan("local.yaml")) == B.Scale(1, 0, 1, 1, 0, 0)


def test_a_real_aiperf_export_becomes_a_row():
    row = R.row(16, EXPORT, B.Scale(13, 104, 4, 9, 32, 72))
    assert row["concurrency"] == 16 and row["requests"] == 160 and row["errors"] == 0
    assert row["output_tokens_per_request"] == 256.0  # the server's count: exactly OSL
    assert row["output_tokens_per_s"] == pytest.approx(EXPORT["output_token_throughput"]["avg"])
    assert row["ttft_p99_ms"] == pytest.approx(EXPORT["time_to_first_token"]["p99"])
    assert row["itl_p50_ms"] == pytest.approx(EXPORT["inter_token_latency"]["p50"])
    assert row["output_tokens_per_s_per_gpu"] == pytest.approx(row["output_tokens_per_s"] / 104)
    assert row["output_tokens_per_s_per_decode_node"] == pytest.approx(row["output_tokens_per_s"] / 9)
    assert row["input_tokens_per_s_per_prefill_node"] == pytest.approx(row["input_tokens_per_s"] / 4)
    assert R.row(1, EXPORT, B.Scale(13, 0, 4, 9, 0, 0))["output_tokens_per_s_per_gpu"] is None
    failed = {**EXPORT, "error_request_count": {"unit": "requests", "avg": 3.0}}
    assert R.row(16, failed, B.Scale(1, 0, 0, 0, 0, 0))["errors"] == 3
    summary = {**EXPORT, "error_summary": [{"error_details": {"code": 400}, "count": 2}]}
    assert R.errors_of(summary) == 2
    with pytest.raises(R.ExportError):
        R.row(1, {"schema_version": "9"}, B.Scale(1, 0, 0, 0, 0, 0))


def results(rows, **extra):
    return {"deployment": "d", "workload": {"workload": "e2e", "isl": 1, "osl": 1}, "results": rows, **extra}


def test_compare_rows_and_recipe_differences():
    a = results([{"concurrency": 1, "output_tokens_per_s": 100.0}, {"concurrency": 4, "output_tokens_per_s": 300.0}],
                client={"where": "local"}, recipe={"images": ["sha256:1"]})  # fmt: skip
    b = results([{"concurrency": 4, "output_tokens_per_s": 330.0}, {"concurrency": 16, "output_tokens_per_s": 1.0}],
                client={"where": "head"}, recipe={"images": ["sha256:1"]})  # fmt: skip
    rows = {(r["concurrency"], r["key"]): r for r in R.compare(a, b)}
    assert rows[(4, "output_tokens_per_s")]["change"] == pytest.approx(10.0)
    assert rows[(1, "output_tokens_per_s")]["b"] is None and rows[(1, "output_tokens_per_s")]["change"] is None
    assert rows[(16, "output_tokens_per_s")]["a"] is None
    assert R.recipe_differences(a, b) == [("client.where", "local", "head")]


def test_the_plot_program_draws_a_png_in_the_bench_env(tmp_path, bench_env: Path):  # noqa: F811
    scale = B.Scale(13, 0, 4, 9, 0, 0)
    rows = [R.row(c, EXPORT, scale) for c in (1, 4, 16)]
    for r, factor in zip(rows, (0.2, 0.5, 1.0), strict=True):  # three distinct points
        r["output_tokens_per_s_per_node"] *= factor
    data = results(rows, scale=scale.to_json(), client={"aiperf": "0.13.0"}, started="2026-12-02T12:00")
    (tmp_path / "results.json").write_text(json.dumps(data))
    done = subprocess.run([str(bench_env / "python"), str(PLOT), str(tmp_path / "results.json"),
                           str(tmp_path / "plot.png")], capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr
    png = (tmp_path / "plot.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000
    import struct

    width, height = struct.unpack(">II", png[16:24])
    assert (width, height) == (1320, 550)  # 12 x 5 inches at 110 dpi


def test_finish_writes_results_then_renames_the_partial_directory(tmp_path, bench_env: Path, capsys):  # noqa: F811
    scale = B.Scale(13, 104, 4, 9, 32, 72)
    data = results([R.row(16, EXPORT, scale)], scale=scale.to_json(), client={"aiperf": "0.13.0"}, started="x")
    work, out = tmp_path / "run.partial", tmp_path / "run"
    work.mkdir()
    finish(data, work, out, bench_env)
    assert not work.exists() and sorted(p.name for p in out.iterdir()) == ["plot.png", "results.json", "results.txt"]
    shown = capsys.readouterr().out
    assert "out tok/s/GPU" in shown and "4,594" in shown and lmsys_line(data) in shown
    assert json.loads((out / "results.json").read_text())["results"][0]["concurrency"] == 16
