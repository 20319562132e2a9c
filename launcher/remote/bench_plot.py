"""Draw `launcher bench`'s plot from its results.json: output tokens/s per GPU against median TTFT (left)
and median ITL (right), one labelled point per concurrency, as serving benchmarks are usually shown (the
upper left is better: more throughput at less latency). A deployment without GPUs (the mocker) is drawn
per worker node instead, and the axis says so.

Runs in the bench environment (scripts/bench-env: matplotlib), not in the launcher's:

    python bench_plot.py RESULTS_JSON OUT_PNG

Standard library and matplotlib only; imports nothing of the launcher.
"""

from __future__ import annotations

import json
import sys


def series(results: dict) -> tuple[str, str, list[dict]]:
    rows = [r for r in results.get("results", []) if r.get("output_tokens_per_s") is not None]
    if rows and all(r.get("output_tokens_per_s_per_gpu") is not None for r in rows):
        return "output_tokens_per_s_per_gpu", "output tokens/s per GPU", rows
    scale = results.get("scale") or {}
    unit = f"per worker node ({scale.get('nodes', '?')} nodes, no GPUs)"
    return "output_tokens_per_s_per_node", f"output tokens/s {unit}", rows


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(argv[0]) as f:
        results = json.load(f)
    key, ylabel, rows = series(results)
    fig, axes = plt.subplots(1, 2, figsize=(12, 5), dpi=110)
    panels = (("ttft_p50_ms", "median TTFT (ms)"), ("itl_p50_ms", "median ITL (ms)"))
    for ax, (x_key, xlabel) in zip(axes, panels, strict=True):
        points = [(r[x_key], r[key], r["concurrency"]) for r in rows if r.get(x_key) is not None and r.get(key)]
        if points:
            xs, ys = [p[0] for p in points], [p[1] for p in points]
            ax.plot(xs, ys, "-o", color="#1f77b4", markersize=7)
            for x, y, c in points:
                ax.annotate(f"c={c}", (x, y), textcoords="offset points", xytext=(6, 6), fontsize=10)
            ax.set_ylim(bottom=0, top=max(ys) * 1.18)
            ax.set_xlim(left=0, right=max(xs) * 1.18 or 1)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
    work = results.get("workload") or {}
    profile = f", profile {results['profile']}" if results.get("profile") else ""
    fig.suptitle(
        f"{results.get('deployment', '?')}: {work.get('workload', '?')} workload, ISL {work.get('isl')} / "
        f"OSL {work.get('osl')}{profile} — AIPerf {results.get('client', {}).get('aiperf', '?')}, "
        f"{results.get('started', '')[:16]}",
        fontsize=11,
    )
    fig.tight_layout()
    fig.savefig(argv[1])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
