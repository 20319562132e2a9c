#!/usr/bin/env python3
"""Wall time of the fabric check on the testbed: `launcher doctor configs/testbed-dsr1.yaml --fabric` (13
nodes, dsr1-104gpu's groups: 4 + 9 ranks, Gloo across the nodes' namespaces), against the floor this
machine sets: 13 `import torch` at once (every rank imports torch; the testbed's 13 nodes share 2 cores).

    uv run benchmarks/bench_fabric.py [--repeat 5]      (root; a 13-node testbed up, scripts/fabric-env built)
    uv run benchmarks/bench_fabric.py --blocked [--repeat 3]

--blocked: the case of tests/testbed/test_fabric_testbed.py's blocked port (node 7, decode rank 3, drops what it
sends to its leader's dist-init port 29500, an iptables rule inside its namespace): how long until the
check names it (each run must fail naming rank 3 on node 7, or the figure is not counted as such).

Export the testbed's TESTBED_* settings first if it is not the default one. Prints a markdown table of
medians (and min-max) with the load average, since other work on the machine moves every figure.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
INVENTORY = Path(os.environ.get("TESTBED_DIR") or REPO / ".testbed") / "inventory.yaml"
CONFIG = REPO / "configs" / "testbed-dsr1.yaml"


def torch_python() -> str:
    done = subprocess.run([sys.executable, str(REPO / "scripts" / "fabric-env")], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"scripts/fabric-env failed:\n{done.stderr[-2000:]}")
    return done.stdout.strip().splitlines()[-1]


def import_floor(python: str, n: int = 13) -> float:
    """Seconds for n processes importing torch at once (what the ranks cannot avoid on this machine)."""
    began = time.monotonic()
    procs = [subprocess.Popen([python, "-W", "ignore", "-c", "import torch.distributed"]) for _ in range(n)]
    for p in procs:
        p.wait(600)
    return time.monotonic() - began


def one_check() -> dict:
    argv = [sys.executable, "-m", "launcher", "doctor", str(CONFIG), "-i", str(INVENTORY), "--fabric", "--no-args",
            "--json"]  # fmt: skip
    began = time.monotonic()
    done = subprocess.run(argv, capture_output=True, text=True, timeout=900, cwd=REPO)
    wall = time.monotonic() - began
    data = json.loads(done.stdout)
    fabric = data["fabric"]
    if not fabric["ok"]:  # a figure without its cause would be useless: say what failed
        for c in data["checks"]:
            if c["status"] == "fail":
                print(f"failed run: node {c['node']} {c['name']}: {c['detail']}", file=sys.stderr)
    ranks = [r for g in fabric["groups"] for r in g["ranks"]]
    return {
        "ok": fabric["ok"],
        "wall": wall,
        "check": fabric["seconds"],
        "skew": fabric["start_skew_s"] or 0.0,
        "rendezvous": max((r["rendezvous_s"] or 0) for r in ranks),
        "ring": {r["node"]: r["ring_gbps"] for r in ranks if r["ring_gbps"] is not None},
        "busbw": {r["node"]: r["busbw_gbps"] for r in ranks if r["busbw_gbps"] is not None},
    }


@contextlib.contextmanager
def blocked_port() -> Iterator[None]:
    """Node 7 drops what it sends to node 4's port 29500 (the decode group's dist-init port), then not."""
    nodes = yaml.safe_load(INVENTORY.read_text())["nodes"]
    rule = f"OUTPUT -p tcp -d {nodes[4]['address']} --dport 29500 -j DROP"
    netns = ["ip", "netns", "exec", nodes[7]["name"], "iptables"]
    subprocess.run([*netns, "-I", *rule.split()], check=True, timeout=30)
    try:
        yield
    finally:
        subprocess.run([*netns, "-D", *rule.split()], check=True, timeout=30)


def one_blocked() -> dict:
    argv = [sys.executable, "-m", "launcher", "doctor", str(CONFIG), "-i", str(INVENTORY), "--fabric", "--no-args",
            "--json"]  # fmt: skip
    began = time.monotonic()
    with blocked_port():
        done = subprocess.run(argv, capture_output=True, text=True, timeout=900, cwd=REPO)
    wall = time.monotonic() - began
    data = json.loads(done.stdout)
    named = [c for c in data["checks"] if c["status"] == "fail" and c["node"] == 7 and "rank 3 on" in c["detail"]]
    return {"ok": done.returncode == 1 and bool(named), "wall": wall, "check": data["fabric"]["seconds"]}


def blocked_main(repeat: int) -> int:
    load_before = os.getloadavg()
    runs = []
    for _ in range(repeat):
        runs.append({**one_blocked(), "load": os.getloadavg()[0]})
    ok = sum(r["ok"] for r in runs)
    print(f"load average before {load_before[0]:.1f} {load_before[1]:.1f} {load_before[2]:.1f}; "
          f"{ok}/{len(runs)} runs named rank 3 on node 7\n")  # fmt: skip
    print("| run | doctor --fabric, whole command | fabric check | load (1 min) after |\n|---|---|---|---|")
    for k, r in enumerate(runs, 1):
        print(f"| {k} | {r['wall']:.1f}s | {r['check']:.1f}s | {r['load']:.1f} |")
    print(f"| median | {spread([r['wall'] for r in runs])} | {spread([r['check'] for r in runs])} | |")
    return 0 if ok == len(runs) else 1


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):.1f}s ({min(values):.1f}-{max(values):.1f})"


def main() -> int:
    cli = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    cli.add_argument("--repeat", type=int, default=5)
    cli.add_argument("--blocked", action="store_true", help="one node's dist-init port blocked (see above)")
    options = cli.parse_args()
    if options.blocked:
        return blocked_main(options.repeat)
    python = torch_python()
    load_before = os.getloadavg()[0]
    floors = [import_floor(python) for _ in range(2)]
    runs = [{**one_check(), "load": os.getloadavg()[0]} for _ in range(options.repeat)]
    load_after = os.getloadavg()[0]
    ok = sum(r["ok"] for r in runs)
    rings = [g for r in runs for g in r["ring"].values()]
    print(f"load average (1 min) {load_before:.1f} before, {load_after:.1f} after; {ok}/{len(runs)} checks ok\n")
    print("| figure | median (min-max) |\n|---|---|")
    print(f"| 13 x `import torch` at once (floor) | {spread(floors)} |")
    print(f"| fabric check (first node's program sent to last answer) | {spread([r['check'] for r in runs])} |")
    print(f"| doctor --fabric, whole command | {spread([r['wall'] for r in runs])} |")
    print(f"| start skew of the nodes' programs | {spread([r['skew'] for r in runs])} |")
    print(f"| rendezvous (store + join + process group), slowest rank | {spread([r['rendezvous'] for r in runs])} |")
    print(f"| Gloo send to the next rank, per node | {f'{min(rings):.2f}-{max(rings):.2f} GB/s' if rings else '-'} |")
    print("\n| run | ok | doctor --fabric, whole command | fabric check | load (1 min) after |\n|---|---|---|---|---|")
    for k, r in enumerate(runs, 1):
        print(f"| {k} | {r['ok']} | {r['wall']:.1f}s | {r['check']:.1f}s | {r['load']:.1f} |")
    print("\n| node | Gloo send to the next rank, GB/s (median) | all-reduce bus bandwidth, GB/s (median) |")
    print("|---|---|---|")
    for node in sorted({n for r in runs for n in r["ring"]}):
        send = statistics.median(r["ring"][node] for r in runs if node in r["ring"])
        bus = [r["busbw"][node] for r in runs if node in r["busbw"]]
        print(f"| {node} | {send:.3f} | {statistics.median(bus) if bus else float('nan'):.3f} |")
    return 0 if ok == len(runs) else 1


if __name__ == "__main__":
    sys.exit(main())
