"""What a person sees while `up` waits: a live table on a terminal, timestamped lines otherwise."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass

from rich.console import Console
from rich.live import Live
from rich.table import Table
from rich.text import Text


@dataclass
class Row:
    node: str
    service: str
    state: str
    elapsed: float
    last_line: str = ""


class Progress:
    def __init__(self, console: Console | None = None, live: bool | None = None):
        self.console = console or Console(stderr=True, highlight=False, soft_wrap=True)
        self.live_mode = self.console.is_terminal if live is None else live
        self._live: Live | None = None
        self._seen: dict[str, str] = {}

    @property
    def wants_last_lines(self) -> bool:
        return self.live_mode

    def log(self, message: str) -> None:
        if self._live is not None:
            self._live.console.print(message, markup=False)
        else:
            stamp = time.strftime("%H:%M:%S")
            self.console.print(f"[{stamp}] {message}", markup=False)

    def start(self) -> None:
        if self.live_mode and self._live is None:
            self._live = Live(Table(), console=self.console, refresh_per_second=4, transient=True)
            self._live.start()

    def stop(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None

    def update(self, rows: list[Row]) -> None:
        if self._live is not None:
            table = Table(box=None, pad_edge=False)
            for column in ("node", "service", "state", "elapsed", "last log line"):
                table.add_column(column, no_wrap=column != "last log line", overflow="ellipsis")
            for r in rows:
                # Log lines and probe answers are the engines' text, not markup ("[/models/x]" would
                # raise): every cell is plain Text.
                style = {"ready": "green", "running": "cyan", "failed": "red"}.get((r.state.split() or [""])[0], "")
                table.add_row(
                    Text(r.node), Text(r.service), Text(r.state, style=style), f"{r.elapsed:.0f}s", Text(r.last_line)
                )
            self._live.update(table)
            return
        for r in rows:  # plain mode: one line per change of state
            key = f"{r.node}/{r.service}"
            if self._seen.get(key) != r.state:
                self._seen[key] = r.state
                self.log(f"{r.node} {r.service}: {r.state} ({r.elapsed:.0f}s)")


def is_tty() -> bool:
    return sys.stderr.isatty()
