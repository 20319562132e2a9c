"""What a person sees while `image push` or `stage` moves bytes: per node its state, the bytes it holds
and the rate they arrive at. A terminal gets a table redrawn four times a second; a pipe (CI, logs) a
line per change of state and one progress line every few seconds with every node's bytes and rate.
Then the outcome: a table (or JSON) of what each node now holds."""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass

from rich.console import Console
from rich.live import Live
from rich.table import Table
from rich.text import Text

from launcher.output import console as console_module

STATE_STYLE = {"finished": "green", "done": "green", "receiving": "cyan", "failed": "red", "aborted": "yellow"}


@dataclass
class Moving:
    """One node's row while bytes move."""

    node: str  # a short name (tbf3)
    state: str
    received: int
    detail: str = ""


def size(n: float | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


class Rates:
    """Bytes per second per node, over the last few seconds."""

    def __init__(self, window: float = 3.0):
        self.window = window
        self.seen: dict[str, deque] = {}

    def add(self, node: str, received: int, now: float) -> float:
        history = self.seen.setdefault(node, deque())
        history.append((now, received))
        while len(history) > 2 and now - history[0][0] > self.window:
            history.popleft()
        (t0, b0), (t1, b1) = history[0], history[-1]
        return (b1 - b0) / (t1 - t0) if t1 > t0 else 0.0


class TransferView:
    def __init__(self, what: str, total: int | None, console: Console | None = None, live: bool | None = None):
        self.what = what
        self.total = total  # bytes of the stream, when known (an image's is an estimate)
        self.console = console or console_module.stderr()
        self.live_mode = self.console.is_terminal if live is None else live
        self.every = 5.0
        self.rates = Rates()
        self._live: Live | None = None
        self._states: dict[str, str] = {}
        self._last_line = 0.0
        self.started = time.monotonic()

    def start(self) -> None:
        if self.live_mode and self._live is None:
            self._live = Live(Table(), console=self.console, refresh_per_second=4, transient=True)
            self._live.start()

    def stop(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None

    def event(self, message: str) -> None:
        if self._live is not None:
            self._live.console.print(message, markup=False, highlight=False)
        else:
            self.console.print(f"[{time.strftime('%H:%M:%S')}] {message}", markup=False, highlight=False)

    def update(self, rows: list[Moving]) -> None:
        now = time.monotonic()
        rates = {r.node: self.rates.add(r.node, r.received, now) for r in rows}
        if self._live is not None:
            self._live.update(self._table(rows, rates))
            return
        for r in rows:
            if self._states.get(r.node) != r.state:
                self._states[r.node] = r.state
                self.event(f"{r.node}: {r.state}" + (f" ({r.detail})" if r.detail else ""))
        if now - self._last_line >= self.every and any(r.state == "receiving" for r in rows):
            self._last_line = now
            of = f" of {'~' if self.what == 'image' else ''}{size(self.total)}" if self.total else ""
            parts = [f"{r.node} {size(r.received)} {size(rates[r.node])}/s" for r in rows]
            self.event(f"{self.what}{of}: " + ", ".join(parts))

    def _table(self, rows: list[Moving], rates: dict[str, float]) -> Table:
        table = Table(box=None, pad_edge=False, title=f"{self.what}: {time.monotonic() - self.started:.0f}s")
        for column in ("node", "state", "received", "%", "rate", "detail"):
            table.add_column(column, no_wrap=column != "detail", overflow="ellipsis")
        for r in rows:
            share = f"{100 * r.received / self.total:.0f}%" if self.total else "-"
            style = STATE_STYLE.get(r.state, "")
            table.add_row(
                Text(r.node), Text(r.state, style=style), size(r.received), share, f"{size(rates[r.node])}/s",
                Text(r.detail),
            )  # fmt: skip
        return table


def outcome_table(rows: list[dict], columns: tuple[str, ...]) -> None:
    """The end: one row per node (dicts with these keys), on stdout."""
    table = Table(box=None, pad_edge=False)
    for column in columns:
        table.add_column(column, overflow="fold")
    for row in rows:
        cells = [Text(str(row.get(c, "")), style=STATE_STYLE.get(str(row.get(c)), "")) for c in columns]
        table.add_row(*cells)
    console_module.stdout().print(table)
