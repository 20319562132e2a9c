"""What both ends of the relay share: the stream's framing and seal, the handshake, the ring of the
stream's last bytes, and a downstream (one node the stream is passed to). The node's relay
(remote/relay.py) and the operator's end (transport/relay.py) import it; on a node it arrives bundled
with the relay (launcher/remote/__init__.py), so it is standard library only (python 3.8 or newer).

Link frames are `!I length` + bytes; the stream is sealed by its root: frames `!I n` + n bytes
(n <= CHUNK) + HMAC(key, `LRF1` + `!QI` (payload offset, n) + the bytes); n = 0 ends it. The handshake
(remote/relay.py's docstring tells it whole) proves each side holds the run's key, which never crosses.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import socket
import struct
import threading
import time

CHUNK = 1 << 20
FRAME = struct.Struct("!I")
SEAL = struct.Struct("!QI")  # what a frame's MAC covers besides its bytes: its payload offset and length
MAC = 32  # bytes of an HMAC-SHA256
HANDSHAKE = 10.0  # seconds for a connection to prove itself (a slow loris is cut off here)


# -- the ring: the stream's last bytes, readers each at their own position --------------------------


class Ring:
    """The writer waits while a reader still needs what it would overwrite; each reader holds `keep`
    bytes behind its position (a re-routed node resumes within them)."""

    def __init__(self, cap: int, keep: int):
        self.buf = bytearray(cap)
        self.view = memoryview(self.buf)
        self.cap, self.keep = cap, keep
        self.end = 0  # bytes of the stream received so far
        self.reserved = 0  # being written right now, past `end`
        self.eof = False
        self.closed = False
        self.cond = threading.Condition()
        # name -> [position, bytes to hold behind it]; "hold" keeps the first bytes until the first
        # downstream takes them (or the launcher says there will be none: `release`)
        self.readers: dict = {"hold": [0, 0]}

    def _low(self) -> int:
        lows = [pos - keep for pos, keep in self.readers.values()]
        return min(lows) if lows else self.end

    def held_from(self) -> int:
        """The oldest byte still in the ring (a reader may start there)."""
        return max(0, self.end + self.reserved - self.cap)

    def reserve(self, n: int, stop: threading.Event | None = None):
        """Room for up to n bytes after `end` (waits while a reader needs what it would overwrite).
        None when closed or stopped."""
        with self.cond:
            while True:
                if self.closed or (stop is not None and stop.is_set()):
                    return None
                room = self._low() + self.cap - self.end
                if room >= min(n, 65536, max(1, self.cap // 4)):
                    break
                self.cond.wait(1)
            at = self.end % self.cap
            size = min(n, room, self.cap - at)
            self.reserved = size
            return self.view[at : at + size]

    def commit(self, n: int) -> None:
        with self.cond:
            self.end += n
            self.reserved = 0
            self.cond.notify_all()

    def write(self, data) -> bool:
        data = memoryview(data)
        while data:
            room = self.reserve(len(data))
            if room is None:
                return False
            room[:] = data[: len(room)]
            self.commit(len(room))
            data = data[len(room) :]
        return True

    def finish(self) -> None:
        with self.cond:
            self.eof = True
            self.cond.notify_all()

    def close(self) -> None:
        with self.cond:
            self.closed = True
            self.cond.notify_all()

    def attach(self, name: str, pos: int, keep: int) -> bool:
        with self.cond:
            if pos < self.held_from():
                return False
            self.readers[name] = [pos, keep]
            return True

    def detach(self, name: str) -> None:
        with self.cond:
            self.readers.pop(name, None)
            self.cond.notify_all()

    def read(self, name: str, pos: int, n: int = CHUNK):
        """A view of the bytes at `pos` (waits for them); b"" at the end of the stream; None when closed
        (or detached, once bytes come). Valid until the reader advances past it."""
        with self.cond:
            while not self.closed and self.end <= pos and not self.eof:
                self.cond.wait(1)
            if self.closed or name not in self.readers:
                return None
            if self.end <= pos:
                return b""
            at = pos % self.cap
            size = min(n, self.end - pos, self.cap - at)
            return self.view[at : at + size]

    def advance(self, name: str, pos: int) -> None:
        with self.cond:
            if name in self.readers:
                self.readers[name][0] = pos
            self.cond.notify_all()


# -- the seal and the handshake -----------------------------------------------------------------------


class Sealer:
    """The root's side of the stream's seal: each piece of payload into frames of at most CHUNK bytes,
    each with its MAC."""

    def __init__(self, key: bytes):
        self.key, self.offset = key, 0

    def seal(self, data):
        data = memoryview(data)
        for at in range(0, len(data), CHUNK):
            piece = data[at : at + CHUNK]
            mac = hmac.new(self.key, b"LRF1" + SEAL.pack(self.offset, len(piece)), hashlib.sha256)
            mac.update(piece)
            self.offset += len(piece)
            yield FRAME.pack(len(piece))
            yield piece
            yield mac.digest()

    def end(self) -> bytes:
        mac = hmac.new(self.key, b"LRF1" + SEAL.pack(self.offset, 0), hashlib.sha256)
        return FRAME.pack(0) + mac.digest()


def read_line(sock, limit: int = 256, deadline: float | None = None) -> str:
    """One handshake line: at most `limit` bytes, and (with a deadline) whole before it."""
    data = b""
    while not data.endswith(b"\n"):
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise ConnectionError("the handshake took too long")
            sock.settimeout(left)
        got = sock.recv(1)
        if not got or len(data) > limit:
            raise ConnectionError("the peer closed during the handshake")
        data += got
    return data.decode("ascii", "replace").strip()


def proof(key: bytes, *parts: str) -> str:
    """HMAC of a handshake's words under the run's key: shows the key is held, never reveals it."""
    return hmac.new(key, "|".join(parts).encode(), hashlib.sha256).hexdigest()


def prove_to(sock, key: bytes, frm: str, to: str, deadline: float | None = None) -> int:
    """The upstream's side of the handshake; returns the position the downstream holds."""
    mine = os.urandom(16).hex()
    sock.sendall(f"LR1 {frm} {to} {mine}\n".encode())
    theirs = read_line(sock, 256, deadline)
    if not theirs or theirs.startswith("no"):
        raise ConnectionError(f"refused by the node: {theirs[3:] or 'no reason'}")
    sock.sendall(proof(key, "up", frm, to, mine, theirs).encode() + b"\n")
    position, _, mac = read_line(sock, 256, deadline).partition(" ")
    if not hmac.compare_digest(mac.encode(), proof(key, "down", frm, to, mine, theirs, position).encode()):
        raise ConnectionError("the node did not prove it holds the run's key")
    return int(position)


def shut(sock) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    try:
        sock.close()
    except OSError:
        pass


# -- a downstream ---------------------------------------------------------------------------------------


class Downstream:
    """One node a relay passes the stream to, from the position that node says it holds.

    Lost (its connection broke) or stopped (`stop`: a replacement is on its way), it keeps its hold on
    the ring: the stream waits for the launcher to re-route (a replacement, `replaces` this one, takes
    over the hold once attached) or to drop it. Only then (`released`) does the hold end.
    Each end says how it connects (`connect`), reports (`report`) and closes (`close`, `finished`)."""

    serial = 0
    deadline = HANDSHAKE  # seconds for the handshake; None: the connection's own timeout

    def __init__(self, ring: Ring, key: bytes, frm: str, ident: str, replaces: Downstream | None = None):
        Downstream.serial += 1
        self.ring, self.key, self.frm, self.id = ring, key, frm, ident
        self.name = f"{ident}#{Downstream.serial}"
        self.replaces = replaces
        self.conn = None
        self.dropped = False  # stopped or dropped: its connection is closed, nothing more to report
        self.released = False  # dropped, or its replacement is attached: it holds the ring no more
        self.sent = 0
        self.thread = threading.Thread(target=self.run, daemon=True, name=f"down-{ident}")

    def connect(self):
        raise NotImplementedError

    def report(self, state: str, **fields) -> None:
        raise NotImplementedError

    def close(self) -> None:
        shut(self.conn)

    def finished(self) -> None:
        """The link's end (the stream sent, lost, or refused)."""
        self.close()

    def run(self) -> None:
        ring = self.ring
        try:
            self.conn = self.connect()
            if self.dropped:
                return
            deadline = None if self.deadline is None else time.monotonic() + self.deadline
            pos = prove_to(self.conn, self.key, self.frm, self.id, deadline)
            attached = ring.attach(self.name, pos, ring.keep)
            if self.released:  # its replacement let go of it while it attached
                ring.detach(self.name)
                return
            self.let_go()
            if not attached:
                self.report("cannot-resume", position=pos, held=ring.held_from())
                return
            ring.detach("hold")
            self.report("connected", position=pos)
            self.conn.settimeout(None)
            self.sent = pos
            self.pump(pos)
            ring.detach(self.name)
        except Exception as exc:  # the connection, the peer's words: either way this link is lost
            self.let_go()
            if self.released or ring.closed:
                ring.detach(self.name)
            elif not self.dropped:
                self.report("lost", detail=str(exc) or type(exc).__name__, sent=self.sent)
        finally:
            if self.conn is not None:
                self.finished()

    def pump(self, pos: int) -> None:
        while True:
            view = self.ring.read(self.name, pos)
            if view is None:
                return
            if not view:
                self.conn.sendall(FRAME.pack(0))
                self.report("done", sent=pos)
                return
            self.conn.sendall(FRAME.pack(len(view)))
            self.conn.sendall(view)
            pos += len(view)
            self.sent = pos
            self.ring.advance(self.name, pos)

    def let_go(self) -> None:
        """The one this replaces holds the ring no more (this one holds it now, or could not)."""
        if self.replaces is not None:
            self.replaces.released = True
            self.ring.detach(self.replaces.name)
            self.replaces = None

    def stop(self) -> None:
        """Close the connection; the hold on the ring stays (for a replacement)."""
        self.dropped = True
        if self.conn is not None:
            self.close()

    def drop(self) -> None:
        self.released = True
        self.stop()
        self.let_go()
        self.ring.detach(self.name)


def rewire(downstreams: dict, ident: str, replaces: str | None, make) -> Downstream:
    """A new downstream `ident` (made by `make(the one it replaces)`), started: `replaces` names the
    failed one it takes over from (its hold on the ring ends once the new one is attached), or itself
    (a reconnection)."""
    old = downstreams.pop(replaces, None) if replaces else None
    same = downstreams.pop(ident, None)
    if same is not None and old is None:
        old = same
    elif same is not None:
        same.drop()
    if old is not None:
        old.stop()
    d = make(old)
    downstreams[ident] = d
    d.thread.start()
    return d
