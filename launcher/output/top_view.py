"""What `top` draws: a table with a row per rank, one for the frontend or router, and totals per role;
or the same as JSON."""

from __future__ import annotations

from typing import Any

from rich.table import Table
from rich.text import Text

from launcher.plan.observe import TopRow, replica_totals, totals
from launcher.plan.types import split_unit

COLUMNS = ("node", "service", "state", "run", "wait", "KV", "in tok/s", "out tok/s", "req/s", "TTFT p50/p99",
           "ITL p50/p99", "GPU util, mem")  # fmt: skip


def number(value: float | None, digits: int = 1) -> str:
    if value is None:
        return "-"
    return f"{value:.{digits}f}" if value % 1 else f"{value:.0f}"


def percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.0f}%"


def millis(p50: float | None, p99: float | None) -> str:
    if p50 is None and p99 is None:
        return "-"
    return "/".join("-" if v is None else f"{1000 * v:.0f}" for v in (p50, p99)) + " ms"


def gpu_text(row: TopRow) -> str:
    if not row.gpus:
        return "-"
    util = sum(g.utilization for g in row.gpus) / len(row.gpus)
    used = sum(g.memory_used for g in row.gpus) / 1024
    total = sum(g.memory_total for g in row.gpus) / 1024
    return f"{util:.0f}% {used:.1f}/{total:.0f}G ({len(row.gpus)})"


def _state(row: TopRow) -> Text:
    style = "green" if row.ok else "red"
    text = row.state if row.age is None or row.ok else f"{row.state}, last metrics {row.age:.0f}s ago"
    return Text(text, style=style)


def _gpu_health(row: TopRow) -> Text:
    """The node's GPU verdict: `ok` green, `warn: ...` yellow, `restart: ...`/`drain: ...` red."""
    text = row.gpu_health or "-"
    verdict = text.split(":")[0]
    style = {"ok": "green", "warn": "yellow", "restart": "red", "drain": "red"}.get(verdict, "")
    return Text(text, style=style)


def table(rows: list[TopRow], title: str) -> Table:
    t = Table(box=None, pad_edge=False, title=title, title_justify="left")
    health = any(row.gpu_health is not None for row in rows)  # a `gpu` column only where the plan has GPUs
    for column in COLUMNS + (("gpu",) if health else ()):
        t.add_column(column, justify="right" if column not in ("node", "service", "state", "gpu") else "left")
    for row in rows:
        f = row.figures
        who = row.role if row.rank is None else f"{row.group} r{row.rank}"
        if f is None:
            cells = ["-"] * 8
        else:
            cells = [
                number(f.running, 0), number(f.waiting, 0), percent(f.kv_usage), number(f.input_tps),
                number(f.output_tps), number(f.requests_ps, 2), millis(f.ttft_p50, f.ttft_p99),
                millis(f.itl_p50, f.itl_p99),
            ]  # fmt: skip
        mark = [_gpu_health(row)] if health else []
        t.add_row(Text(f"{row.node_index} {row.node}"), Text(who), _state(row), *cells, gpu_text(row), *mark)
    blank = [""] if health else []
    for unit, total in replica_totals(rows).items():
        group, replica = split_unit(unit)
        t.add_row(Text("replica"), Text(f"{group} replica {replica} total"), *_total_cells(total), *blank)
    for role, total in totals(rows).items():
        t.add_row(Text("all", style="bold"), Text(f"{role} total", style="bold"), *_total_cells(total), *blank)
    return t


def _total_cells(total: dict[str, Any]) -> list:
    return [
        Text(f"{total['answering']}/{total['ranks']} up"),
        number(total["running"], 0), number(total["waiting"], 0), percent(total["kv_usage"]),
        number(total["input_tps"]), number(total["output_tps"]), number(total["requests_ps"], 2), "", "", "",
    ]  # fmt: skip


def to_json(deployment: str, interval: float, at: str, rows: list[TopRow]) -> dict[str, Any]:
    return {
        "deployment": deployment,
        "interval_s": interval,
        "at": at,
        "rows": [r.to_json() for r in rows],
        "totals": totals(rows),
        "replica_totals": replica_totals(rows),
    }
