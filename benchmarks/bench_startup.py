#!/usr/bin/env python3
"""Start-up cost of the commands that never reach a node: `launcher --help` and `launcher plan` of
the 104-GPU file, each run `--repeat` times as a fresh process; prints the median, min and max.

    uv run benchmarks/bench_startup.py [--repeat 10] [--launcher PATH] [--label NAME]

`--launcher` times another checkout's console script (e.g. the commit before a change) under the same
conditions; run both back to back on an idle machine.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CASES = {
    "--help": ["--help"],
    "plan dsr1-104gpu": ["plan", str(REPO / "configs" / "dsr1-104gpu.yaml")],
}


def once(argv: list[str]) -> float:
    started = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    took = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr[-500:]}")
    return took


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--launcher", default=str(Path(sys.executable).with_name("launcher")))
    parser.add_argument("--label", default="this checkout")
    args = parser.parse_args()
    once([args.launcher, "--help"])  # warm: bytecode written, files in the page cache
    print(f"| {args.label} | median | min | max |")
    print("|---|---|---|---|")
    for name, extra in CASES.items():
        times = [once([args.launcher, *extra]) for _ in range(args.repeat)]
        print(f"| `launcher {name}` | {statistics.median(times):.3f} s | {min(times):.3f} s | {max(times):.3f} s |")


if __name__ == "__main__":
    main()
