"""What `image push` and `stage` share: the relay program (launcher/remote/relay.py) started on the
nodes, one-shot requests to it (emit a directory) or to the manifest program (remote/manifest.py: scan
a directory), the relay tree run with a live view, and the report of what each node holds when it ends
(or Ctrl-C stops it)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from launcher.config.schema import SSHSettings
from launcher.output.transfer import Moving, TransferView
from launcher.plan.types import Node, Plan
from launcher.remote import program as remote_program
from launcher.runtime.shell import find_python, q
from launcher.transport.host import Host, Options
from launcher.transport.local import LocalHost
from launcher.transport.relay import ROOT, Feed, Hop, Relay, Timing

# The program arrives on stdin, ahead of the launcher's JSON lines (see remote/relay.py).
BOOT = "import sys;n=int(sys.argv.pop(1));exec(compile(sys.stdin.buffer.read(n),'launcher-relay','exec'))"
NO_PYTHON = "python3 is not installed on this node (the launcher's relay needs it on the host)"
PROGRAMS = {"relay": "relay", "emit": "relay", "scan": "manifest"}  # mode -> the remote program that has it


def program(mode: str = "relay") -> bytes:
    """The remote program that runs `mode`, as sent (its siblings bundled in: launcher/remote)."""
    return remote_program(PROGRAMS[mode]).encode()


def relay_script(plan: Plan | None, mode: str) -> str:
    """The node's python3 (or python_env's) running the program of `mode` (relay, emit, scan)."""
    python = find_python(plan.python_env if plan is not None else None)
    return (
        f"PY=$({python}) || {{ echo {q(NO_PYTHON)} >&2; exit 127; }}; "
        f'exec "$PY" -u -c {q(BOOT)} {len(program(mode))} {q(mode)}'
    )


def this_machine() -> LocalHost:
    """The operator's machine as a host (for a source directory that lives here)."""
    return LocalHost(Node(-1, "this machine", "127.0.0.1", SSHSettings(), 0), Options())


def ask(host: Host, plan: Plan | None, mode: str, request: dict, timeout: float | None = None) -> dict:
    """One request to the program of `mode` (`scan`): its last event, e.g. {"ev": "scan", ...}.
    `timeout` bounds the whole answer, progress events or not (a stuck disk can chatter forever)."""
    proc = host.start(relay_script(plan, mode))
    began = time.monotonic()
    try:
        proc.write(program(mode) + json.dumps(request).encode() + b"\n")
        while True:
            if timeout is not None and time.monotonic() - began > timeout:
                raise TimeoutError(f"no answer in {timeout:.0f}s")
            line = proc.readline(5 if timeout is None else min(5, max(0.1, timeout)))
            if line is None:  # hashing a large directory says nothing for a while; a cut link, forever
                if not host.alive(5):
                    raise ConnectionError("the node stopped answering (link down, or the node is off?)")
                continue
            if not line:
                why = (proc.stderr.strip().splitlines() or ["the program ended without an answer"])[-1]
                raise RuntimeError(why)
            event = json.loads(line) if line.startswith("{") else {}
            if event.get("ev") == mode:
                return event
    finally:
        proc.kill()


def emitted(host: Host, request: dict) -> tuple[Callable[[], Any], Any]:
    """A directory's record stream (relay program `emit` on `host`), as pieces of bytes."""
    proc = host.start(relay_script(None, "emit"))
    proc.write(program("emit") + json.dumps(request).encode() + b"\n")

    def pieces():
        while data := proc.read():
            yield data
        code = proc.wait(30)
        if code:
            why = (proc.stderr.strip().splitlines() or [f"exit {code}"])[-1]
            raise OSError(f"reading the source failed: {why}")

    return proc.kill, pieces()


@dataclass
class Spread:
    """One run of the relay tree: what moved, and every hop as it ended."""

    hops: dict[str, Hop]
    interrupted: bool = False
    events: list[str] = field(default_factory=list)


def spread(
    hops: list[Hop],
    source: Feed | Hop,
    *,
    what: str,
    total: int | None,
    fanout: int,
    parallel: int,
    plan: Plan,
    as_json: bool,
    timing: Timing | None = None,
    wanted: Callable[[Hop], bool] | None = None,
    on_started: Callable[[dict[str, Hop]], None] | None = None,
) -> Spread:
    """Run the relay tree with the live view; Ctrl-C stops every relay (Spread.interrupted)."""
    view = TransferView(what, total)
    events: list[str] = []

    def progress(all_hops: dict[str, Hop], root: Feed | Hop) -> None:
        view.update([Moving(h.host.node.name, h.state, h.received, h.detail) for h in all_hops.values()])

    def event(line: str) -> None:
        events.append(line)
        view.event(line)

    relay = Relay(
        hops, relay_script(plan, "relay"), program(), source, fanout=fanout, parallel=parallel,
        on_progress=progress, on_event=event, timing=timing, wanted=wanted, on_started=on_started,
    )  # fmt: skip
    view.start()
    try:
        return Spread(relay.run(), events=events)
    except KeyboardInterrupt as exc:
        return Spread(getattr(exc, "hops", relay.hops), interrupted=True, events=events)
    finally:
        view.stop()


def upstream(run: Spread, hop: Hop) -> str:
    """Where a hop's stream came from in the end: "this machine", or a node's name."""
    if hop.parent is None:
        return ""
    if hop.parent == ROOT:
        return "this machine"
    parent = run.hops.get(hop.parent)
    return parent.host.node.name if parent is not None else hop.parent


def failure(hop: Hop) -> str:
    """Why a hop did not end with what it was sent, in one line."""
    if hop.state == "failed":
        return hop.detail
    if hop.state == "aborted":
        return "stopped (Ctrl-C)"
    sink = hop.sink or {}
    if not sink:
        return "its relay ended without a word from its sink"
    output = (sink.get("output") or "").strip().splitlines()
    return sink.get("detail") or (output[-1] if output else f"exit {sink.get('code')}")
