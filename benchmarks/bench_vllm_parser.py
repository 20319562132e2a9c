#!/usr/bin/env python3
"""The vLLM parser env (scripts/parser-env --vllm): build time and size, checker start-up, parse per argv.

uv run benchmarks/bench_vllm_parser.py [--rebuild] [--repeat 20]

Prints: the env's build time (this run's with --rebuild, else the stamp's), its size on disk, the time
from starting `engine_check.py --batch` to the first verdict (imports included), and the time of each
further check of configs/vllm-wideep-16gpu.yaml's two rank argvs (dynamo-vllm) and of the same argvs
through `vllm serve` (vllm), measured from the writing of the request to the reading of the verdict.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CHECKER = REPO / "launcher" / "engine_check.py"


def du(path: Path) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            p = Path(root) / name
            if not p.is_symlink():
                total += p.stat().st_size
    return total


def ranks() -> list[tuple[list[str], dict[str, str]]]:
    out = subprocess.run(
        [sys.executable, "-m", "launcher", "plan", "configs/vllm-wideep-16gpu.yaml", "--format", "json"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [
        (s["command"][3:], s["env"])
        for s in json.loads(out)["services"]
        if s["command"][:3] == ["python3", "-m", "dynamo.vllm"]
    ]


def serve_argv(argv: list[str]) -> list[str]:
    i = argv.index("--disaggregation-mode")
    rest = argv[:i] + argv[i + 2 :]
    m = rest.index("--model")
    return [rest[m + 1], *rest[:m], *rest[m + 2 :]]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rebuild", action="store_true")
    ap.add_argument("--repeat", type=int, default=20)
    opts = ap.parse_args()

    started = time.perf_counter()
    cmd = [sys.executable, str(REPO / "scripts" / "parser-env"), "--vllm"] + (["--rebuild"] if opts.rebuild else [])
    python = Path(subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=True).stdout.split()[-1])
    env_dir = python.parent.parent
    stamp = json.loads((env_dir / ".parser-env.json").read_text())
    print(f"env: {env_dir}")
    print(f"build: {stamp['build_seconds']} s (stamp); this call {time.perf_counter() - started:.1f} s")
    print(f"size: {du(env_dir) / 1e9:.2f} GB, {len(stamp['packages'])} packages")

    requests = []
    for argv, env in ranks():
        requests.append({"engine": "dynamo-vllm", "argv": argv, "env": env})
        requests.append({"engine": "vllm", "argv": serve_argv(argv), "env": env})
    proc = subprocess.Popen(
        [str(python), str(CHECKER), "--batch"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        bufsize=1,
    )
    assert proc.stdin is not None and proc.stdout is not None
    times: dict[str, list[float]] = {}
    first: dict[str, float] = {}
    t0 = time.perf_counter()
    for round_ in range(opts.repeat + 1):
        for request in requests:
            t = time.perf_counter()
            proc.stdin.write(json.dumps(request) + "\n")
            proc.stdin.flush()
            verdict = json.loads(proc.stdout.readline())
            assert verdict["ok"], verdict
            engine = request["engine"]
            if engine not in first:
                first[engine] = time.perf_counter() - (t0 if not first else t)
            elif round_:
                times.setdefault(engine, []).append(time.perf_counter() - t)
    proc.stdin.close()
    proc.wait(timeout=60)
    print(f"checker start to first dynamo-vllm verdict (imports vLLM and dynamo.vllm): {first['dynamo-vllm']:.1f} s")
    print(f"first vllm-serve verdict after that (imports vLLM's serve CLI): {first['vllm']:.1f} s")
    for engine, values in times.items():
        ms = sorted(v * 1000 for v in values)
        print(
            f"{engine}: per argv median {statistics.median(ms):.0f} ms, min {ms[0]:.0f}, max {ms[-1]:.0f} "
            f"({len(ms)} checks)"
        )


if __name__ == "__main__":
    main()
