"""`top`'s figures from real /metrics text (captured from Dynamo 1.6.1's frontend and mocker), parsed
with prometheus-client's parser: no servers here."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from launcher.output.top_view import table
from launcher.plan import observe

DATA = Path(__file__).resolve().parents[1] / "data" / "metrics"
FRONTEND = (DATA / "dynamo-1.6.1-frontend.txt").read_text()
DECODE = (DATA / "dynamo-1.6.1-mocker-decode.txt").read_text()
PREFILL = (DATA / "dynamo-1.6.1-mocker-prefill.txt").read_text()


def value(text: str, line_start: str) -> float:
    """A sample's value, read off the text by hand (independent of the parser under test)."""
    line = next(x for x in text.splitlines() if x.startswith(line_start))
    return float(line.rsplit(" ", 1)[1])


def bumped(text: str, sample: str, by: float) -> str:
    """The same scrape with one sample's value raised: a later scrape of a busier service."""

    def bump(m: re.Match) -> str:
        return f"{m.group(1)} {float(m.group(2)) + by}"

    # the sample's name, or its name and the start of its labels; a name alone must end there
    tail = r"[^ ]*" if "{" in sample else r"(?:\{[^}]*\})?"
    return re.sub(rf"^({re.escape(sample)}{tail}) (\S+)$", bump, text, count=1, flags=re.M)


def test_the_real_dynamo_scrapes_parse_and_hold_the_names_top_reads():
    decode, prefill, frontend = observe.parse(DECODE), observe.parse(PREFILL), observe.parse(FRONTEND)
    assert "vllm:num_requests_running" in decode and "vllm:kv_cache_usage_perc" in decode
    # the prefill mocker exports only Dynamo's own work-handler metrics
    assert "vllm:num_requests_running" not in prefill and "dynamo_component_inflight_requests" in prefill
    assert "dynamo_frontend_time_to_first_token_seconds_bucket" in frontend
    assert frontend.total("dynamo_frontend_requests_total") == value(FRONTEND, "dynamo_frontend_requests_total")


def test_worker_figures_of_a_decode_mocker_over_an_interval():
    before = observe.parse(DECODE)
    later = bumped(
        bumped(DECODE, "vllm:inter_token_latency_seconds_count", 90), "vllm:time_to_first_token_seconds_count", 10
    )
    later = bumped(later, "dynamo_component_requests_total", 10)
    f = observe.worker_figures(before, observe.parse(later), seconds=2.0)
    assert f.output_tps == pytest.approx(50.0)  # (90 + 10) tokens in 2 s
    assert f.requests_ps == pytest.approx(5.0)
    assert f.running == value(DECODE, "vllm:num_requests_running")
    assert f.kv_usage == value(DECODE, "vllm:kv_cache_usage_perc")
    assert f.input_tps is None  # the mocker exports no prompt-token counter: shown as "-", not as 0
    assert f.sources["running"] == "vllm:num_requests_running"


def test_a_prefill_mocker_counts_in_flight_requests_from_dynamos_metrics():
    busy = bumped(
        PREFILL, 'dynamo_component_inflight_requests{dynamo_component="prefill",dynamo_endpoint="generate"', 3
    )
    f = observe.worker_figures(observe.parse(PREFILL), observe.parse(busy), seconds=1.0)
    assert f.running == 3 and f.sources["running"] == "dynamo_component_inflight_requests"
    assert f.waiting == value(PREFILL, "dynamo_request_queue") and f.output_tps is None


def test_engine_counters_win_over_the_mocker_fallback():
    text = "# TYPE sglang:generation_tokens_total counter\nsglang:generation_tokens_total 100\n"
    later = "# TYPE sglang:generation_tokens_total counter\nsglang:generation_tokens_total 400\n"
    f = observe.worker_figures(observe.parse(text), observe.parse(later), seconds=3.0)
    assert f.output_tps == pytest.approx(100.0) and f.sources["output_tps"] == "sglang:generation_tokens_total"


def test_frontend_figures_and_latency_percentiles_over_the_interval():
    before = observe.parse(FRONTEND)
    later = bumped(FRONTEND, "dynamo_frontend_requests_total", 4)
    later = bumped(later, "dynamo_frontend_output_tokens_total", 400)
    # 4 new first tokens, all in the 0.1 s bucket and above: p50 falls inside it
    for le in ("0.1", "0.25", "0.5", "1", "2.5", "5", "10", "+Inf"):
        later = bumped(later, f'dynamo_frontend_time_to_first_token_seconds_bucket{{model="tiny",le="{le}"}}', 4)
    f = observe.entry_figures(before, observe.parse(later), seconds=2.0)
    assert f.requests_ps == pytest.approx(2.0) and f.output_tps == pytest.approx(200.0)
    bounds = sorted(
        float(b) for b in re.findall(r'time_to_first_token_seconds_bucket\{model="tiny",le="([^"]+)"', FRONTEND)
    )
    below = bounds[bounds.index(0.1) - 1]
    assert below < f.ttft_p50 <= 0.1
    assert f.itl_p50 is None  # no token in the interval: no latency, not 0


def test_histogram_quantile_like_promql():
    buckets = [(0.1, 10.0), (0.5, 20.0), (float("inf"), 20.0)]
    assert observe.histogram_quantile(0.5, buckets) == pytest.approx(0.1)
    assert observe.histogram_quantile(0.75, buckets) == pytest.approx(0.3)
    assert observe.histogram_quantile(0.99, [(0.1, 1.0), (float("inf"), 10.0)]) == pytest.approx(0.1)
    assert observe.histogram_quantile(0.5, [(0.1, 0.0), (float("inf"), 0.0)]) is None


def test_a_counter_that_went_down_was_reset():
    assert observe.rate(100.0, 30.0, 10.0) == pytest.approx(3.0)
    assert observe.rate(None, 30.0, 10.0) is None


def test_not_prometheus_text_is_refused():
    with pytest.raises(ValueError):
        observe.parse("<html>not metrics</html>\n")


def test_nvidia_smi_csv():
    gpus = observe.parse_nvidia_smi("0, 87, 71234, 81559\n1, [N/A], 10, 81559\nNVIDIA-SMI has failed\n")
    assert gpus == [observe.Gpu(0, 87.0, 71234.0, 81559.0)]


def test_totals_per_role_and_the_table():
    up = observe.TopRow(4, "n4", "decode-r0", "decode", "decode", 0, "worker", "up",
                        observe.Figures(running=3, waiting=1, kv_usage=0.5, output_tps=100.0))  # fmt: skip
    other = observe.TopRow(5, "n5", "decode-r1", "decode", "decode", 1, "worker", "up",
                           observe.Figures(running=2, waiting=0, kv_usage=0.25, output_tps=50.0))  # fmt: skip
    dead = observe.TopRow(6, "n6", "decode-r2", "decode", "decode", 2, "worker", "exited (exit code 137)", age=4.0)
    totals = observe.totals([up, other, dead])["decode"]
    assert totals["ranks"] == 3 and totals["answering"] == 2
    assert totals["running"] == 5 and totals["output_tps"] == 150.0 and totals["kv_usage"] == pytest.approx(0.375)
    from rich.console import Console

    console = Console(width=200, record=True)
    console.print(table([up, other, dead], "top"))
    text = console.export_text()
    assert "exited (exit code 137), last metrics 4s ago" in text and "2/3 up" in text


def test_a_hostile_scrape_is_bounded_and_refused_in_words():
    """What a node sends to `top` is not trusted: a 2 MB line of escaped label quotes (the text parser's
    work grows with its square: about 30 s) is skipped while the real samples beside it are read, and
    what the parser chokes on is a ValueError (one line in `top`), never another exception."""
    started = time.process_time()
    hostile = 'evil{a="' + '\\"' * (1 << 20) + '"} 1\n'
    parsed = observe.parse(hostile + DECODE)
    assert time.process_time() - started < 5
    assert "evil" not in parsed
    assert parsed.total("vllm:num_requests_running") == value(DECODE, "vllm:num_requests_running")
    for text in ('a{b="\\x"} 1\n', '# TYPE a histogram\na_bucket{le="x"} 1\n', "a 1 2 3 4\n", "\x00\n"):
        try:
            observe.parse(text)
        except ValueError:
            pass  # refused in words; anything else escaping fails the test
