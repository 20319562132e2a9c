"""Starting a process in a session of its own without a window in which Ctrl-C orphans it.

A Ctrl-C (or SIGTERM) that lands inside subprocess.Popen, after the fork and before Popen hands the process
back, raises KeyboardInterrupt with a child already running in its own session, which no caller knows of
and so none ends. Seen in CI: `bench` interrupted at the instant it started AIPerf left AIPerf running, and
it wrote into the run's directory after that had been renamed DIR.incomplete.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
from collections.abc import Iterator
from typing import Any

HELD = (signal.SIGINT, signal.SIGTERM)


@contextlib.contextmanager
def held_signals() -> Iterator[list[int]]:
    """SIGINT and SIGTERM recorded, not acted on, while the block runs; yields the list they are recorded in.
    Main thread only (Python runs handlers there: no other thread's block can be interrupted). The handlers
    are swapped with both signals blocked, so none lands half-way; one that came while they were swapped back
    is taken off the queue and recorded too. A signal that is ignored (SIG_IGN, as under nohup) stays so."""
    arrived: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield arrived
        return
    held = [sig for sig in HELD if signal.getsignal(sig) is not signal.SIG_IGN]
    if not held:
        yield arrived
        return
    previous: dict[int, Any] = {}
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        for sig in held:
            previous[sig] = signal.signal(sig, lambda signum, _frame: arrived.append(signum))
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
    try:
        yield arrived
    finally:
        signal.pthread_sigmask(signal.SIG_BLOCK, held)
        try:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            while (pending := signal.sigtimedwait(held, 0)) is not None:
                arrived.append(pending.si_signo)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)


def spawn_session(argv: list[str], **popen: Any) -> subprocess.Popen:
    """subprocess.Popen(argv, start_new_session=True, **popen). A Ctrl-C or SIGTERM that arrived while it
    started kills the new process group at once (nothing in it has done anything worth keeping) and is then
    delivered as it would have been."""
    proc, arrived = None, []
    try:
        with held_signals() as arrived:
            proc = subprocess.Popen(argv, start_new_session=True, **popen)
    finally:
        if arrived:
            if proc is not None:
                kill_group(proc)
            signal.raise_signal(arrived[0])  # KeyboardInterrupt (the CLI makes SIGTERM one too) from here
    assert proc is not None
    return proc


def kill_group(proc: subprocess.Popen, wait: float = 5.0) -> None:
    """SIGKILL to the process group `proc` leads, and its leader reaped (bounded)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(wait)
