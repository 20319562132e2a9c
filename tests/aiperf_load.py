"""AIPerf's streaming load, for the day-2 tests (issue 28: a change under constant load, judged from AIPerf's
own per-request export): the real AIPerf 0.13 client of `launcher bench` (its env: scripts/bench-env, the
`bench_env` fixture of tests/bench_env.py) streaming chat completions of exactly OSL tokens through a Dynamo
frontend at a fixed concurrency, in its own session, ended with Ctrl-C (SIGINT: it stops sending and writes
its export), and its records sorted into whole, failed or truncated, and cancelled by that Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from launcher.operations.bench_client import env_writing_bytecode, read_export
from launcher.plan.drain import samples
from tests.helpers import REPO, wait_for

CONCURRENCY = 4  # AIPerf's streams in flight at every moment
ISL, OSL = 64, 50  # a stream of ~1.5 s at STREAM_SPEEDUP: many start and end during each roll step
REQUEST_RATE = 20  # requests a second at most: see AIPerf.argv
AIPERF_LIMIT = 600  # seconds: AIPerf's --benchmark-duration, a bound only (each case ends it once done)


def frontend_requests(url: str) -> float:
    """The requests the frontend at URL has answered so far (its own counter), 0 while it cannot be read."""
    try:
        with urllib.request.urlopen(f"{url}/metrics", timeout=5) as r:
            text = r.read(4 << 20).decode()
        return sum(v for _, _, v in samples(text, ("dynamo_frontend_requests_total",)))
    except (OSError, ValueError):
        return 0.0


class AIPerf:
    """AIPerf streaming chat completions of `osl` tokens at CONCURRENCY through the frontend at URL
    (http://host:port), in its own session; `count` requests in all, or (None) until `stop()`. Its artifacts
    in `out`."""

    def __init__(self, bin_dir: Path, url: str, out: Path, osl: int = OSL, count: int | None = None):
        self.url, self.out, self.osl = url, out, osl
        self.argv = [
            str(bin_dir / "aiperf"), "profile", "--model", "tiny", "--tokenizer", str(REPO / "models" / "tiny"),
            "--endpoint-type", "chat", "--endpoint", "/v1/chat/completions", "--streaming",
            "--url", url,
            "--isl", str(ISL), "--isl-stddev", "0", "--osl", str(osl), "--osl-stddev", "0",
            "--extra-inputs", f"max_tokens:{osl}", "--extra-inputs", f"min_tokens:{osl}",
            "--extra-inputs", "ignore_eos:true", "--use-server-token-count",
            "--concurrency", str(CONCURRENCY), "--random-seed", "28", "--num-dataset-entries", "8",
            "--artifact-dir", str(out), "--ui", "none", "--export-level", "records",
            # the fewest processes AIPerf starts with (its start-up is most of its CPU): no GPU or server
            # metrics collectors, one worker and one record processor (4 streams need no more), 8 prompts
            # made (100 by default: seconds of its start-up) and sent in turn, from random tokens (its
            # default corpus is tokenized at start-up: about 3 CPU-s of each run here)
            "--no-gpu-telemetry", "--no-server-metrics", "--workers-max", "1", "--record-processor-service-count", "1",
            "--prompt-corpus", "random",
            # A concurrency alone is AIPerf's burst mode, whose timing loop polls for a free slot without
            # sleeping: a whole core for as long as it runs (31 CPU-s of a 20 s run against 12 with a rate,
            # measured here). A rate far above what 4 streams of ~1.5 s reach (about 3 a second) keeps the
            # concurrency the bound, and a freed slot is taken within 1/RATE s.
            "--request-rate", str(REQUEST_RATE),
            *(["--request-count", str(count)] if count else ["--benchmark-duration", str(AIPERF_LIMIT)]),
        ]  # fmt: skip
        self.stopped_ns: int | None = None

    def __enter__(self) -> AIPerf:
        self.out.mkdir(parents=True)
        self.log = (self.out.parent / f"{self.out.name}.log").open("w")
        self.proc = subprocess.Popen(self.argv, stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     start_new_session=True, env=env_writing_bytecode())  # fmt: skip
        return self

    def __exit__(self, *exc) -> None:
        if self.proc.poll() is None:  # a failed assertion inside: its whole process group goes
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)
        self.log.close()

    def flowing(self, more: int = 2 * CONCURRENCY, limit: float = 180) -> None:
        """Wait until the frontend has answered `more` requests from now on (AIPerf's start-up included)."""
        base = frontend_requests(self.url)

        def served() -> bool:
            assert self.proc.poll() is None, f"AIPerf ended early: {self.tail()}"
            return frontend_requests(self.url) >= base + more

        wait_for(served, limit, 0.5, f"{more} requests through the frontend")

    def during(self, change) -> tuple[subprocess.CompletedProcess, tuple[int, int]]:
        """change() run under the flowing load; returns its outcome and its window (epoch ns)."""
        self.flowing()
        began = time.time_ns()
        outcome = change()
        window = (began, time.time_ns())
        self.flowing()  # at most one request per stream began before the change ended: half of these after
        return outcome, window

    def stop(self) -> None:
        """Ctrl-C: AIPerf stops sending, cancels what is in flight and writes its export."""
        self.stopped_ns = time.time_ns()
        os.killpg(self.proc.pid, signal.SIGINT)
        self.proc.wait(timeout=120)

    def finish(self, limit: float = 180) -> int:
        return self.proc.wait(timeout=limit)

    def tail(self) -> str:
        return "\n".join((self.out.parent / f"{self.out.name}.log").read_text(errors="replace").splitlines()[-15:])

    def records(self) -> list[dict]:
        path = self.out / "profile_export.jsonl"
        assert path.exists(), f"AIPerf wrote no records: {self.tail()}"
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def summary(self) -> dict:
        return read_export(self.out)


@dataclass
class Judged:
    """AIPerf's per-request records sorted: streamed whole (no error, exactly OSL tokens), failed or
    truncated, and any that AIPerf marks cancelled by the test's Ctrl-C (AIPerf 0.13 drops those instead)."""

    whole: list[dict]
    bad: list[dict]
    cancelled: list[dict]

    def started(self, since: int, until: int | None = None) -> list[dict]:
        return [r for r in self.whole + self.bad if since <= r["metadata"]["request_start_ns"] < (until or 1 << 64)]


def judge(load: AIPerf) -> Judged:
    whole, bad, cancelled = [], [], []
    for r in load.records():
        meta = r["metadata"]
        tokens = (r.get("metrics") or {}).get("output_sequence_length", {}).get("value")
        if meta.get("was_cancelled") and load.stopped_ns and (meta.get("cancellation_time_ns") or 0) >= load.stopped_ns:
            cancelled.append(r)
        elif r.get("error") is None and tokens == load.osl:
            whole.append(r)
        else:
            bad.append(r)
    return Judged(whole, bad, cancelled)


def p99_ttft_ms(records: list[dict]) -> str:
    values = sorted(r["metrics"]["time_to_first_token"]["value"] for r in records)
    return f"{values[min(len(values) - 1, int(0.99 * len(values)))]:.0f} ms of {len(values)}" if values else "none"


def check_load(load: AIPerf, judged: Judged, windows: list[tuple[int, int]]) -> None:
    """What every case asserts of its AIPerf run: no request failed or came short, the export's own error
    count is only the requests its Ctrl-C cancelled (at most one per stream), and requests started before
    each change, during it and after it (the load covered it)."""
    assert judged.bad == [], [(r["metadata"]["request_start_ns"], r.get("error")) for r in judged.bad][:10]
    assert len(judged.cancelled) <= CONCURRENCY, judged.cancelled
    errors = load.summary().get("error_request_count", {}).get("avg", 0)
    assert errors == len(judged.cancelled), (errors, load.summary().get("error_summary"))
    first, last = windows[0][0], windows[-1][1]
    assert len(judged.started(0, first)) >= CONCURRENCY, "no load before the change"
    assert all(judged.started(a, b) for a, b in windows), "a change with no request started during it"
    assert judged.started(last), "no request started after the change"


def summary_line(case: str, judged: Judged, took: float, windows: list[tuple[int, int]]) -> str:
    before = p99_ttft_ms(judged.started(0, windows[0][0]))
    during = p99_ttft_ms([r for a, b in windows for r in judged.started(a, b)])
    return (
        f"\n{case}: {took:.1f}s; AIPerf (concurrency {CONCURRENCY}, ISL {ISL}, OSL {OSL}): {len(judged.whole)} whole,"
        f" {len(judged.bad)} failed or truncated, {len(judged.cancelled)} cancelled at its end;"
        f" p99 TTFT before {before}, during {during}"
    )
