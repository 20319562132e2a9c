#!/usr/bin/env python3
"""Time `launcher up configs/local.yaml` to ready (and `down`), the embedded default, N times.

uv run benchmarks/bench_local_up.py [--repeat 5]
"""

from __future__ import annotations

import argparse
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=5)
    opts = ap.parse_args()
    env = {**os.environ, "LAUNCHER_PORT": str(free_port())}
    config = str(REPO / "configs" / "local.yaml")
    ups, downs = [], []
    with tempfile.TemporaryDirectory() as cwd:
        for _ in range(opts.repeat):
            t = time.perf_counter()
            r = subprocess.run(
                [sys.executable, "-m", "launcher", "up", config], env=env, cwd=cwd, capture_output=True, text=True
            )
            ups.append(time.perf_counter() - t)
            if r.returncode != 0:
                raise SystemExit(r.stdout + r.stderr)
            t = time.perf_counter()
            subprocess.run(
                [sys.executable, "-m", "launcher", "down", config], env=env, cwd=cwd, check=True, capture_output=True
            )
            downs.append(time.perf_counter() - t)
    print(f"Machine: {platform.platform()}, {os.cpu_count()} cores; {opts.repeat} runs")
    print(
        f"local up to ready (etcd, NATS, frontend, prefill + decode mocker, smoke test): median"
        f" {statistics.median(ups):.2f}s, min {min(ups):.2f}s, max {max(ups):.2f}s"
    )
    print(f"local down: median {statistics.median(downs):.2f}s")


if __name__ == "__main__":
    main()
