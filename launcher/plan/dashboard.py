"""The Grafana dashboard the project ships (classic JSON model): per-role throughput, TTFT/ITL
percentiles, KV-cache usage, queue depth, running requests; GPU panels when a DCGM exporter is scraped.

Its queries use the labels `prometheus_config` gives every target (`role`, `group`, `rank`, `node`), and
the metric names `observe` reads (the engines' own, else Dynamo's). `dashboards/launcher.json` is this,
with the GPU panels, for importing into a Grafana of your own.
"""

from __future__ import annotations

from typing import Any

RATE = "[1m]"
ENGINE_PROMPT = 'rate({__name__=~"vllm:prompt_tokens_total|sglang:prompt_tokens_total"}' + RATE + ")"
ENGINE_GENERATED = 'rate({__name__=~"vllm:generation_tokens_total|sglang:generation_tokens_total"}' + RATE + ")"
# Dynamo's mocker exports no token counters: one TTFT observation per first token, one ITL per next one.
MOCKER_GENERATED = (
    f"rate(vllm:time_to_first_token_seconds_count{RATE}) + rate(vllm:inter_token_latency_seconds_count{RATE})"
)
RUNNING = '{__name__=~"vllm:num_requests_running|sglang:num_running_reqs"}'
PREFILL_INFLIGHT = 'dynamo_component_inflight_requests{dynamo_endpoint="generate",role="prefill"}'
WAITING = '{__name__=~"vllm:num_requests_waiting|sglang:num_queue_reqs|dynamo_request_queue"}'
KV_USAGE = '{__name__=~"vllm:kv_cache_usage_perc|sglang:token_usage|dynamo_component_gpu_cache_usage_percent"}'
RANK = "{{group}} r{{rank}}"


def _quantiles(histograms: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """p50/p90/p99 of each (histogram, who) over the last minute."""
    out = []
    for histogram, who in histograms:
        for q in ("0.5", "0.9", "0.99"):
            expr = f"histogram_quantile({q}, sum by (le) (rate({histogram}_bucket{RATE})))"
            out.append((expr, f"{who} p{round(float(q) * 100)}"))
    return out


def panels(gpu_panels: bool) -> list[tuple[str, str, list[tuple[str, str]]]]:
    """(title, unit, [(expr, legend)]) of every panel, in reading order."""
    found = [
        ("Requests/s (frontend or router)", "reqps", [
            (f"sum(rate(dynamo_frontend_requests_total{RATE}))", "frontend"),
            (f"sum(rate(smg_router_requests_total{RATE}))", "router"),
        ]),
        ("Output tokens/s per role", "short", [
            (f"sum by (role) ({ENGINE_GENERATED})", "{{role}}"),
            (f"sum by (role) ({MOCKER_GENERATED})", "{{role}} (mocker)"),
            (f"sum(rate(dynamo_frontend_output_tokens_total{RATE}))", "frontend"),
        ]),
        ("Input tokens/s per role", "short", [
            (f"sum by (role) ({ENGINE_PROMPT})", "{{role}}"),
            (f"sum(rate(dynamo_frontend_input_sequence_tokens_sum{RATE}))", "frontend"),
        ]),
        ("Time to first token", "s", _quantiles(
            [("dynamo_frontend_time_to_first_token_seconds", "frontend"), ("smg_router_ttft_seconds", "router")]
        )),
        ("Inter-token latency", "s", _quantiles(
            [("dynamo_frontend_inter_token_latency_seconds", "frontend"), ("smg_router_tpot_seconds", "router")]
        )),
        ("KV-cache usage per rank", "percentunit", [(f"avg by (group, rank) ({KV_USAGE})", RANK)]),
        ("Queue depth per rank", "short", [(f"sum by (group, rank) ({WAITING})", RANK)]),
        ("Running requests per rank", "short", [
            (f"sum by (group, rank) ({RUNNING})", RANK),
            (f"sum by (group, rank) ({PREFILL_INFLIGHT})", RANK),
        ]),
    ]  # fmt: skip
    if gpu_panels:
        found += [
            ("GPU utilisation per node (DCGM)", "percent", [("avg by (node) (DCGM_FI_DEV_GPU_UTIL)", "{{node}}")]),
            ("GPU memory used per node (DCGM)", "decmbytes", [("sum by (node) (DCGM_FI_DEV_FB_USED)", "{{node}}")]),
        ]
    return found


def _panel(index: int, title: str, unit: str, queries: list[tuple[str, str]], datasource: dict) -> dict[str, Any]:
    return {
        "id": index + 1,
        "type": "timeseries",
        "title": title,
        "datasource": datasource,
        "gridPos": {"h": 8, "w": 12, "x": 12 * (index % 2), "y": 8 * (index // 2)},
        "targets": [
            {"refId": chr(ord("A") + i), "datasource": datasource, "expr": expr, "legendFormat": legend,
             "range": True, "editorMode": "code"}
            for i, (expr, legend) in enumerate(queries)
        ],
        "fieldConfig": {
            "defaults": {"unit": unit, "custom": {"drawStyle": "line", "lineWidth": 1, "fillOpacity": 10,
                                                  "showPoints": "never", "spanNulls": True}},
            "overrides": [],
        },
        "options": {
            "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True, "calcs": []},
            "tooltip": {"mode": "multi", "sort": "desc"},
        },
    }  # fmt: skip


def build(datasource_uid: str, gpu_panels: bool) -> dict[str, Any]:
    """The dashboard, its queries on the datasource with this uid."""
    datasource = {"type": "prometheus", "uid": datasource_uid}
    return {
        "uid": "launcher-deployment",
        "title": "launcher: deployment",
        "description": "Throughput, latency, KV-cache and queues of a deployment started by launcher",
        "tags": ["launcher", "dynamo", "sglang", "vllm"],
        "timezone": "browser",
        "editable": True,
        "graphTooltip": 1,
        "refresh": "10s",
        "time": {"from": "now-15m", "to": "now"},
        "schemaVersion": 39,
        "version": 1,
        "templating": {"list": []},
        "annotations": {"list": []},
        "panels": [_panel(i, *p, datasource) for i, p in enumerate(panels(gpu_panels))],
    }
