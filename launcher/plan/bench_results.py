"""What one AIPerf run measured, read from its JSON export (`profile_export_aiperf.json`, schema 1.4 in
AIPerf 0.13.0), as one row of `launcher bench`'s results; tokens/s per node and per GPU (the LMSYS
comparison); and the side-by-side differences of two result sets (`bench compare`). Pure: dicts in, dicts out.
"""

from __future__ import annotations

import json
from typing import Any

from launcher.plan.bench import Scale

# (row key, AIPerf metric, statistic)
AIPERF_FIELDS = (
    ("request_throughput", "request_throughput", "avg"),
    ("input_tokens_per_s", "input_token_throughput", "avg"),
    ("output_tokens_per_s", "output_token_throughput", "avg"),
    ("ttft_p50_ms", "time_to_first_token", "p50"),
    ("ttft_p90_ms", "time_to_first_token", "p90"),
    ("ttft_p99_ms", "time_to_first_token", "p99"),
    ("itl_p50_ms", "inter_token_latency", "p50"),
    ("itl_p90_ms", "inter_token_latency", "p90"),
    ("itl_p99_ms", "inter_token_latency", "p99"),
    ("latency_p50_ms", "request_latency", "p50"),
    ("latency_p99_ms", "request_latency", "p99"),
    ("output_tokens_per_request", "usage_completion_tokens", "avg"),
    ("input_tokens_per_request", "usage_prompt_tokens", "avg"),
    ("duration_s", "benchmark_duration", "avg"),
)


class ExportError(ValueError):
    """The export is not what AIPerf 0.13 writes (another version, or a run that measured nothing)."""


def _metric(export: dict[str, Any], name: str, stat: str) -> float | None:
    value = export.get(name)
    if isinstance(value, dict) and isinstance(value.get(stat), int | float):
        return float(value[stat])
    return None


def errors_of(export: dict[str, Any]) -> int:
    """Failed requests of the measured phase: AIPerf's error count, else the sum of its error summary."""
    counted = _metric(export, "error_request_count", "avg")
    if counted is not None:
        return int(counted)
    return sum(int(e.get("count", 0)) for e in export.get("error_summary") or [] if isinstance(e, dict))


def row(concurrency: int, export: dict[str, Any], scale: Scale) -> dict[str, Any]:
    """One concurrency's results: AIPerf's figures, errors, and throughput per node and per GPU."""
    if not isinstance(export.get("request_throughput"), dict):
        raise ExportError("no request_throughput in AIPerf's export (is it AIPerf 0.13's profile_export_aiperf.json?)")
    out: dict[str, Any] = {"concurrency": concurrency}
    for key, metric, stat in AIPERF_FIELDS:
        out[key] = _metric(export, metric, stat)
    completed = _metric(export, "request_count", "avg") or _metric(export, "completed_request_count", "avg")
    out["requests"] = int(completed or 0)
    out["errors"] = errors_of(export)
    out.update(per_unit(out["input_tokens_per_s"], out["output_tokens_per_s"], scale))
    return out


def per_unit(tokens_in: float | None, tokens_out: float | None, scale: Scale) -> dict[str, float | None]:
    """Throughput divided by worker nodes and GPUs: all of them, and per phase as LMSYS reports it (input
    tokens/s per prefill node, output tokens/s per decode node). None where there is nothing to divide by."""

    def per(value: float | None, count: int) -> float | None:
        return None if value is None or count <= 0 else value / count

    return {
        "input_tokens_per_s_per_node": per(tokens_in, scale.nodes),
        "output_tokens_per_s_per_node": per(tokens_out, scale.nodes),
        "input_tokens_per_s_per_gpu": per(tokens_in, scale.gpus),
        "output_tokens_per_s_per_gpu": per(tokens_out, scale.gpus),
        "input_tokens_per_s_per_prefill_node": per(tokens_in, scale.prefill_nodes),
        "output_tokens_per_s_per_decode_node": per(tokens_out, scale.decode_nodes),
    }


# -- bench compare ------------------------------------------------------------------------------------

COMPARED = (
    ("request_throughput", "req/s"),
    ("input_tokens_per_s", "input tok/s"),
    ("output_tokens_per_s", "output tok/s"),
    ("output_tokens_per_s_per_gpu", "output tok/s/GPU"),
    ("output_tokens_per_s_per_node", "output tok/s/node"),
    ("ttft_p50_ms", "TTFT p50 ms"),
    ("ttft_p99_ms", "TTFT p99 ms"),
    ("itl_p50_ms", "ITL p50 ms"),
    ("itl_p99_ms", "ITL p99 ms"),
    ("errors", "errors"),
)
# What tells two runs apart, from each run's results.json (dotted paths).
RECIPE_KEYS = (
    "deployment", "profile", "workload.workload", "workload.isl", "workload.osl", "workload.seed",
    "client.where", "client.aiperf", "recipe.config_sha256", "recipe.plan_sha256", "recipe.model",
    "recipe.images", "launcher",
)  # fmt: skip


def _shown(value: Any) -> str:
    return "nothing" if value is None else json.dumps(value, default=str)[:60]


def row_problem(rows: list[Any]) -> str | None:
    """What is wrong with a results list `bench compare` reads (None: every row is as `launcher bench` writes
    it): each row an object with a whole-number concurrency, each compared figure a number or null."""
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            return f"results[{i}]: expected an object (one row per concurrency), got {_shown(row)}"
        level = row.get("concurrency")
        if not isinstance(level, int) or isinstance(level, bool):
            return f"results[{i}].concurrency: expected a whole number, got {_shown(level)}"
        for key, _ in COMPARED:
            value = row.get(key)
            if value is not None and (not isinstance(value, (int, float)) or isinstance(value, bool)):
                return f"results[{i}].{key}: expected a number or null, got {_shown(value)}"
    return None


def change(a: float | None, b: float | None) -> float | None:
    """(b - a) / a in percent; None when either is missing or a is 0."""
    if a is None or b is None or a == 0:
        return None
    return (b - a) / abs(a) * 100


def compare(first: dict[str, Any], second: dict[str, Any]) -> list[dict[str, Any]]:
    """Per concurrency present in either run, per metric: both values and the change in percent."""
    rows_a = {r["concurrency"]: r for r in first.get("results", [])}
    rows_b = {r["concurrency"]: r for r in second.get("results", [])}
    out = []
    for concurrency in sorted(set(rows_a) | set(rows_b)):
        a, b = rows_a.get(concurrency, {}), rows_b.get(concurrency, {})
        for key, label in COMPARED:
            va, vb = a.get(key), b.get(key)
            out.append(
                {"concurrency": concurrency, "metric": label, "key": key, "a": va, "b": vb, "change": change(va, vb)}
            )
    return out


def _dig(data: dict[str, Any], dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(data, dict):
            return None
        data = data.get(part)  # type: ignore[assignment]
    return data


def recipe_differences(first: dict[str, Any], second: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """The recipe keys whose values differ between the two runs."""
    return [(k, _dig(first, k), _dig(second, k)) for k in RECIPE_KEYS if _dig(first, k) != _dig(second, k)]
