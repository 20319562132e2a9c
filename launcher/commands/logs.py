"""`launcher logs`: the selected services' logs, each line prefixed `[node3 decode r2]` in a stable
colour; with `-f` every selected service on every node at once, a node lost while following reported
while the others keep flowing."""

from __future__ import annotations

import re
import threading
import zlib

from rich.console import Console
from rich.markup import escape

from launcher.errors import ConfigError, Exit
from launcher.operations.context import Connection, Target, connected, target
from launcher.operations.nodes import list_services
from launcher.output import console
from launcher.output.console import say
from launcher.plan.state import Container
from launcher.plan.types import Plan
from launcher.runtime.docker import SINCE
from launcher.transport.errors import describe

LINE_LIMIT = 1 << 20  # characters of one log line held before it is printed as it is (no newline yet)
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
COLOURS = [
    "cyan", "magenta", "green", "yellow", "blue", "bright_red",
    "bright_cyan", "bright_magenta", "bright_green", "bright_yellow", "bright_blue",
]  # fmt: skip


def run(
    config, config_opt, inventory, connection: Connection, *, node, role, rank, follow, tail, since, grep, replica=None
) -> None:
    if node is None and role is None:
        raise ConfigError("choose what to show: --node I, or --role R [--rank K] [--replica K]", key="logs")
    if grep:
        try:
            re.compile(grep)
        except re.error as exc:
            raise ConfigError(f"not a regular expression: {exc}", key="--grep") from None
    if since is not None and not SINCE.fullmatch(since):
        raise ConfigError(
            "expected a duration (10m, 1h30m), a date or time (2026-11-24, 2026-11-24T10:00:00Z) or a Unix"
            f" timestamp, got {since!r}",
            key="--since",
        )
    t = target(config, config_opt, inventory)
    t.check_selection(node, role, rank, replica)
    if since and t.plan.runtime == "process":
        # Its logs are plain files without timestamps: showing everything would pretend to filter.
        raise ConfigError(
            "--since needs the docker runtime (process logs carry no timestamps); use --tail N", key="--since"
        )
    with connected(t, connection):
        chosen, failed = select_containers(t, node, role, rank, replica=replica)
        for i, why in failed.items():
            say(t.plan.redactor()(f"{t.plan.nodes[i].label}: {why}"), to_stderr=True)
        if not chosen:
            say("no container matches", to_stderr=True)
            raise Exit(1)
        try:
            failed.update(stream_logs(t, chosen, console.stdout(), follow=follow, tail=tail, since=since, grep=grep))
        except KeyboardInterrupt:
            raise Exit(0) from None
    if failed:
        raise Exit(1)


def select_containers(
    t: Target,
    node: str | None,
    role: str | None,
    rank: int | None,
    indices: list[int] | None = None,
    replica: int | None = None,
) -> tuple[list[Container], dict[int, str]]:
    """The deployment's services matching node/role/rank/replica, as the nodes list them; unreachable
    nodes apart."""
    nodes = [t.node(node).index] if node is not None else indices
    found, failed = list_services(t, nodes)
    chosen = [
        c
        for c in found.values()
        if (role is None or role in (c.role, c.group, c.service))
        and (rank is None or c.rank == rank)
        and (replica is None or c.replica == replica)
    ]
    chosen.sort(key=lambda c: (c.node_index, c.service))
    return chosen, failed


def prefix(plan: Plan, c: Container) -> str:
    node = plan.nodes[c.node_index].name if c.node_index < len(plan.nodes) else f"node{c.node_index}"
    who = c.role if c.rank is None else f"{c.group or c.role} r{c.rank}"
    return f"[{node} {who}]"


def colour(text: str) -> str:
    return COLOURS[zlib.crc32(text.encode()) % len(COLOURS)]


class _Printer:
    """Whole lines from many streams onto one console, prefixed, filtered, never interleaved."""

    def __init__(self, plan: Plan, console: Console, grep: str | None):
        self.plan, self.console = plan, console
        self.redact = plan.redactor()  # before --grep: it filters what is shown
        self.pattern = re.compile(grep) if grep else None
        self.strip = not console.is_terminal
        self.lock = threading.Lock()

    def line(self, c: Container, line: str) -> None:
        if self.strip:
            line = ANSI.sub("", line)
        line = self.redact(line)
        if self.pattern and not self.pattern.search(line):
            return
        with self.lock:
            p = prefix(self.plan, c)
            self.console.print(f"[{colour(p)}]{escape(p)}[/] ", end="", highlight=False)
            self.console.print(line, markup=False, highlight=False)

    def lost(self, what: str, why: str) -> None:
        why = self.redact(why)
        with self.lock:
            self.console.print(f"[red]{escape(what)} lost: {escape(why)}[/]", highlight=False)


def stream_logs(
    t: Target, containers: list[Container], console: Console, *, follow: bool, tail, since, grep
) -> dict[int, str]:
    """Print the containers' logs; with follow, all at once until interrupted. Returns the nodes that
    failed (a node lost while following is reported; the others keep flowing)."""
    printer = _Printer(t.plan, console, grep)
    failed: dict[int, str] = {}

    def one(c: Container) -> None:
        buffer = [""]

        def feed(chunk: str) -> None:
            buffer[0] += chunk
            *lines, buffer[0] = buffer[0].split("\n")
            if len(buffer[0]) > LINE_LIMIT:  # a container that never ends its line is not kept whole in memory
                lines.append(buffer[0])
                buffer[0] = ""
            for line in lines:
                printer.line(c, line)

        script = t.runtime.logs_script(t.plan, c.name, tail=tail, follow=follow, since=since)
        try:
            result = t.fleet.host(c.node_index).run(script, out=feed, timeout=None if follow else 120)
            if buffer[0]:
                printer.line(c, buffer[0])
            if result.exit_code not in (0, None) and not follow:
                failed[c.node_index] = f"docker logs exited {result.exit_code}"
        except Exception as exc:
            failed[c.node_index] = describe(exc)
            printer.lost(prefix(t.plan, c), describe(exc))

    threads = [threading.Thread(target=one, args=(c,), daemon=True) for c in containers]
    for thread in threads:
        thread.start()
    stop = threading.Event()
    if follow:
        nodes = {c.node_index for c in containers}
        threading.Thread(target=_watchdog, args=(t, nodes, stop, failed, printer), daemon=True).start()
    try:
        for thread in threads:
            while thread.is_alive():
                thread.join(0.2)
    finally:
        stop.set()
    return failed


def _watchdog(t: Target, nodes: set[int], stop: threading.Event, failed: dict[int, str], printer: _Printer) -> None:
    """While following: a node that stops answering keepalives is reported and its streams closed,
    so nothing hangs on a cut link past the keepalive timeout; the other nodes keep flowing."""
    interval = t.fleet.options.keepalive
    live = set(nodes)
    while not stop.wait(interval):
        for i in sorted(live):
            host = t.fleet.host(i)
            if not host.alive(timeout=2 * interval):
                live.discard(i)
                failed[i] = f"no answer to keepalives for {2 * interval}s (node down or link cut)"
                printer.lost(t.plan.nodes[i].label, failed[i])
                host.close()
