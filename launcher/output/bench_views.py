"""What `launcher bench` shows: the results table (a row per concurrency) and `bench compare`'s side by
side. Plain dicts in (plan/bench_results.py's rows); a rich table out, also saved as text beside the results."""

from __future__ import annotations

from typing import Any

from rich.table import Table


def number(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, int):
        return f"{value:,}"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:,.{digits}f}" if abs(value) >= 1 else f"{value:.3g}"


def triple(row: dict, prefix: str) -> str:
    return " / ".join(number(row.get(f"{prefix}_{p}_ms")) for p in ("p50", "p90", "p99"))


def results_table(rows: list[dict], per_gpu: bool) -> Table:
    """One row per concurrency: throughput (all, per node, per GPU), TTFT and ITL percentiles, errors."""
    unit = "GPU" if per_gpu else "node"
    table = Table(box=None, pad_edge=False, title_justify="left")
    for col in ("conc", "req/s", "in tok/s", "out tok/s", f"in tok/s/{unit}", f"out tok/s/{unit}",
                "TTFT ms p50/p90/p99", "ITL ms p50/p90/p99", "requests", "errors"):  # fmt: skip
        table.add_column(col, justify="right" if "ms" not in col else "left")
    for r in rows:
        table.add_row(
            str(r["concurrency"]),
            number(r.get("request_throughput"), 2),
            number(r.get("input_tokens_per_s")),
            number(r.get("output_tokens_per_s")),
            number(r.get(f"input_tokens_per_s_per_{unit.lower()}")),
            number(r.get(f"output_tokens_per_s_per_{unit.lower()}")),
            triple(r, "ttft"),
            triple(r, "itl"),
            str(r.get("requests", "-")),
            f"[red]{r['errors']}[/]" if r.get("errors") else "0",
        )
    return table


def compare_table(rows: list[dict], first: str, second: str) -> Table:
    table = Table(box=None, pad_edge=False)
    for col in ("conc", "metric", first, second, "change"):
        table.add_column(col, justify="left" if col == "metric" else "right", overflow="fold")
    last = None
    for r in rows:
        changed = r["change"]
        shown = "-" if changed is None else f"{changed:+.1f}%"
        table.add_row("" if r["concurrency"] == last else str(r["concurrency"]), r["metric"], number(r["a"]),
                      number(r["b"]), shown)  # fmt: skip
        last = r["concurrency"]
    return table
