"""The fabric check as people read it: a table node x peer (who reached whose ports), a row per rank
with its interface, rendezvous time and bandwidth, and one line per failure with its fix."""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from launcher.plan.fabric_verdict import Report
from launcher.plan.types import Plan

MATRIX_MAX = 40  # owners as columns up to this many; beyond, one row per user listing its failures


def summary(plan: Plan, report: Report) -> list[str]:
    """A few plain lines: each group's verdict and figures, the peers, the time."""
    out = []
    for g in report.groups:
        if g.ok:
            took = max((r.rendezvous_s or 0) for r in g.ranks)
            rates = ", ".join(f"{plan.nodes[r.node].name} {r.ring_gbps}" for r in g.ranks if r.ring_gbps is not None)
            out.append(
                f"{g.name}: {len(g.ranks)} ranks met in {took:.1f} s, all-reduce correct ({g.ranks[0].backend});"
                f" send GB/s per node: {rates or '-'}"
            )
        elif g.cut_short:
            out.append(f"{g.name}: not finished, {g.lines[0].detail[len('not finished: ') :]}")
        else:
            out.append(f"{g.name}: rendezvous FAILED ({sum(1 for r in g.ranks if not r.ok)} of {len(g.ranks)} ranks)")
    bad = sum(1 for p in report.pairs if p.ok is False)
    unknown = sum(1 for p in report.pairs if p.ok is None)
    peers = f"peers: {len(report.pairs) - bad - unknown} of {len(report.pairs)} node-to-port connections answered"
    out.append(peers + (f", {bad} failed" if bad else "") + (f", {unknown} not tried" if unknown else ""))
    skew = f" (the nodes' programs started within {report.start_skew:.1f} s)" if report.start_skew is not None else ""
    out.append(f"the check took {report.seconds:.1f} s{skew}")
    return out


def peer_matrix(plan: Plan, report: Report) -> Table | None:
    """Rows: the nodes that connect; columns: the nodes they connect to; `ok`, `FAIL` (ports) or `?`."""
    if not report.pairs:
        return None
    owners = sorted({p.peer.owner for p in report.pairs})
    users = sorted({p.user for p in report.pairs})
    table = Table(box=None, pad_edge=False, title="peer ports: node (row) -> node (column)", title_justify="left")
    table.add_column("node")
    wide = len(owners) <= MATRIX_MAX
    for o in owners if wide else []:
        table.add_column(str(o), justify="center")
    if not wide:
        table.add_column("failed")
    for u in users:
        cells = []
        mine = [p for p in report.pairs if p.user == u]
        if wide:
            for o in owners:
                here = [p for p in mine if p.peer.owner == o]
                cells.append(_cell(here))
        else:
            failed = [f"{p.peer.owner}:{p.peer.port}" for p in mine if p.ok is False]
            cells.append("[red]" + " ".join(failed) + "[/]" if failed else "[green]ok[/]")
        table.add_row(f"{u} {plan.nodes[u].name}", *cells)
    return table


def _cell(pairs: list) -> str:
    if not pairs:
        return ""
    bad = [str(p.peer.port) for p in pairs if p.ok is False]
    if bad:
        return f"[red]FAIL {','.join(bad)}[/]"
    if any(p.ok is None for p in pairs):
        return "[yellow]?[/]"
    return "[green]ok[/]"


def rank_table(plan: Plan, report: Report) -> Table | None:
    if not report.groups:
        return None
    table = Table(box=None, pad_edge=False, title="rendezvous per rank", title_justify="left")
    for col in ("group", "rank", "node", "address", "interface", "rendezvous s", "send GB/s", "all-reduce busbw GB/s"):
        table.add_column(col)
    table.add_column("status", overflow="fold")
    interfaces = {(row.group, row.node): row.interface for row in report.interfaces}
    for g in report.groups:
        for r in g.ranks:
            node = plan.nodes[r.node]
            iface = r.interface or interfaces.get((g.name, r.node)) or "-"
            status = "[green]ok[/]" if r.ok else f"[red]{escape(r.phase)}[/]"
            table.add_row(
                g.name, str(r.rank), node.name, node.address, iface, _num(r.rendezvous_s), _num(r.ring_gbps),
                _num(r.busbw_gbps), status,
            )  # fmt: skip
    return table


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def failures_table(plan: Plan, report: Report, console: Console) -> None:
    """Every failure, one line each with its fix (what `up` prints before it stops)."""
    table = Table(box=None, pad_edge=False)
    for col in ("node", "check", "detail", "fix"):
        table.add_column(col, overflow="fold")
    for line in report.lines():
        if line.status != "fail":
            continue
        node = "-" if line.node is None else f"{line.node} {plan.nodes[line.node].name}"
        table.add_row(node, line.name, escape(line.detail), escape(line.fix))
    console.print(table)


def show(plan: Plan, report: Report, console: Console) -> None:
    """doctor --fabric's tables after its checks: the peer matrix, the ranks, the summary."""
    for table in (peer_matrix(plan, report), rank_table(plan, report)):
        if table is not None:
            console.print(table)
    for line in summary(plan, report):
        console.print("fabric: " + line, markup=False)
