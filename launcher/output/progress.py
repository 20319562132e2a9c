"""What a person sees while `up` waits: a live table on a terminal, timestamped lines otherwise.

rich is loaded only for the live table: piped (CI, logs, the tests' hundreds of `up`, `down` and `watch`
processes) the lines go straight to stderr, 0.05 CPU-s of start-up saved each time."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from launcher.errors import one_line

if TYPE_CHECKING:
    from rich.console import Console


@dataclass
class Row:
    node: str
    service: str
    state: str
    elapsed: float
    last_line: str = ""


class Progress:
    def __init__(self, console: Console | None = None, live: bool | None = None):
        """Lines to `console`, or (None) to stderr; the live table where `live`, or (None) on a terminal."""
        self.live_mode = (console.is_terminal if console else is_tty()) if live is None else live
        if console is None and self.live_mode:
            from launcher.output.console import stderr

            console = stderr()
        self.console = console
        self._live: Any = None  # rich's Live while the table shows
        self._seen: dict[str, str] = {}

    @property
    def wants_last_lines(self) -> bool:
        return self.live_mode

    def log(self, message: str) -> None:
        if self._live is not None:
            self._live.console.print(message, markup=False)
            return
        line = f"[{time.strftime('%H:%M:%S')}] {message}"
        if self.console is not None:
            self.console.print(line, markup=False)
        else:  # engine text among it: control characters shown escaped, never sent to the terminal
            sys.stderr.write("\n".join(map(one_line, line.split("\n"))) + "\n")
            sys.stderr.flush()

    def start(self) -> None:
        if self.live_mode and self._live is None:
            from rich.live import Live
            from rich.table import Table

            self._live = Live(Table(), console=self.console, refresh_per_second=4, transient=True)
            self._live.start()

    def stop(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None

    def update(self, rows: list[Row]) -> None:
        if self._live is not None:
            from rich.table import Table
            from rich.text import Text

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
