"""One stream of bytes to many nodes at the speed of one copy: the nodes pass it on to each other.

The operator's side of `launcher/remote/relay.py` (read its docstring for the protocol), on the same
core (`launcher/remote/relay_core.py`: the ring, the seal, the handshake, a downstream). Each chosen
node runs a relay (`Host.start`); they form a tree, a chain by default (`fanout` 1): the root, a
`Feed` on this machine (an image's `docker save` stream, a directory's records) or a relay on a source
node, sends ONE stream to the first node, which passes it on to the next as the bytes arrive, and so
on, while each node's sink (`docker load`, a directory) takes them too. The root's one stream crosses
the operator's uplink through the first node's SSH connection (`Host.open_port`); the nodes talk to
each other directly over TCP, which is trusted for nothing: a random key per run travels only in each
relay's SSH session; a connection proves it holds the key (challenge and response, the key never
sent), a node takes the stream only from the upstream the launcher named over SSH, and the root seals
the stream (an HMAC per frame) that every sink checks before it uses a byte. What a node keeps is
checked against what the launcher computed itself (each file's sha256, the image ID).

A node that fails mid-way (its relay exits, its link is cut: silent and not answering SSH keepalives,
or it stops answering for long) is named, and its children are re-routed to its parent, which resumes
them from the byte they hold (each relay keeps the stream's last bytes for that). Progress (bytes per
node) goes to a callback; Ctrl-C aborts every relay and `RelayInterrupted` says where each stood.
"""

from __future__ import annotations

import json
import os
import queue
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from launcher.remote import relay_core
from launcher.remote.relay_core import CHUNK, Ring, Sealer, rewire
from launcher.transport.errors import describe
from launcher.transport.host import Host
from launcher.transport.stream import Running

ROOT = "root"
# The operator's end holds more than a node's (see remote/relay.py RING/KEEP): what is in flight to the
# first node crosses an SSH channel and two TCP connections, each with buffers of its own.
FEED_RING, FEED_KEEP = 96 << 20, 80 << 20


@dataclass
class Timing:
    start: float = 60.0  # for a relay to say where it listens
    silence: float = 5.0  # no event for this long: ask the node (SSH keepalive) whether it is there
    alive: float = 3.0  # for that answer
    wedged: float = 60.0  # silent this long although the node answers: the relay is stuck
    ping: float = 2.0  # between the operator's "still here" lines (a relay stops after 60 s without)
    stall: float = 300.0  # no byte moved anywhere for this long: give up


@dataclass
class Hop:
    """One node of the tree and what its relay said."""

    key: str
    host: Host
    hello: dict = field(default_factory=dict)  # the sink (and source) settings sent to its relay
    proc: Running | None = None
    port: int = 0
    parent: str | None = None
    state: str = "starting"  # starting | waiting | receiving | finished | failed | aborted | skipped
    received: int = 0
    sink: dict | None = None  # the sink's last word
    files: list[dict] = field(default_factory=list)  # stage: one event per file
    detail: str = ""
    cause: str = ""  # failed: start | relay | lost | upstream | source | stalled
    check: str = ""  # what the hello's `check` command printed on the node, before anything moved
    heard: float = 0.0
    reconnects: int = 0
    checking: bool = False
    outbox: queue.Queue = field(default_factory=queue.Queue)

    @property
    def label(self) -> str:
        return self.host.node.label

    @property
    def live(self) -> bool:
        return self.state not in ("failed", "aborted", "skipped")

    def send(self, msg: dict) -> None:
        self.outbox.put(json.dumps(msg).encode() + b"\n")


class RelayInterrupted(KeyboardInterrupt):
    def __init__(self, hops: dict[str, Hop]):
        super().__init__()
        self.hops = hops


class Feed:
    """The tree's root on the operator's machine: the bytes of `source()`, sent to its child hops through
    their nodes' SSH connections (forwarded channels to their relays' ports)."""

    key = ROOT

    def __init__(self, source: Callable[[], Iterable[bytes]], ring: int = FEED_RING, keep: int = FEED_KEEP):
        self.source = source  # opened only when the tree is wired (nothing is read for nobody)
        self.ring = Ring(ring, keep)
        self.events: queue.Queue | None = None
        self.run_key = b""  # the run's (not `key`: that is this root's name in the tree)
        self.senders: dict[str, _Sender] = {}
        self.received = 0

    def start(self, events: queue.Queue, key: bytes) -> None:
        self.events, self.run_key = events, key
        threading.Thread(target=self._read, daemon=True, name="feed").start()

    def _read(self) -> None:
        assert self.events is not None
        try:
            for piece in _sealed(self.source(), Sealer(self.run_key)):
                if not self.ring.write(piece):
                    return
                self.received = self.ring.end
            self.ring.finish()
            self.events.put((ROOT, {"ev": "received", "bytes": self.ring.end}))
        except Exception as exc:  # the source broke (the engine, the disk): everything stops
            self.events.put((ROOT, {"ev": "source-failed", "detail": describe(exc)}))

    def add(self, hop: Hop, replaces: str | None = None) -> None:
        """Send the stream to `hop` too (see remote/relay.py Relay.add for `replaces`)."""
        rewire(self.senders, hop.key, replaces, lambda old: _Sender(self, hop, old))

    def drop(self, key: str) -> None:
        sender = self.senders.pop(key, None)
        if sender is not None:
            sender.drop()

    def close(self) -> None:
        self.ring.close()
        for key in list(self.senders):
            self.drop(key)


class _Sender(relay_core.Downstream):
    """The Feed's stream to one hop, through its node's SSH connection (relay_core.Downstream: the rules)."""

    deadline = None  # the forwarded channel's own timeout bounds the handshake

    def __init__(self, feed: Feed, hop: Hop, replaces: _Sender | None):
        super().__init__(feed.ring, feed.run_key, ROOT, hop.key, replaces)
        self.feed, self.hop = feed, hop

    def connect(self) -> Any:
        return self.hop.host.open_port(self.hop.port, timeout=10)

    def report(self, state: str, **fields: Any) -> None:
        if state in ("cannot-resume", "lost"):  # the others are the node relays' words, not the monitor's
            assert self.feed.events is not None
            self.feed.events.put((ROOT, {"ev": "downstream", "id": self.id, "state": state, **fields}))

    def close(self) -> None:
        threading.Thread(target=_quietly, args=(self.conn.close,), daemon=True).start()  # may take a while

    def finished(self) -> None:
        if self.dropped:  # dropped while it connected; otherwise the channel goes with the hop's connection
            self.close()


def _quietly(close: Callable[[], None]) -> None:
    try:
        close()
    except Exception:
        pass  # the channel's connection is gone already


def _sealed(pieces: Iterable[bytes], sealer: Sealer) -> Iterable[bytes | memoryview]:
    """The source's pieces, gathered into frames of about CHUNK bytes (one MAC per MiB, not per piece)."""
    pending = bytearray()
    for piece in pieces:
        pending += piece
        if len(pending) >= CHUNK:
            yield from sealer.seal(pending)
            pending = bytearray()
    yield from sealer.seal(pending)
    yield sealer.end()


class Relay:
    """Run `program` (remote/relay.py) on every hop with `script`, in a tree fed by `source`; return
    each hop as it ended. `source` is a `Feed`, or a `Hop` whose relay emits the stream itself."""

    def __init__(
        self,
        hops: list[Hop],
        script: str,
        program: bytes,
        source: Feed | Hop,
        *,
        fanout: int = 1,
        parallel: int = 32,
        on_progress: Callable[[dict[str, Hop], Feed | Hop], None] | None = None,
        on_event: Callable[[str], None] | None = None,
        timing: Timing | None = None,
        wanted: Callable[[Hop], bool] | None = None,
        on_started: Callable[[dict[str, Hop]], None] | None = None,
    ):
        self.hops = {h.key: h for h in hops}
        self.script, self.program, self.source = script, program, source
        self.fanout, self.parallel = max(1, fanout), max(1, parallel)
        self.on_progress = on_progress or (lambda hops, source: None)
        self.on_event = on_event or (lambda line: None)
        self.timing = timing or Timing()
        self.wanted = wanted  # asked of each started hop (its `check`): False leaves it out, "skipped"
        self.on_started = on_started or (lambda hops: None)
        self.key = os.urandom(32)  # the run's: only in the relays' SSH sessions, never on a TCP connection
        self.events: queue.Queue = queue.Queue()
        self.moved_at = time.monotonic()
        self._moved = -1

    # -- starting --------------------------------------------------------------------------------
    def run(self) -> dict[str, Hop]:
        try:
            self._start_all()
            self._leave_out()
            self.on_started(self.hops)
            if any(h.live and h is not self.source for h in self.hops.values()):
                self._wire()
                self._monitor()
        except KeyboardInterrupt:
            self._abort()
            raise RelayInterrupted(self.hops) from None
        finally:
            self._close()
        return self.hops

    def _start_all(self) -> None:
        todo = list(self.hops.values())
        with ThreadPoolExecutor(max_workers=min(self.parallel, len(todo) or 1), thread_name_prefix="relay") as pool:
            list(pool.map(self._start, todo))

    def _start(self, hop: Hop) -> None:
        try:
            hop.proc = hop.host.start(self.script)
            hello = {"op": "hello", "key": self.key.hex(), "id": hop.key, "listen": hop.host.node.address, **hop.hello}
            hop.proc.write(self.program + json.dumps(hello).encode() + b"\n")
            line = hop.proc.readline(self.timing.start)
            event = json.loads(line) if line and line.startswith("{") else {}
        except Exception as exc:
            hop.state, hop.cause, hop.detail = "failed", "start", f"the relay did not start: {describe(exc)}"
            return
        if event.get("ev") != "listening":
            why = (hop.proc.stderr.strip().splitlines() or [line or "no answer"])[-1]
            hop.state, hop.cause, hop.detail = "failed", "start", f"the relay did not start: {why[:300]}"
            hop.proc.kill()
            return
        hop.port, hop.state, hop.heard = int(event["port"]), "waiting", time.monotonic()
        hop.check = str(event.get("check") or "")
        threading.Thread(target=self._listen, args=(hop,), daemon=True, name=f"ev-{hop.key}").start()
        threading.Thread(target=self._speak, args=(hop,), daemon=True, name=f"ctl-{hop.key}").start()

    def _leave_out(self) -> None:
        """Hops whose check says they need nothing (an image they hold) stop here: nothing moves to them."""
        for hop in self.hops.values():
            if self.wanted is not None and hop.live and hop is not self.source and not self.wanted(hop):
                hop.state = "skipped"
                hop.send({"op": "exit"})
                threading.Thread(target=self._bury, args=(hop, False), daemon=True).start()

    def _listen(self, hop: Hop) -> None:
        assert hop.proc is not None
        while line := hop.proc.readline():
            try:
                self.events.put((hop.key, json.loads(line)))
            except ValueError:
                continue
        self.events.put((hop.key, {"ev": "eof"}))

    def _speak(self, hop: Hop) -> None:
        """Control lines to one relay, from their own thread: a dead link blocks only this one."""
        assert hop.proc is not None
        while (data := hop.outbox.get()) is not None:
            try:
                hop.proc.write(data)
            except OSError:
                return

    def _wire(self) -> None:
        """The tree: the root sends to the first hop; hop i receives from hop (i - 1) // fanout."""
        if isinstance(self.source, Feed):
            self.source.start(self.events, self.key)
        elif not self.source.live:
            self._fail_all("source", f"the source {self.source.label}: {self.source.detail}")
            return
        order = [h for h in self.hops.values() if h.live and h is not self.source]
        for i, hop in enumerate(order):
            parent = self.source.key if i == 0 else order[(i - 1) // self.fanout].key
            self._attach(hop, parent)
        for hop in self.hops.values():
            if hop.live and not any(h.parent == hop.key for h in order):
                hop.send({"op": "release"})  # a leaf: nobody will need the stream's first bytes from it

    def _attach(self, hop: Hop, parent_key: str, replaces: str | None = None) -> None:
        hop.parent = parent_key
        hop.send({"op": "upstream", "id": parent_key})  # its relay takes the stream from no other
        parent = self._node(parent_key)
        if isinstance(parent, Feed):
            parent.add(hop, replaces)
        else:
            msg = {"op": "add", "id": hop.key, "address": hop.host.node.address, "port": hop.port}
            parent.send(msg | ({"replaces": replaces} if replaces else {}))

    def _node(self, key: str) -> Feed | Hop:
        if isinstance(self.source, Feed) and key == ROOT:
            return self.source
        return self.hops[key]

    # -- watching ----------------------------------------------------------------------------------
    def _monitor(self) -> None:
        last_ping = last_tick = 0.0
        while not self._settled():
            try:
                key, event = self.events.get(timeout=0.2)
                self._handle(key, event)
            except queue.Empty:
                pass
            now = time.monotonic()
            if now - last_ping > self.timing.ping:
                last_ping = now
                for hop in self._live():
                    hop.send({"op": "ping"})
            if now - last_tick > 0.5:
                last_tick = now
                self._check_silence(now)
                self._check_stall(now)
                self.on_progress(self.hops, self.source)
        self.on_progress(self.hops, self.source)

    def _live(self) -> list[Hop]:
        return [h for h in self.hops.values() if h.live and h.proc is not None]

    def _settled(self) -> bool:
        return all(h.state in ("finished", "failed", "aborted", "skipped") for h in self.hops.values())

    def _handle(self, key: str, event: dict) -> None:
        kind = event.get("ev")
        hop = self.hops.get(key)
        if hop is not None and kind not in ("eof", "lost", "alive"):
            hop.heard = time.monotonic()
        if kind == "downstream":
            self._downstream(key, event)
        elif kind == "source-failed":
            self._fail_all("source", f"the source failed: {event.get('detail')}")
        elif hop is not None:
            self._hop_event(hop, kind, event)

    def _hop_event(self, hop: Hop, kind: str | None, event: dict) -> None:
        if kind == "progress":
            hop.received = event["received"]
            if hop.state == "waiting" and hop.received:
                hop.state = "receiving"
        elif kind == "sink":
            hop.sink = event
        elif kind == "file":
            hop.files.append(event)
        elif kind == "finished" and hop.live:
            hop.state = "finished"
        elif kind == "eof" and hop.live and hop.state != "finished":
            why = (hop.proc.stderr.strip().splitlines() or ["no word"])[-1] if hop.proc else "no word"
            self._fail(hop, "relay", f"the relay ended: {why[:300]}")
        elif kind == "lost":
            hop.checking = False
            if hop.live:
                self._fail(hop, "lost", event.get("detail") or "the node stopped answering (link down?)")
        elif kind == "alive":
            hop.checking = False
            silent = time.monotonic() - hop.heard
            if silent > self.timing.wedged and hop.live:
                self._fail(hop, "relay", f"the relay has said nothing for {silent:.0f}s")
        elif kind == "reconnect" and hop.live and hop.parent == event["parent"]:
            hop.reconnects += 1
            self.on_event(f"{hop.label}: the link from {_name(self._node(hop.parent))} broke: reconnecting")
            self._attach(hop, hop.parent, replaces=hop.key)
        elif kind == "source-failed":
            self._fail_all("source", f"the source failed: {event.get('detail')}")

    def _downstream(self, parent_key: str, event: dict) -> None:
        child = self.hops.get(event.get("id", ""))
        if child is None or not child.live or child.parent != parent_key:
            return
        state = event.get("state")
        if state == "cannot-resume":
            self._fail(child, "upstream", f"could not resume at byte {event.get('position')}: re-run")
        elif state == "lost":
            threading.Thread(target=self._recheck, args=(child, parent_key), daemon=True).start()

    def _recheck(self, child: Hop, parent_key: str) -> None:
        """The link to `child` broke: if its node still answers and its relay runs, reconnect it (it
        resumes where it stood), a few times at most; otherwise it is lost."""
        proc = child.proc
        # A relay killed a moment ago may not be reaped yet: before the last word (lost), give it the
        # `alive` window to show that it ended, so an ended relay is not reported as a lost node.
        patience = 0 if child.reconnects < 3 else self.timing.alive
        if proc is not None and (proc.out_done.is_set() or proc.wait(patience) is not None):
            self.events.put((child.key, {"ev": "eof"}))  # its relay ended (the link did not break): say so
            return
        if proc is not None and child.reconnects < 3 and child.host.alive(self.timing.alive):
            self.events.put((child.key, {"ev": "reconnect", "parent": parent_key}))
            return
        self.events.put((child.key, {"ev": "lost", "detail": "the connection to it broke and it does not answer"}))

    def _check_silence(self, now: float) -> None:
        for hop in self._live():
            if now - hop.heard > self.timing.silence and not hop.checking:
                hop.checking = True
                threading.Thread(target=self._ask, args=(hop,), daemon=True).start()

    def _ask(self, hop: Hop) -> None:
        answered = hop.host.alive(self.timing.alive)
        detail = f"no answer for {self.timing.silence + self.timing.alive:.0f}s (link down, or the node is off)"
        self.events.put((hop.key, {"ev": "alive"} if answered else {"ev": "lost", "detail": detail}))

    def _check_stall(self, now: float) -> None:
        moved = sum(h.received for h in self.hops.values()) + getattr(self.source, "received", 0)
        if moved != self._moved:
            self._moved, self.moved_at = moved, now
        elif now - self.moved_at > self.timing.stall:
            for hop in self._live():
                if hop.state != "finished":
                    self._fail(hop, "stalled", f"no byte moved for {self.timing.stall:.0f}s")

    # -- failing, re-routing, ending ----------------------------------------------------------------
    def _fail(self, hop: Hop, cause: str, detail: str) -> None:
        hop.state, hop.cause, hop.detail = "failed", cause, detail
        self.on_event(f"{hop.label}: failed: {detail}")
        if hop is self.source:
            self._fail_all("source", f"the source {hop.label} failed: {detail}")
            return
        parent = self._node(hop.parent) if hop.parent else None
        children = [h for h in self.hops.values() if h.parent == hop.key and h.live]
        if parent is not None and not children:
            self._drop(parent, hop.key)
        for child in children:
            if parent is None or not (isinstance(parent, Feed) or parent.live):
                self._fail(child, "upstream", f"its upstream {hop.label} failed")
                continue
            self.on_event(f"{child.label}: re-routed around {hop.label}: now from {_name(parent)}")
            self._attach(child, parent.key, replaces=hop.key)  # the parent's hold passes to the child
        threading.Thread(target=self._bury, args=(hop, cause == "lost"), daemon=True).start()

    @staticmethod
    def _drop(parent: Feed | Hop, key: str) -> None:
        if isinstance(parent, Feed):
            parent.drop(key)
        else:
            parent.send({"op": "drop", "id": key})

    @staticmethod
    def _bury(hop: Hop, unreachable: bool) -> None:
        hop.outbox.put(None)
        if hop.proc is not None:
            hop.proc.kill()
        if unreachable:
            hop.host.close()  # nothing more will come through it; a later command reconnects

    def _fail_all(self, cause: str, detail: str) -> None:
        if isinstance(self.source, Feed):
            self.source.close()
        for hop in self.hops.values():
            if hop.live and (hop.state != "finished" or hop is self.source):
                hop.state, hop.cause, hop.detail = "failed", cause, detail
                hop.send({"op": "abort"})
        self.on_event(detail)

    def _abort(self) -> None:
        """Ctrl-C: every relay stops (a directory keeps its partial files), and says so; bounded."""
        if isinstance(self.source, Feed):
            self.source.close()
        waiting = {h.key for h in self._live()}
        for key in waiting:
            self.hops[key].send({"op": "abort"})
        deadline = time.monotonic() + 10
        try:
            while waiting and time.monotonic() < deadline:
                try:
                    key, event = self.events.get(timeout=0.2)
                except queue.Empty:
                    continue
                if event.get("ev") in ("sink", "file") and key in self.hops:
                    self._hop_event(self.hops[key], event["ev"], event)
                if event.get("ev") in ("aborted", "eof", "bye"):
                    waiting.discard(key)
        except KeyboardInterrupt:
            pass  # a second Ctrl-C: stop waiting
        for hop in self.hops.values():
            if hop.state != "finished" and hop.live:
                hop.state = "aborted"

    def _close(self) -> None:
        for hop in self._live():
            hop.send({"op": "exit"})
        deadline = time.monotonic() + 5
        for hop in self.hops.values():
            if hop.proc is not None and hop.live:
                hop.proc.wait(max(0.0, deadline - time.monotonic()))
            self._bury(hop, False)
        if isinstance(self.source, Feed):
            self.source.close()


def _name(node: Feed | Hop) -> str:
    return "this machine" if isinstance(node, Feed) else node.label
