"""What `top` shows, computed from the services' Prometheus `/metrics` text: pure functions.

The text is parsed by prometheus-client's own text-format parser. Which metric means what (names read
off the real Dynamo 1.6.1 frontend and mocker, SGLang's and vLLM's exporters, sglang-router 0.3.2's):

- a worker's running and waiting requests: `vllm:num_requests_running` / `vllm:num_requests_waiting` (vLLM
  and Dynamo's mocker), `sglang:num_running_reqs` / `sglang:num_queue_reqs` (SGLang, also through Dynamo's
  system port), else Dynamo's own `dynamo_component_inflight_requests{dynamo_endpoint="generate"}` and
  `dynamo_request_queue` (what a mocker in prefill mode exports);
- KV-cache usage (0-1): `vllm:kv_cache_usage_perc`, `sglang:token_usage`, `dynamo_component_gpu_cache_usage_percent`;
- tokens: `*:prompt_tokens_total` and `*:generation_tokens_total`; the mocker exports neither, so its
  output tokens are its TTFT and ITL observations (one per token: the first, then each next one);
- the frontend: `dynamo_frontend_requests_total`, `..._inflight_requests`, `..._queued_requests`,
  `..._input_sequence_tokens_sum`, `..._output_tokens_total` and the histograms
  `..._time_to_first_token_seconds` and `..._inter_token_latency_seconds`;
- the SGLang router: `smg_router_requests_total` (else `smg_http_requests_total`), `smg_router_ttft_seconds`,
  `smg_router_tpot_seconds`, `smg_router_tokens_total`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from launcher.plan.types import split_unit

Series = list[tuple[dict[str, str], float]]  # one sample name's series: (labels, value)

RUNNING = ("vllm:num_requests_running", "sglang:num_running_reqs")
WAITING = ("vllm:num_requests_waiting", "sglang:num_queue_reqs", "dynamo_request_queue")
KV_USAGE = ("vllm:kv_cache_usage_perc", "sglang:token_usage", "dynamo_component_gpu_cache_usage_percent")
PROMPT_TOKENS = ("vllm:prompt_tokens_total", "sglang:prompt_tokens_total")
GENERATION_TOKENS = ("vllm:generation_tokens_total", "sglang:generation_tokens_total")
# The mocker's output tokens: each is one TTFT (the first) or one ITL (each next) observation.
TOKEN_OBSERVATIONS = ("vllm:time_to_first_token_seconds_count", "vllm:inter_token_latency_seconds_count")
WORKER_REQUESTS = ("vllm:request_success_total", "sglang:num_requests_total")
GENERATE = {"dynamo_endpoint": "generate"}

FRONTEND_TTFT = "dynamo_frontend_time_to_first_token_seconds"
FRONTEND_ITL = "dynamo_frontend_inter_token_latency_seconds"
ROUTER_TTFT = "smg_router_ttft_seconds"
ROUTER_ITL = "smg_router_tpot_seconds"


class Parsed(dict[str, Series]):
    """One scrape: sample name -> its series."""

    def total(self, name: str, match: dict[str, str] | None = None) -> float | None:
        """Sum of a sample's series (those whose labels include `match`), None when absent."""
        series = [
            v for labels, v in self.get(name, []) if not match or all(labels.get(k) == w for k, w in match.items())
        ]
        return sum(series) if series else None

    def mean(self, name: str) -> float | None:
        series = [v for _, v in self.get(name, []) if not math.isnan(v)]
        return sum(series) / len(series) if series else None

    def first(self, names: tuple[str, ...], how: str = "total") -> float | None:
        """The first of these names the scrape has (the engine's own before Dynamo's generic one)."""
        for name in names:
            value = self.mean(name) if how == "mean" else self.total(name)
            if value is not None:
                return value
        return None


# A scrape is what a node sends: read at most this much (`top`), and lines longer than this skipped (the
# text parser's work grows with the square of a line full of escaped label quotes: minutes for 4 MB).
MAX_SCRAPE_BYTES = 4 << 20
MAX_LINE_CHARS = 2048


def parse(text: str) -> Parsed:
    """Prometheus text format -> Parsed (ValueError when it is not that format); lines over MAX_LINE_CHARS
    are skipped (no metric `top` reads has one)."""
    if any(len(line) > MAX_LINE_CHARS for line in text.splitlines()):
        text = "\n".join(line for line in text.splitlines() if len(line) <= MAX_LINE_CHARS) + "\n"
    from prometheus_client.parser import text_string_to_metric_families  # here: 0.08 CPU-s for every command

    out = Parsed()
    try:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                out.setdefault(sample.name, []).append((dict(sample.labels), float(sample.value)))
    except Exception as exc:  # the parser's errors are not all ValueError: none may end `top` with a traceback
        raise ValueError(f"not Prometheus text ({type(exc).__name__})") from None
    return out


def rate(before: float | None, after: float | None, seconds: float) -> float | None:
    """Per-second increase of a counter; a counter that went down was reset (a restart): count from 0."""
    if before is None or after is None or seconds <= 0:
        return None
    increase = after - before if after >= before else after
    return increase / seconds


def histogram_quantile(q: float, buckets: list[tuple[float, float]]) -> float | None:
    """Like PromQL's: the q-quantile of cumulative (upper bound, count) buckets, linear within a bucket."""
    buckets = sorted(buckets)
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if math.isinf(bound):
                return lower_bound  # beyond the last finite bucket: its bound is all we know
            if count == lower_count:
                return bound
            return lower_bound + (bound - lower_bound) * (rank - lower_count) / (count - lower_count)
        lower_bound, lower_count = bound, count
    return buckets[-1][0]


def bucket_delta(before: Parsed, after: Parsed, histogram: str) -> list[tuple[float, float]]:
    """The histogram's buckets over the interval (summed over series): observations made between two scrapes."""

    def cumulative(p: Parsed) -> dict[float, float]:
        out: dict[float, float] = {}
        for labels, value in p.get(histogram + "_bucket", []):
            le = float(labels.get("le", "inf"))
            out[le] = out.get(le, 0.0) + value
        return out

    a, b = cumulative(before), cumulative(after)
    # a count lower than before means the service restarted: what it counted since is all new
    return [(le, count - a.get(le, 0.0) if count >= a.get(le, 0.0) else count) for le, count in b.items()]


@dataclass
class Figures:
    """One target over one interval; None where the service does not export it."""

    running: float | None = None
    waiting: float | None = None
    kv_usage: float | None = None  # 0-1
    input_tps: float | None = None
    output_tps: float | None = None
    requests_ps: float | None = None
    ttft_p50: float | None = None
    ttft_p99: float | None = None
    itl_p50: float | None = None
    itl_p99: float | None = None
    sources: dict[str, str] = field(default_factory=dict)  # figure -> the metric it came from

    def to_json(self) -> dict[str, Any]:
        return {k: (None if v is None else round(v, 6)) for k, v in self.__dict__.items() if k != "sources"}


def _found(p: Parsed, names: tuple[str, ...]) -> str | None:
    return next((n for n in names if n in p), None)


def worker_figures(before: Parsed, after: Parsed, seconds: float) -> Figures:
    """A worker rank: requests in flight and queued, KV usage, tokens/s over the interval."""
    f = Figures()
    running = _found(after, RUNNING)
    if running:
        f.running, f.sources["running"] = after.total(running), running
    elif (value := after.total("dynamo_component_inflight_requests", GENERATE)) is not None:
        f.running, f.sources["running"] = value, "dynamo_component_inflight_requests"
    if waiting := _found(after, WAITING):
        f.waiting, f.sources["waiting"] = after.total(waiting), waiting
    if kv := _found(after, KV_USAGE):
        f.kv_usage, f.sources["kv_usage"] = after.mean(kv), kv
    if prompt := _found(after, PROMPT_TOKENS):
        f.input_tps, f.sources["input_tps"] = rate(before.total(prompt), after.total(prompt), seconds), prompt
    if generated := _found(after, GENERATION_TOKENS):
        f.output_tps = rate(before.total(generated), after.total(generated), seconds)
        f.sources["output_tps"] = generated
    elif all(n in after for n in TOKEN_OBSERVATIONS):
        f.output_tps = rate(_sum(before, TOKEN_OBSERVATIONS), _sum(after, TOKEN_OBSERVATIONS), seconds)
        f.sources["output_tps"] = " + ".join(TOKEN_OBSERVATIONS)
    if requests := _found(after, WORKER_REQUESTS):
        f.requests_ps = rate(before.total(requests), after.total(requests), seconds)
    else:
        name = "dynamo_component_requests_total"
        f.requests_ps = rate(before.total(name, GENERATE), after.total(name, GENERATE), seconds)
    return f


def _sum(p: Parsed, names: tuple[str, ...]) -> float | None:
    values = [p.total(n) for n in names]
    return None if any(v is None for v in values) else sum(v for v in values if v is not None)


def entry_figures(before: Parsed, after: Parsed, seconds: float) -> Figures:
    """Dynamo's frontend or the SGLang router: requests/s, tokens/s, TTFT and ITL percentiles."""
    if "smg_router_requests_total" in after or "smg_http_requests_total" in after:
        return _router_figures(before, after, seconds)
    f = Figures(running=after.total("dynamo_frontend_inflight_requests"))
    f.waiting = after.total("dynamo_frontend_queued_requests")
    name = "dynamo_frontend_requests_total"
    f.requests_ps = rate(before.total(name), after.total(name), seconds)
    name = "dynamo_frontend_input_sequence_tokens_sum"
    f.input_tps = rate(before.total(name), after.total(name), seconds)
    name = "dynamo_frontend_output_tokens_total"
    f.output_tps = rate(before.total(name), after.total(name), seconds)
    _latencies(f, before, after, FRONTEND_TTFT, FRONTEND_ITL)
    return f


def _router_figures(before: Parsed, after: Parsed, seconds: float) -> Figures:
    f = Figures()
    name = "smg_router_requests_total" if "smg_router_requests_total" in after else "smg_http_requests_total"
    f.requests_ps = rate(before.total(name), after.total(name), seconds)
    f.running = after.total("smg_worker_requests_active")
    for figure, kind in (("input_tps", "input"), ("output_tps", "output")):
        b = _labelled(before, "smg_router_tokens_total", kind)
        a = _labelled(after, "smg_router_tokens_total", kind)
        setattr(f, figure, rate(b, a, seconds))
    _latencies(f, before, after, ROUTER_TTFT, ROUTER_ITL)
    return f


def _labelled(p: Parsed, name: str, value: str) -> float | None:
    """Sum of the series that carry `value` in any label (the router's token kind)."""
    series = [v for labels, v in p.get(name, []) if value in labels.values()]
    return sum(series) if series else None


def _latencies(f: Figures, before: Parsed, after: Parsed, ttft: str, itl: str) -> None:
    ttft_buckets, itl_buckets = bucket_delta(before, after, ttft), bucket_delta(before, after, itl)
    f.ttft_p50, f.ttft_p99 = histogram_quantile(0.5, ttft_buckets), histogram_quantile(0.99, ttft_buckets)
    f.itl_p50, f.itl_p99 = histogram_quantile(0.5, itl_buckets), histogram_quantile(0.99, itl_buckets)


@dataclass(frozen=True)
class Gpu:
    index: int
    utilization: float  # percent
    memory_used: float  # MiB
    memory_total: float  # MiB


def parse_nvidia_smi(text: str) -> list[Gpu]:
    """`nvidia-smi --query-gpu=index,utilization.gpu,memory.used,memory.total --format=csv,noheader,nounits`."""
    gpus = []
    for line in text.splitlines():
        cells = [c.strip() for c in line.split(",")]
        if len(cells) != 4:
            continue
        try:
            index, util, used, total = int(cells[0]), float(cells[1]), float(cells[2]), float(cells[3])
        except ValueError:
            continue  # "[N/A]" on a GPU that cannot say, or an error line
        gpus.append(Gpu(index, util, used, total))
    return gpus


NVIDIA_SMI_QUERY = [
    "nvidia-smi",
    "--query-gpu=index,utilization.gpu,memory.used,memory.total",
    "--format=csv,noheader,nounits",
]


@dataclass
class TopRow:
    """One row of `top`: a rank, or the frontend/router, with its state and its figures."""

    node_index: int
    node: str
    service: str
    role: str
    group: str | None
    rank: int | None
    kind: str  # worker | frontend | router
    state: str
    figures: Figures | None = None
    gpus: list[Gpu] | None = None
    age: float | None = None  # seconds since its metrics last answered
    url: str | None = None
    gpu_health: str | None = None  # its node's GPU verdict in a word or a line (`top`); None: no GPUs there

    @property
    def ok(self) -> bool:
        return self.state == "up"

    def to_json(self) -> dict[str, Any]:
        gpus = None
        if self.gpus is not None:
            gpus = [g.__dict__ for g in self.gpus]
        return {
            "node_index": self.node_index, "node": self.node, "service": self.service, "role": self.role,
            "group": self.group, "rank": self.rank, "kind": self.kind, "state": self.state,
            **(self.figures.to_json() if self.figures else {}),
            "sources": self.figures.sources if self.figures else {},
            "gpus": gpus, "age_s": None if self.age is None else round(self.age, 2), "metrics_url": self.url,
            "gpu_health": self.gpu_health,
        }  # fmt: skip


SUMMED = ("running", "waiting", "input_tps", "output_tps", "requests_ps")


def replica_totals(rows: list[TopRow]) -> dict[str, dict[str, Any]]:
    """As `totals`, per replica (its unit name, `decode.1`) of the groups that have more than one."""
    units = {row.group for row in rows if row.kind == "worker" and row.group}
    replicated = {split_unit(u)[0] for u in units if split_unit(u)[1] > 0}
    return totals([r for r in rows if r.group and split_unit(r.group)[0] in replicated], by=lambda r: r.group or "")


def totals(rows: list[TopRow], by=lambda row: row.role) -> dict[str, dict[str, Any]]:
    """Per role of the workers (or per `by`): ranks, ranks answering, and the figures summed (KV usage
    averaged)."""
    out: dict[str, dict[str, Any]] = {}
    for row in rows:
        if row.kind != "worker":
            continue
        role = out.setdefault(by(row), {"ranks": 0, "answering": 0, **dict.fromkeys(SUMMED), "kv_usage": None})
        role["ranks"] += 1
        if not row.ok or row.figures is None:
            continue
        role["answering"] += 1
        for name in SUMMED:
            value = getattr(row.figures, name)
            if value is not None:
                role[name] = (role[name] or 0.0) + value
        if row.figures.kv_usage is not None:
            role.setdefault("_kv", []).append(row.figures.kv_usage)
    for role in out.values():
        kv = role.pop("_kv", [])
        role["kv_usage"] = sum(kv) / len(kv) if kv else None
    return out
