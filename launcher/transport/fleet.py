"""Many nodes at once: `Fleet.map` runs a function on every chosen node in parallel (bounded), one
connection per node for the whole command, and gathers every node's outcome in a `FleetResult`:
a failure on one node never hides the others.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import Any, TypeVar

from launcher.plan.types import Node
from launcher.transport.errors import describe
from launcher.transport.host import Completed, Host, Options
from launcher.transport.local import LocalHost

T = TypeVar("T")
# How often a waiting main thread wakes: Python runs a signal's handler only in the main thread, between
# bytecodes, and a Ctrl-C the kernel delivered to a pool thread does not interrupt the main thread's wait.
WAKE_SECONDS = 0.2


def ssh_host(node: Node, options: Options) -> Host:
    """A node over SSH. Its module (paramiko, fabric: 0.2 CPU-s to import) loads only when a fleet has such
    a node: every command of a deployment on this machine alone, and every refusal, goes without."""
    from launcher.transport.ssh import SSHHost

    return SSHHost(node, options)


class FleetResult(dict[int, Any]):
    """Per node index: what the function returned, or the exception it raised (like fabric's
    GroupResult). `succeeded` and `failed` split them."""

    @property
    def succeeded(self) -> dict[int, Any]:
        return {i: r for i, r in self.items() if not isinstance(r, Exception)}

    @property
    def failed(self) -> dict[int, Exception]:
        return {i: r for i, r in self.items() if isinstance(r, Exception)}

    def scripts(self) -> tuple[dict[int, Completed], dict[int, str]]:
        """For a map of `host.run`: (the scripts that exited 0, why each other node failed: its
        connection error, or the script's own last words)."""
        done: dict[int, Completed] = {}
        why: dict[int, str] = {}
        for i, r in self.items():
            if isinstance(r, Exception):
                why[i] = describe(r)
            elif not r.ok:
                why[i] = r.why()
            else:
                done[i] = r
        return done, why


class MapInterrupted(KeyboardInterrupt):
    """Ctrl-C during `Fleet.map`: the outcomes of the nodes that finished, and those that did not."""

    def __init__(self, results: FleetResult, pending: list[int]):
        super().__init__()
        self.results = results
        self.pending = pending


class Fleet:
    """All nodes of a plan. `map` runs a function on many nodes at once and gathers every outcome."""

    def __init__(self, nodes: Iterable[Node], options: Options | None = None):
        self.options = options or Options()
        self.hosts: dict[int, Host] = {}
        for node in nodes:
            self.hosts[node.index] = LocalHost(node, self.options) if node.is_local else ssh_host(node, self.options)
        self._pool = ThreadPoolExecutor(max_workers=max(1, self.options.parallel), thread_name_prefix="node")
        self._warming: dict[int, Future] = {}

    def warm(self, indices: Iterable[int]) -> None:
        """Start connecting to these nodes now, in the background, while the caller does something else
        (`down` takes the head's lock meanwhile). A later `map` on such a node waits for its connection
        (and reports its failure) instead of opening a second one."""
        for i in indices:
            if i not in self._warming:
                self._warming[i] = self._pool.submit(self.hosts[i].prepare)

    def host(self, index: int) -> Host:
        """Node `index`'s host, once its warm-up (if any) is over: a script run on it directly then
        uses the session the warm-up opened (its failure, if any, is met again and reported there)."""
        if (warming := self._warming.pop(index, None)) is not None:
            wait([warming])
        return self.hosts[index]

    def run(
        self,
        script: Callable[[Host], str] | str,
        indices: Iterable[int] | None = None,
        together: bool = False,
        **kw: Any,
    ) -> FleetResult:
        """`host.run` of a script (the same text, or one per host) on each chosen node at once."""
        return self.map(lambda h: h.run(script(h) if callable(script) else script, **kw), indices, together=together)

    def map(
        self,
        fn: Callable[[Host], T],
        indices: Iterable[int] | None = None,
        finish_on_interrupt: float = 0.0,
        together: bool = False,
    ) -> FleetResult:
        """fn(host) on each node in parallel (bounded); a failure on one node never hides the others.

        `together`: every chosen node at once, whatever the bound (`--parallel`): for scripts that wait
        for each other across nodes (a rendezvous), where a node still queued would look absent.

        On Ctrl-C, with `finish_on_interrupt`, what was already sent is given that many seconds to
        finish (a second Ctrl-C leaves at once) and `MapInterrupted` carries what did finish: a
        caller that was starting services can then say exactly what now runs."""
        chosen = list(self.hosts) if indices is None else list(dict.fromkeys(indices))
        if together and len(chosen) > self.options.parallel:
            pool = ThreadPoolExecutor(max_workers=len(chosen), thread_name_prefix="node-together")
            try:
                return self._gather(fn, chosen, pool, finish_on_interrupt)
            finally:
                pool.shutdown(wait=False, cancel_futures=True)  # an interrupted caller does not wait here
        return self._gather(fn, chosen, self._pool, finish_on_interrupt)

    def _gather(
        self, fn: Callable[[Host], T], chosen: list[int], pool: ThreadPoolExecutor, finish_on_interrupt: float
    ) -> FleetResult:
        def guarded(i: int) -> T | Exception:
            try:
                # Warm-ups were queued before this: a worker never waits on one that no worker took.
                if (warming := self._warming.pop(i, None)) is not None:
                    warming.result()
                return fn(self.hosts[i])
            except Exception as exc:  # gathered per node, reported together by the caller
                return exc

        futures = {i: pool.submit(guarded, i) for i in chosen}
        try:
            for f in futures.values():  # timed waits: the kernel may give a Ctrl-C to a pool thread, and
                while not f.done():  # a main thread blocked for good would never raise it
                    with contextlib.suppress(TimeoutError):
                        f.result(timeout=WAKE_SECONDS)
            return FleetResult((i, f.result()) for i, f in futures.items())
        except KeyboardInterrupt:
            if not finish_on_interrupt:
                raise
            try:
                for f in futures.values():
                    f.cancel()  # not started yet: never sent
                wait(list(futures.values()), timeout=finish_on_interrupt)
            except KeyboardInterrupt:
                pass  # a second Ctrl-C: stop waiting, but still say what finished and what did not
            done = FleetResult((i, f.result()) for i, f in futures.items() if f.done() and not f.cancelled())
            raise MapInterrupted(done, pending=[i for i in chosen if i not in done]) from None

    def close(self) -> None:
        for warming in self._warming.values():
            warming.cancel()  # a warm-up not started yet would open a connection nobody closes
        for host in self.hosts.values():
            host.close()
        self._pool.shutdown(wait=False, cancel_futures=True)

    def __enter__(self) -> Fleet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
