#!/usr/bin/env python3
"""Wall time of `launcher up` (to every container running) and `launcher down` on the testbed, for
N = 4, 13 and 32 nodes, against (a) a sequential loop of OpenSSH `ssh node docker run ...` and
(b) the same OpenSSH commands all started at once (the practical floor on this machine).

    sudo uv run benchmarks/bench_up_down.py [--sizes 4,13,32] [--repeat 5]

Every variant runs the same `docker run` argv per node (taken from `launcher plan --format json`),
one container per node running `sleep infinity`. Prints a markdown table of medians.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
TESTBED = REPO / "scripts" / "testbed"
INVENTORY = REPO / ".testbed" / "inventory.yaml"
WORK = REPO / ".testbed" / "bench"


def sh(argv: list[str], check: bool = False, **kw) -> subprocess.CompletedProcess:
    r = subprocess.run(argv, capture_output=True, text=True, **kw)
    if check and r.returncode != 0:
        raise SystemExit(f"failed ({r.returncode}): {argv[-1][:200]}\n{r.stderr}")
    return r


def config_for(n: int) -> Path:
    WORK.mkdir(parents=True, exist_ok=True)
    data = {
        "deployment": f"bench{n}",
        "image": "${TESTBED_IMAGE}",
        "gpus_per_node": 0,
        "container": {
            "shm_size": "",
            "ulimits": {"memlock": None, "nofile": None},  # sandboxes cannot raise these hard limits
            "volumes": ["/usr:/usr:ro"],
        },
        "services": {"etcd": {"enabled": False}, "nats": {"enabled": False}, "frontend": {"enabled": False}},
        "groups": {"work": {"engine": "command", "nodes": n, "args": ["sleep", "infinity"]}},
    }
    path = WORK / f"bench{n}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def ssh_argv(inv: dict, address: str, command: str) -> list[str]:
    s = inv["ssh"]
    return [
        "ssh", "-F", "/dev/null", "-i", s["key"], "-o", "IdentitiesOnly=yes",
        "-o", f"UserKnownHostsFile={s['known_hosts']}", "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes",
        f"{s['user']}@{address}", command,
    ]  # fmt: skip


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


inv_n = WORK / "inventory-n.yaml"


def launcher(*args: str) -> None:
    r = sh([sys.executable, "-m", "launcher", *args, "-i", str(inv_n)], cwd=WORK)
    if r.returncode != 0:
        raise SystemExit(f"launcher {' '.join(args)} failed:\n{r.stdout}{r.stderr}")


def measure(inv: dict, runs: list[tuple[str, str, str]], config: Path, repeat: int) -> dict[str, list[float]]:
    def seq_up():
        for addr, cmd, _ in runs:
            sh(ssh_argv(inv, addr, cmd), check=True)

    def seq_down():
        for addr, _, name in runs:
            sh(ssh_argv(inv, addr, f"docker rm -f {name}"), check=True)

    def par(which: str):
        procs = [
            subprocess.Popen(
                ssh_argv(inv, addr, cmd if which == "up" else f"docker rm -f {name}"),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            for addr, cmd, name in runs
        ]
        codes = [p.wait() for p in procs]
        assert not any(codes), codes

    t = {k: [] for k in ("seq_up", "seq_down", "par_up", "par_down", "l_up", "l_down")}
    for _ in range(repeat):
        t["seq_up"].append(timed(seq_up))
        t["seq_down"].append(timed(seq_down))
        t["par_up"].append(timed(lambda: par("up")))
        t["par_down"].append(timed(lambda: par("down")))
        t["l_up"].append(timed(lambda: launcher("up", str(config), "--no-wait", "--skip-doctor")))
        t["l_down"].append(timed(lambda: launcher("down", str(config))))
    return t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="4,13,32")
    ap.add_argument("--repeat", type=int, default=5)
    opts = ap.parse_args()
    sizes = [int(x) for x in opts.sizes.split(",")]
    rows = []
    for n in sizes:
        r = sh([sys.executable, str(TESTBED), "up", str(max(sizes))])
        if r.returncode != 0:
            raise SystemExit(r.stdout + r.stderr)
        inv = yaml.safe_load(INVENTORY.read_text())
        config = config_for(n)
        inv["nodes"] = inv["nodes"][:n]  # the deployment's cluster is exactly N nodes
        inv_n.write_text(yaml.safe_dump(inv))
        plan = json.loads(
            sh([sys.executable, "-m", "launcher", "plan", str(config), "-i", str(inv_n), "-f", "json"], cwd=WORK).stdout
        )
        addresses = {node["index"]: node["address"] for node in plan["nodes"]}
        runs = [(addresses[s["node_index"]], shlex.join(s["docker_run"]), s["name"]) for s in plan["services"]]

        launcher("down", str(config))  # start clean (a previous interrupted run may have left containers)
        t = measure(inv, runs, config, opts.repeat)
        med = {k: statistics.median(v) for k, v in t.items()}
        rows.append((n, med))
        print(f"N={n}: " + ", ".join(f"{k}={v:.2f}s" for k, v in med.items()), flush=True)

    print()
    print(
        f"Machine: {platform.platform()}, {os.cpu_count()} cores, Python {platform.python_version()};"
        f" medians of {opts.repeat} runs.\n"
    )
    print(
        "| N | launcher up | parallel ssh up (floor) | sequential ssh up | up: launcher/floor | up: sequential/launcher"
        " | launcher down | parallel ssh down | sequential ssh down | down: launcher/floor |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for n, m in rows:
        print(
            f"| {n} | {m['l_up']:.2f}s | {m['par_up']:.2f}s | {m['seq_up']:.2f}s | {m['l_up'] / m['par_up']:.2f} |"
            f" {m['seq_up'] / m['l_up']:.2f} | {m['l_down']:.2f}s | {m['par_down']:.2f}s | {m['seq_down']:.2f}s |"
            f" {m['l_down'] / m['par_down']:.2f} |"
        )


if __name__ == "__main__":
    main()
