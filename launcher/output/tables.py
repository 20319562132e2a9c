"""Tables people read: `status` (a row per service) and `doctor` (a row per check), or their JSON.

They take plain rows (anything with the attributes named below), so nothing here depends on the
commands that produce them.
"""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, Any

from launcher.output import console as console_module
from launcher.plan.types import Plan

if TYPE_CHECKING:  # rich is loaded by the tables only: `status --json` and the checks that pass go without
    from rich.console import Console
    from rich.table import Table

CHECK_COLOURS = {"ok": "green", "warn": "yellow", "fail": "red", "skip": "dim"}


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2) + "\n")


def checks_table(
    plan: Plan, checks: list, as_json: bool, console: Console | None = None, extra: dict | None = None
) -> None:
    """Doctor's checks (`node`, `name`, `status`, `detail`, `fix`, `to_json()`): a table node x check
    with a one-line fix per failure, then how many problems. `extra`: more keys for the JSON."""
    if as_json:
        ok = not any(c.status == "fail" for c in checks)
        print_json({"deployment": plan.deployment, "ok": ok, "checks": [c.to_json() for c in checks], **(extra or {})})
        return
    console = console or console_module.stdout()
    from rich.markup import escape
    from rich.table import Table

    table = Table(box=None, pad_edge=False)
    for col in ("node", "check", "status", "detail", "fix"):
        table.add_column(col, overflow="fold")
    for c in sorted(checks, key=lambda c: (c.node is None, c.node or 0, c.name)):
        node = "-" if c.node is None else f"{c.node} {plan.nodes[c.node].name} {plan.nodes[c.node].address}"
        status = f"[{CHECK_COLOURS.get(c.status, '')}]{c.status}[/]"
        table.add_row(node, c.name, status, escape(c.detail), escape(c.fix))
    console.print(table)
    bad = [c for c in checks if c.status == "fail"]
    console.print(f"{len(bad)} problem(s) found" if bad else "all checks passed", markup=False)


def status_table(rows: list) -> Table:
    """`status` rows (`node`, `service`, `role`, `rank`, `state`, `uptime`, `restarts`, `health`)."""
    from rich.markup import escape
    from rich.table import Table

    table = Table(box=None, pad_edge=False)
    for col in ("node", "address", "service", "role", "rank", "state", "uptime", "restarts", "health"):
        table.add_column(col)
    for r in rows:
        style = "green" if r.state == "running" else "red"
        table.add_row(
            f"{r.node.index} {r.node.name}",
            r.node.address,
            r.service,
            r.role,
            "-" if r.rank is None else str(r.rank),
            f"[{style}]{escape(r.state)}[/]",
            format_uptime(r.uptime),
            str(r.restarts),
            escape(r.health),
        )
    return table


def format_uptime(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(seconds)
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    return f"{seconds // 3600}h{(seconds % 3600) // 60:02d}m"
