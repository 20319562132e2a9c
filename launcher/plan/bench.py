"""`launcher bench`'s plan: the workloads of seed 004's "Benchmarking" section, the settings of one run
(checked: bad input is one line, exit 2), the AIPerf command line for each concurrency, the context a
deployment accepts, and how many nodes and GPUs its throughput is divided by. Pure: no I/O.

AIPerf is driven the way Dynamo's benchmark scripts drive it (benchmarks/llm/perf.sh): synthetic prompts of
exactly ISL tokens, streaming chat, `ignore_eos` and `min_tokens` so every request generates exactly OSL
tokens, a fixed seed, a warm-up of 2 x concurrency requests (at most WARMUP_CAP) and 10 x concurrency
measured requests per concurrency. Unlike perf.sh it sends no `nvext: {ignore_eos: true}`: Dynamo 1.6.1's
frontend rejects the request with 400 `unknown field ignore_eos` (seen here); the top-level `ignore_eos` is
what it takes. Token counts are the server's (`usage`), not the client's re-tokenization of the answer text.
"""

from __future__ import annotations

from dataclasses import dataclass

from launcher.errors import ConfigError
from launcher.plan.engines import args as A
from launcher.plan.types import Plan


@dataclass(frozen=True)
class Workload:
    name: str
    isl: int | None
    osl: int | None
    concurrency: tuple[int, ...]
    requests: int | None  # None: 10 x concurrency
    about: str


WORKLOADS = {
    "e2e": Workload("e2e", 8192, 256, (1, 8, 64, 256), None, "end to end, 8k in / 256 out, rising concurrency"),
    "prefill": Workload("prefill", 4096, 5, (8192,), 8192, "prefill stress: one batch of 8192, ISL 4096, OSL 5"),
    "decode": Workload("decode", 2000, 100, (40000,), 40000, "decode stress: one batch of 40000, ISL 2000, OSL 100"),
    "custom": Workload("custom", None, None, (1,), None, "your --isl, --osl and --concurrency"),
}
MAX_CONCURRENCY = 1_000_000
SEED = 100  # perf.sh's --random-seed
# A warm-up compiles kernels and fills caches; a few hundred requests do that at any concurrency. Without a
# cap, the decode stress test (concurrency 40000) would send 80,000 warm-up requests before 40,000 measured.
WARMUP_CAP = 256


@dataclass(frozen=True)
class Settings:
    """One `launcher bench` run: what every concurrency is run with."""

    workload: str
    concurrency: tuple[int, ...]
    isl: int
    osl: int
    requests: int | None  # per concurrency; None: 10 x concurrency
    warmup: int | None  # per concurrency; None: 2 x concurrency, at most WARMUP_CAP
    flush: bool
    seed: int = SEED

    def requests_at(self, concurrency: int) -> int:
        return self.requests if self.requests is not None else 10 * concurrency

    def warmup_at(self, concurrency: int) -> int:
        return self.warmup if self.warmup is not None else min(2 * concurrency, WARMUP_CAP)

    def to_json(self) -> dict:
        return {
            "workload": self.workload,
            "concurrency": list(self.concurrency),
            "isl": self.isl,
            "osl": self.osl,
            "requests": self.requests,
            "warmup": self.warmup,
            "requests_per_concurrency": {str(c): self.requests_at(c) for c in self.concurrency},
            "warmup_per_concurrency": {str(c): self.warmup_at(c) for c in self.concurrency},
            "flush": self.flush,
            "seed": self.seed,
        }


def parse_concurrency(text: str | None, default: tuple[int, ...]) -> tuple[int, ...]:
    """`1,4,16` -> (1, 4, 16): whole numbers from 1 up, each once, in the order given."""
    if text is None:
        return default
    values: list[int] = []
    for part in text.split(","):
        part = part.strip()
        try:
            value = int(part)
        except ValueError:
            raise ConfigError(
                f"expected whole numbers from 1 up separated by commas (1,4,16), got {text!r}", key="--concurrency"
            ) from None
        if not 1 <= value <= MAX_CONCURRENCY:
            raise ConfigError(
                f"a concurrency is at least 1 and at most {MAX_CONCURRENCY}, got {value}", key="--concurrency"
            )
        if value not in values:
            values.append(value)
    return tuple(values)


def settings(
    workload: str,
    concurrency: str | None,
    isl: int | None,
    osl: int | None,
    requests: int | None,
    warmup: int | None,
    flush: bool,
    seed: int = SEED,
) -> Settings:
    """The run's settings from the command line: the workload's defaults under what was given."""
    preset = WORKLOADS.get(workload)
    if preset is None:
        raise ConfigError(f"unknown workload {workload!r}: expected one of {', '.join(WORKLOADS)}", key="--workload")
    given = (("--isl", isl, 1), ("--osl", osl, 1), ("--requests", requests, 1), ("--warmup", warmup, 0))
    for key, value, least in given:
        if value is not None and value < least:
            raise ConfigError(f"expected a whole number from {least} up, got {value}", key=key)
    if workload == "custom":
        missing = [k for k, v in (("--isl", isl), ("--osl", osl), ("--concurrency", concurrency)) if v is None]
        if missing:
            raise ConfigError(f"the custom workload needs {', '.join(missing)}", key="--workload")
    return Settings(
        workload=workload,
        concurrency=parse_concurrency(concurrency, preset.concurrency),
        isl=isl if isl is not None else int(preset.isl or 0),
        osl=osl if osl is not None else int(preset.osl or 0),
        requests=requests if requests is not None else preset.requests,
        warmup=warmup,
        flush=flush,
        seed=seed,
    )


# -- what the deployment accepts ----------------------------------------------------------------------

CONTEXT_FLAGS = ("--context-length", "--max-model-len")  # SGLang, vLLM (and Dynamo's mocker)


def context_from_args(plan: Plan) -> tuple[int, str] | None:
    """The smallest context length a worker's argv sets, and where: (tokens, "groups.decode --context-length")."""
    found: list[tuple[int, str]] = []
    for s in plan.services:
        if s.group is None:
            continue
        for flag in CONTEXT_FLAGS:
            value = A.value(s.command, flag)
            if value and value.isdigit():
                found.append((int(value), f"groups.{s.group} {flag}"))
    return min(found) if found else None


def check_context(settings: Settings, context: tuple[int, str] | None) -> None:
    """ISL + OSL must fit the context the deployment serves; else bad input naming both."""
    if context is None:
        return
    tokens, where = context
    if settings.isl + settings.osl > tokens:
        raise ConfigError(
            f"ISL {settings.isl} + OSL {settings.osl} = {settings.isl + settings.osl} tokens exceed the"
            f" context of {tokens} ({where}): lower --isl/--osl",
            key="--isl/--osl",
        )


# -- what throughput is divided by ------------------------------------------------------------------


@dataclass(frozen=True)
class Scale:
    """Worker nodes and GPUs, all and per phase (LMSYS: input tok/s per prefill node, output per decode node)."""

    nodes: int
    gpus: int
    prefill_nodes: int
    decode_nodes: int
    prefill_gpus: int
    decode_gpus: int

    def to_json(self) -> dict:
        return dict(self.__dict__)


def scale(plan: Plan) -> Scale:
    def count(modes: tuple[str, ...]) -> tuple[int, int]:
        groups = [g for g in plan.groups if g.mode in modes]
        nodes = {i for g in groups for i in g.node_indices}
        return len(nodes), sum(len(g.node_indices) * len(g.gpus) for g in groups)

    (nodes, gpus), (p_nodes, p_gpus), (d_nodes, d_gpus) = (
        count(("prefill", "decode", "agg")), count(("prefill",)), count(("decode",))
    )  # fmt: skip
    return Scale(nodes, gpus, p_nodes, d_nodes, p_gpus, d_gpus)


# -- the client's command line ------------------------------------------------------------------------


def aiperf_argv(
    aiperf: str, settings: Settings, concurrency: int, url: str, model: str, tokenizer: str, artifacts: str
) -> list[str]:
    requests, warmup = settings.requests_at(concurrency), settings.warmup_at(concurrency)
    osl = str(settings.osl)
    argv = [
        aiperf, "profile",
        "--model", model, "--tokenizer", tokenizer,
        "--endpoint-type", "chat", "--endpoint", "/v1/chat/completions", "--streaming", "--url", url,
        "--isl", str(settings.isl), "--isl-stddev", "0", "--osl", osl, "--osl-stddev", "0",
        "--extra-inputs", f"max_tokens:{osl}", "--extra-inputs", f"min_tokens:{osl}",
        "--extra-inputs", "ignore_eos:true",
        "--use-server-token-count",
        "--concurrency", str(concurrency), "--request-count", str(requests),
        "--num-dataset-entries", str(requests + warmup),
        "--random-seed", str(settings.seed),
        "--artifact-dir", artifacts, "--ui", "none",
        # AIPerf's GPU-telemetry and server-metrics collectors are two more processes per run (about 4 of 13
        # CPU-s of a short run here) whose numbers `bench` never reads: the deployment's own metrics stack
        # (`launcher up` with services.metrics) keeps the servers' side of every run.
        "--no-gpu-telemetry", "--no-server-metrics",
    ]  # fmt: skip
    if warmup:
        argv += ["--warmup-request-count", str(warmup)]
    return argv
