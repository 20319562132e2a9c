"""The launcher's relay: run on each node by `launcher image push` and `launcher stage`, so that one
stream from the operator reaches every node, each node passing it on to the next as the bytes pass.

Standard library only (the host's python3, 3.8 or newer); it imports nothing of the launcher, only
its siblings relay_core.py (framing, seal, handshake, ring, downstream: shared with the operator's end,
transport/relay.py) and manifest.py, which arrive bundled with it (launcher/remote/__init__.py). The
launcher starts it as

    python3 -u -c 'import sys;n=int(sys.argv.pop(1));exec(compile(sys.stdin.buffer.read(n),...))' N MODE

so this program arrives on stdin and the rest of stdin stays the launcher's: JSON lines.
Modes:
  relay  a `hello` line (the run's key, this node's id, address to listen on, sink, source, a check
         command whose output comes back with the port) -> it listens, takes the stream from
         an upstream node (or emits it from a directory of its own), passes it on to the downstream
         nodes the launcher names (`add`/`drop` lines, any time: that is how a failed node is routed
         around), and feeds it to its sink: a command (`docker load`) or a directory (the stream's
         files). Events go to stdout as JSON lines. It keeps the last RING bytes, KEEP of them behind
         every downstream, so a node re-routed after its upstream failed resumes where it stopped.
  emit   one JSON line in -> the record stream of a directory's files on stdout.
(Scanning a directory and doctor's check are the manifest program's: remote/manifest.py.)

Trust: the launcher's SSH sessions (this program's stdin) are the only trusted channel; the cluster
network is not. Each run has a random key that only the SSH sessions carry (never a TCP connection).

Data connections: the upstream connects and sends `LR1 FROM TO NONCE`; the downstream accepts only the
upstream the launcher named (an `upstream` line: one connection at a time, a few at most, each proving
itself within HANDSHAKE seconds) and answers its own nonce; the upstream answers
HMAC(key, up|FROM|TO|NONCE|NONCE'); the downstream answers how many bytes of the stream it already holds
with HMAC(key, down|...|position) (so each side proved it holds the key; the key never crossed). Then
link frames of `!I length` + bytes from that position on; a link frame of length 0 ends the link.

The stream itself is sealed end to end by its root: frames `!I n` + n bytes (n <= CHUNK) + HMAC(key,
`LRF1` + `!QI` (payload offset, n) + the bytes); n = 0 ends it. A sink uses no byte of a frame before
its MAC is checked, so a byte altered, dropped, replayed or moved on the way fails the node (bytes the
relays pass on are checked by every sink). The stage stream (the payload): records `LR` + `!I` + a
JSON header ({path, size, start, length}, or {end: true}; at most HEADER_MAX bytes) + `length` bytes of
the file from offset `start`. Whatever a record says, a node writes only the files the launcher listed
(over SSH: path, size, sha256), each under the root, and keeps a file only when its sha256 is the
launcher's; an image sink keeps only the image ID the launcher computed, and no other tag changes.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import queue
import socket
import struct
import subprocess
import sys
import threading
import time

from . import relay_core
from .manifest import LOCK, PART, inside, unsafe_name, write_manifest
from .relay_core import CHUNK, FRAME, HANDSHAKE, MAC, SEAL, Ring, Sealer, proof, read_line, rewire, shut

RING = 64 << 20  # bytes of the stream held
KEEP = 48 << 20  # of them, held behind every downstream (a re-routed node resumes within these)
SOCK_BUF = 1 << 20  # bounds what is in flight on a link (and so what KEEP must cover)
IDLE = 60.0  # no line from the launcher for this long: it is gone; stop
REPORT = 0.5  # seconds between progress events
HEADER_MAX = 64 << 10  # a record header longer than this is not one the launcher wrote
MAX_CONNS = 4  # connections being proven or streaming at once (the upstream, its replacement, spares)
TAIL = 4096  # bytes of a sink command's output kept (its last lines, for the report)
ID_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")

_say_lock = threading.Lock()


def say(ev: str, **fields) -> None:
    line = json.dumps(dict(ev=ev, **fields))
    with _say_lock:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


# -- sockets ----------------------------------------------------------------------------------------


def tune(sock: socket.socket) -> None:
    for opt in (socket.SO_SNDBUF, socket.SO_RCVBUF):
        sock.setsockopt(socket.SOL_SOCKET, opt, SOCK_BUF)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def recv_exact(sock, n: int):
    data = b""
    while len(data) < n:
        got = sock.recv(n - len(data))
        if not got:
            return None
        data += got
    return data


# -- the relay ----------------------------------------------------------------------------------------


class Upstream:
    """One connection the stream arrives on; replaced when the launcher re-routes around a failure."""

    def __init__(self, relay: Relay, sock: socket.socket, ident: str):
        self.relay, self.sock, self.id = relay, sock, ident
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        ring = self.relay.ring
        try:
            while True:
                head = recv_exact(self.sock, 4)
                if head is None:
                    break
                n = FRAME.unpack(head)[0]
                if n == 0:
                    ring.finish()
                    say("received", bytes=ring.end)
                    return
                while n:
                    room = ring.reserve(min(n, CHUNK), self.stop)
                    if room is None:
                        return
                    got = 0
                    try:
                        got = self.sock.recv_into(room)
                    finally:
                        ring.commit(got)
                    if not got:
                        break
                    n -= got
                if n:
                    break
        except OSError:
            pass
        finally:
            shut(self.sock)
            self.relay.slots.release()
        if not self.stop.is_set() and not ring.closed:
            say("upstream-lost", position=ring.end)

    def end(self) -> bool:
        self.stop.set()
        shut(self.sock)
        self.thread.join(5)
        return not self.thread.is_alive()


class Downstream(relay_core.Downstream):
    """One node this relay passes the stream to, over TCP (relay_core.Downstream: the rules)."""

    def __init__(self, relay: Relay, ident: str, address: str, port: int, replaces: Downstream | None = None):
        super().__init__(relay.ring, relay.key, relay.id, ident, replaces)
        self.address, self.port = address, port

    def connect(self) -> socket.socket:
        sock = socket.create_connection((self.address, self.port), timeout=10)
        tune(sock)
        return sock

    def report(self, state: str, **fields) -> None:
        say("downstream", id=self.id, state=state, **fields)


class Relay:
    def __init__(self, hello: dict):
        self.key = bytes.fromhex(hello["key"])  # the run's; it came over SSH and never leaves this process
        self.id = str(hello["id"])
        self.expected = hello.get("upstream")  # the only upstream accepted: the launcher names it
        self.expected_changed = threading.Condition()
        self.slots = threading.BoundedSemaphore(MAX_CONNS)
        self.hello = hello
        self.ring = Ring(hello.get("ring", RING), hello.get("keep", KEEP))
        self.upstream: Upstream | None = None
        self.up_lock = threading.Lock()
        self.downstreams: dict = {}
        self.sink_done = threading.Event()
        self.sink_pos = 0
        self.sink_proc = None
        self.server = self.listen(hello.get("listen") or "0.0.0.0")

    def listen(self, address: str) -> socket.socket:
        server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        tune(server)
        try:
            server.bind((address, 0))
        except OSError:
            server.bind(("0.0.0.0", 0))  # the node's address is not one of its own (NAT): any
        server.listen(16)
        server.settimeout(1)
        return server

    def accept_loop(self) -> None:
        while not self.ring.closed:
            try:
                conn, peer = self.server.accept()
            except socket.timeout:  # noqa: UP041 (not TimeoutError before Python 3.10, on the node)
                continue
            except OSError:
                return
            if not self.slots.acquire(blocking=False):
                say("refused", peer=peer[0], detail=f"{MAX_CONNS} connections already")
                shut(conn)
                continue
            threading.Thread(target=self.handshake, args=(conn, peer[0]), daemon=True).start()

    def handshake(self, conn: socket.socket, peer: str) -> None:
        """A connection becomes the upstream only once it proved the key and is the one the launcher named."""
        deadline = time.monotonic() + self.hello.get("handshake", HANDSHAKE)
        started = False
        try:
            frm, mine = self.greeted(conn, peer, deadline)
            if frm is None:
                return
            theirs = os.urandom(16).hex()
            conn.sendall(theirs.encode() + b"\n")
            answer = read_line(conn, 256, deadline)
            if not hmac.compare_digest(answer.encode(), proof(self.key, "up", frm, self.id, mine, theirs).encode()):
                say("refused", peer=peer, detail=f"{frm} did not prove it holds the run's key")
                return
            started = self.take_upstream(conn, peer, frm, mine, theirs)
        except (OSError, ValueError):
            pass
        finally:
            if not started:
                shut(conn)
                self.slots.release()

    def greeted(self, conn: socket.socket, peer: str, deadline: float):
        """(FROM, its nonce) of a connection's first line, or (None, None) when it is not the upstream
        the launcher named (waiting within the handshake's time for the launcher's word)."""
        words = read_line(conn, 256, deadline).split(" ")
        if len(words) != 4 or words[0] != "LR1" or words[2] != self.id or not set(words[1]) <= ID_CHARS:
            say("refused", peer=peer, detail="not a relay handshake for this node")
            return None, None
        with self.expected_changed:
            named = self.expected_changed.wait_for(lambda: self.expected == words[1], deadline - time.monotonic())
        if not named:
            conn.sendall(b"no: not the upstream the launcher named\n")
            say("refused", peer=peer, detail=f"{words[1][:64]} is not the upstream the launcher named")
            return None, None
        return words[1], words[3][:64]

    def take_upstream(self, conn: socket.socket, peer: str, frm: str, mine: str, theirs: str) -> bool:
        with self.up_lock:
            old = self.upstream
            if old is not None and not old.end():
                say("refused", peer=peer, detail="the previous upstream does not let go")
                return False
            if self.expected != frm:  # the launcher re-routed while this one proved itself
                return False
            tune(conn)
            position = str(self.ring.end)
            conn.sendall(f"{position} {proof(self.key, 'down', frm, self.id, mine, theirs, position)}\n".encode())
            conn.settimeout(None)
            self.upstream = Upstream(self, conn, frm)
            self.upstream.thread.start()
        say("upstream", position=self.ring.end, peer=peer, id=frm)
        return True

    def name_upstream(self, ident: str) -> None:
        """The launcher's word: from now on only `ident` may connect. The current upstream (named
        before) goes on until `ident` has proved itself and takes over: what is already on its way
        from it still arrives, so the node resumes from as far as it can (within the new one's KEEP)."""
        with self.expected_changed:
            self.expected = ident
            self.expected_changed.notify_all()

    def add(self, ident: str, address: str, port: int, replaces: str | None = None) -> None:
        """Pass the stream to this node too; `replaces`: the failed node it takes over from (its hold
        on the ring ends once the new one is attached), or itself (a reconnection)."""
        rewire(self.downstreams, ident, replaces, lambda old: Downstream(self, ident, address, port, old))

    def drop(self, ident: str) -> None:
        d = self.downstreams.pop(ident, None)
        if d is not None:
            d.drop()

    def report_loop(self) -> None:
        while not self.ring.closed:
            say("progress", received=self.ring.end, sink=self.sink_pos, eof=self.ring.eof)
            time.sleep(REPORT)

    def finished(self) -> bool:
        busy = [d for d in self.downstreams.values() if d.thread.is_alive()]
        return self.ring.eof and self.sink_done.is_set() and not busy

    def abort(self) -> None:
        self.ring.close()
        proc = self.sink_proc
        if proc is not None and proc.poll() is None:
            proc.kill()
        for d in list(self.downstreams.values()):
            d.drop()
        if self.upstream is not None:
            self.upstream.end()


def control_lines(q: queue.Queue) -> None:
    stdin = sys.stdin.buffer
    while True:
        line = stdin.readline()
        q.put(line)
        if not line:
            return


def run_relay(hello: dict, lines: queue.Queue) -> int:
    relay = Relay(hello)
    checked = {}
    if hello.get("check"):  # the launcher's question before anything moves (does this node hold it?)
        done = subprocess.run(hello["check"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=300)
        checked = {"check": done.stdout.decode(errors="replace").strip()}
    say("listening", port=relay.server.getsockname()[1], **checked)
    sink = hello.get("sink")
    if sink:
        relay.ring.attach("sink", 0, 0)
        target = {"cmd": cmd_sink, "image": image_sink, "dir": dir_sink}[sink["kind"]]
        threading.Thread(target=guard_sink, args=(target, relay, sink), daemon=True).start()
    else:
        relay.sink_done.set()
    if hello.get("source"):
        threading.Thread(target=emit_into, args=(relay, hello["source"]), daemon=True).start()
    else:
        threading.Thread(target=relay.accept_loop, daemon=True).start()
    threading.Thread(target=relay.report_loop, daemon=True).start()
    return control(relay, lines)


def control(relay: Relay, lines: queue.Queue) -> int:
    """The launcher's lines, until it says `exit` (or `abort`, or goes silent)."""
    heard = time.monotonic()
    said_finished = False
    while True:
        if not said_finished and relay.finished():
            said_finished = True
            say("finished", received=relay.ring.end, sink=relay.sink_pos)
        try:
            raw = lines.get(timeout=0.2)
        except queue.Empty:
            if time.monotonic() - heard > IDLE:
                relay.abort()
                say("aborted", why=f"no word from the launcher for {IDLE:.0f}s")
                return 3
            continue
        heard = time.monotonic()
        msg = json.loads(raw) if raw.strip() else {"op": "abort" if not raw else "ping"}
        op = msg.get("op")
        if op == "add":
            relay.add(msg["id"], msg["address"], int(msg["port"]), msg.get("replaces"))
            said_finished = False
        elif op == "drop":
            relay.drop(msg["id"])
        elif op == "upstream":
            relay.name_upstream(str(msg["id"]))
        elif op == "release":
            relay.ring.detach("hold")
        elif op == "exit":
            say("bye", received=relay.ring.end)
            return 0
        elif op == "abort":
            relay.abort()
            relay.sink_done.wait(10)
            say("aborted", why="asked" if raw else "the launcher went away")
            return 3


def guard_sink(target, relay: Relay, sink: dict) -> None:
    try:
        target(relay, sink)
    except Exception as exc:  # a sink that breaks must not hold the stream back for the others
        say("sink", ok=False, detail=f"{type(exc).__name__}: {exc}")
    finally:
        relay.ring.detach("sink")
        relay.sink_done.set()


# -- sinks --------------------------------------------------------------------------------------------


class Forged(Exception):
    """The stream is not what the root sealed, or not what the launcher listed: the sink stops."""

    def __init__(self, why: str, path: str = ""):
        super().__init__(why)
        self.path = path


class StreamReader:
    """The ring's bytes in order: the sealed stream as it arrived."""

    def __init__(self, relay: Relay):
        self.relay = relay
        self.pos = 0

    def peek(self, at: int, n: int) -> list:
        """Views of the n bytes `at` past the position, which stays: the ring keeps them until `advance`
        (n is at most a frame: far less than the ring)."""
        ring, views, pos = self.relay.ring, [], self.pos + at
        while n:
            view = ring.read("sink", pos, n)
            if not view:
                raise EOFError("the stream ended inside a record")
            views.append(view)
            pos += len(view)
            n -= len(view)
        return views

    def advance(self, n: int) -> None:
        self.pos += n
        self.relay.sink_pos = self.pos
        self.relay.ring.advance("sink", self.pos)


class Opened:
    """The stream's payload: each frame's bytes given out only once its MAC is checked (views of the
    ring itself: the frame stays there until the next one is asked for, nothing is copied)."""

    def __init__(self, reader: StreamReader, key: bytes):
        self.reader, self.key = reader, key
        self.offset = 0  # payload bytes checked so far
        self.done = 0  # bytes of the last frame given out, passed at the next
        self.left: list = []

    def frame(self):
        """The next frame's payload (views), checked; None at the sealed end."""
        reader = self.reader
        reader.advance(self.done)
        self.done = 0
        n = FRAME.unpack(b"".join(bytes(v) for v in reader.peek(0, FRAME.size)))[0]
        if n > CHUNK:
            raise Forged(f"a frame of {n} bytes at byte {reader.pos} (frames are at most {CHUNK})")
        mac = hmac.new(self.key, b"LRF1" + SEAL.pack(self.offset, n), hashlib.sha256)
        payload = reader.peek(FRAME.size, n)
        for view in payload:
            mac.update(view)
        tag = b"".join(bytes(v) for v in reader.peek(FRAME.size + n, MAC))
        if not hmac.compare_digest(mac.digest(), tag):
            why = "altered on the way, or not sealed with the run's key"
            raise Forged(f"the stream's MAC does not match at byte {reader.pos}: {why}")
        self.offset += n
        self.done = FRAME.size + n + MAC
        return payload or None

    def views(self, n: int):
        while n:
            if not self.left:
                payload = self.frame()
                if payload is None:
                    raise Forged("the stream ended inside a record")
                self.left = payload[::-1]  # popped from the end
            view = self.left.pop()
            if len(view) > n:
                self.left.append(view[n:])
                view = view[:n]
            n -= len(view)
            yield view

    def take(self, n: int) -> bytes:
        return b"".join(bytes(view) for view in self.views(n))

    def ended(self) -> bool:
        """Whether the sealed end comes next (and nothing else)."""
        if self.left or self.frame() is not None:
            return False
        self.reader.advance(self.done)
        return True


def run_command(relay: Relay, argv: list):
    """The stream's checked payload into a command's stdin: (exit code, its output's tail, why the
    stream failed or None, payload bytes). A stream that fails kills the command first: it never sees
    a clean end."""
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    relay.sink_proc = proc
    tail = bytearray()

    def collect() -> None:  # in blocks, not lines: a command printing one endless line stays bounded
        while True:
            got = os.read(proc.stdout.fileno(), 65536)
            if not got:
                return
            tail.extend(got)
            del tail[:-TAIL]

    reader = threading.Thread(target=collect, daemon=True)
    reader.start()
    opened, broke = Opened(StreamReader(relay), relay.key), None
    try:
        while True:
            payload = opened.frame()
            if payload is None:
                opened.reader.advance(opened.done)
                break
            for view in payload:
                proc.stdin.write(view)
    except (Forged, EOFError) as exc:
        broke = str(exc)
        proc.kill()
    except OSError as exc:
        broke = str(exc)
    relay.ring.detach("sink")  # never hold the others back, whatever the command does now
    try:
        proc.stdin.close()
    except OSError:
        pass
    code = proc.wait()
    reader.join(5)
    return code, bytes(tail).decode(errors="replace").strip(), broke, opened.offset


def cmd_sink(relay: Relay, sink: dict) -> None:
    """The stream into a command's stdin; its output's tail reported at the end."""
    code, output, broke, moved = run_command(relay, sink["argv"])
    ok = code == 0 and broke is None  # None: the sealed end came, every byte before it checked
    say("sink", ok=ok, code=code, output=output[-1000:], bytes=moved, **({"detail": broke} if broke else {}))


def docker_images() -> dict:
    """Every tag of this node's engine -> its image ID, and every image ID (tagged or not)."""
    fmt = "{{.Repository}}:{{.Tag}} {{.ID}}"
    out = subprocess.run(
        ["docker", "image", "ls", "--all", "--no-trunc", "--format", fmt],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, timeout=120,
    )  # fmt: skip
    tags, ids = {}, set()
    for line in out.stdout.decode(errors="replace").splitlines():
        name, _, ident = line.rpartition(" ")
        ids.add(ident)
        if "<none>" not in name:
            tags[name] = ident
    return {"tags": tags, "ids": ids}


def same_ref(name: str, ref: str) -> bool:
    """Whether `docker image ls`'s NAME:TAG is the plan's reference (written short or long)."""
    for prefix in ("docker.io/library/", "docker.io/"):
        if ref.startswith(prefix):
            ref = ref[len(prefix) :]
    last = ref.rsplit("/", 1)[-1]
    return name == (ref if ":" in last or "@" in last else ref + ":latest")


def undo_load(before: dict, after: dict, keep: str) -> list:
    """Every tag the load set, except `keep`'s, back as it was; every image it brought in and that
    `keep` does not name, removed. Returns what was undone."""
    undone = []
    kept = ""
    for name, ident in sorted(after["tags"].items()):
        if keep and same_ref(name, keep):
            kept = ident
            continue
        old = before["tags"].get(name)
        if old != ident:
            argv = ["docker", "tag", old, name] if old else ["docker", "image", "rm", name]
            subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=120)
            undone.append(name)
    for ident in sorted(after["ids"] - before["ids"] - {kept}):
        subprocess.run(
            ["docker", "image", "rm", ident], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=120
        )
        undone.append(ident[:19])
    return undone


def image_sink(relay: Relay, sink: dict) -> None:
    """`docker load` of the stream, kept only when the plan's reference then names the image ID the
    launcher computed; any other tag the load set is put back, any other image it brought is removed."""
    ref, want = sink["ref"], sink["id"]
    before = docker_images()
    code, output, broke, moved = run_command(relay, ["docker", "load"])
    after = docker_images()
    got = next((ident for name, ident in after["tags"].items() if same_ref(name, ref)), "")
    ok = code == 0 and broke is None and got == want
    if not ok and got and got != want and broke is None and code == 0:
        broke = f"the stream held {ref} as {got[:19]}, not the launcher's {want[:19]}: not kept"
    undone = undo_load(before, after, ref if ok else "")
    fields = {"detail": broke} if broke else {}
    say(
        "sink",
        ok=ok,
        id=got if ok else "",
        code=code,
        output=output[-1000:],
        bytes=moved,
        undone=undone,
        **fields,
    )


def unsafe(root: str, rel: str) -> str | None:
    """unsafe_name, and: the path (or its partial file) leaves the root through a link on this node."""
    why = unsafe_name(rel)
    if why is not None:
        return why
    real_root = os.path.realpath(root)
    final = os.path.join(root, rel)
    for path in (final, final + PART):
        if not inside(real_root, os.path.realpath(path)):
            return f"{rel} leads out of {root} through a link"
    return None


def nested_with_source(relay: Relay, root: str) -> str | None:
    """A destination inside its own source (or around it) would copy each run into the last one."""
    source = relay.hello.get("source")
    if not source:
        return None
    dest, src = os.path.realpath(root), os.path.realpath(source["root"])
    if inside(dest, src) or inside(src, dest):
        return f"the destination {root} and the source {source['root']} are inside one another on this node"
    return None


def dir_sink(relay: Relay, sink: dict) -> None:
    """The stream's records into files under `root`: only the files the launcher listed and this node
    needs (`need`: path -> bytes its partial file already holds); each hashed as written and renamed
    into place when its sha256 is the launcher's; the manifest written at the end."""
    import fcntl

    root = sink["root"]
    nested = nested_with_source(relay, root)
    if nested:
        say("sink", ok=False, detail=nested, written=[], failed={})
        return
    os.makedirs(root, exist_ok=True)
    fd = os.open(os.path.join(root, LOCK), os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    with os.fdopen(fd, "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            say("sink", ok=False, detail=f"another stage is writing into {root}")
            return
        receive_all(sink, Opened(StreamReader(relay), relay.key))


def receive_all(sink: dict, reader: Opened) -> None:
    """Every record of the stream: the listed files this node needs, written and checked; the others
    passed over; the first forged record (or byte) ends it. One `sink` event says what came of it."""
    listed = {entry["path"]: entry for entry in sink["files"]}
    need = sink["need"]
    done, failed, detail, ended = [], {}, "", False
    try:
        while True:
            head = record_header(reader, listed)
            if head is None:
                ended = reader.ended()
                break
            path = head["path"]
            if path in need and path not in done and path not in failed:
                why = receive_file(sink["root"], head, listed[path], need[path], reader)
                if why:
                    failed[path] = why
                else:
                    done.append(path)
            else:
                skip(reader, head["length"])
    except Forged as exc:
        if exc.path:
            failed[exc.path] = str(exc)
        else:
            detail = str(exc)
    except EOFError as exc:
        detail = str(exc)
    finally:
        write_manifest(sink["root"], sink["files"], verified=set(sink.get("complete", [])) | set(done))
    complete = ended and not failed and len(done) == len(need)
    fields = {"detail": detail} if detail else {}
    say("sink", ok=complete, written=done, failed=failed, bytes=reader.offset, **fields)


def skip(reader: Opened, n: int) -> None:
    for _ in reader.views(n):
        pass


def record_header(reader: Opened, listed: dict):
    """The next record's header, checked against the launcher's list; None at the end record."""
    mark = reader.take(6)
    if mark[:2] != b"LR":
        raise Forged("not a record stream")
    n = struct.unpack("!I", mark[2:])[0]
    if n > HEADER_MAX:
        raise Forged(f"a record header of {n} bytes (at most {HEADER_MAX})")
    try:
        head = json.loads(reader.take(n))
    except ValueError:
        raise Forged("a record header that is not JSON") from None
    if not isinstance(head, dict):
        raise Forged("a record header that is not an object")
    if head.get("end") is True:
        return None
    path = head.get("path")
    entry = listed.get(path) if isinstance(path, str) else None
    shown = repr(path)[:200]
    if entry is None:
        raise Forged(f"a record for {shown}, a file the launcher did not list: refused", shown)
    start, length = head.get("start"), head.get("length")
    numbers = all(type(x) is int for x in (start, length))
    if not numbers or not 0 <= start <= entry["size"] or length != entry["size"] - start:
        raise Forged(f"a record for {path} with other bounds than the launcher's list", path)
    return head


def receive_file(root: str, head: dict, entry: dict, have: int, reader: Opened) -> str | None:
    """One record into `path.launcher-part` (continuing a partial file from `have`), then into place
    when its sha256 is the launcher's. Returns why it failed, or None."""
    rel = head["path"]
    why = unsafe(root, rel)
    if why is None and head["start"] > have:
        why = f"the record starts at byte {head['start']}, past the {have} bytes this node holds"
    if why is not None:
        skip(reader, head["length"])
        say("file", path=rel, state="failed", detail=why)
        return f"refused: {why}"
    name = os.path.basename(rel)
    digest = hashlib.sha256()
    offset, written, error, f, folder = head["start"], 0, None, None, None
    try:
        folder = open_folder(root, os.path.dirname(os.path.join(root, rel)))
        flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | (0 if have else os.O_TRUNC)
        fd = os.open(name + PART, flags, 0o644, dir_fd=folder)
        f = os.fdopen(fd, "r+b")  # noqa: SIM115 (closed in finish_file)
        if have:
            have = hash_prefix(f, have, digest)
        say("file", path=rel, state="receiving", resumed_at=have)
    except OSError as exc:
        error = str(exc)
    try:
        for view in reader.views(head["length"]):
            skip_bytes = max(0, min(len(view), have - offset))
            if f is not None and skip_bytes < len(view):
                try:
                    f.write(view[skip_bytes:])
                    digest.update(view[skip_bytes:])
                    written += len(view) - skip_bytes
                except OSError as exc:
                    f.close()
                    f, error = None, str(exc)
            offset += len(view)
    except (EOFError, Forged):
        if f is not None:
            f.close()  # what arrived stays in the partial file: the next stage checks it whole, or drops it
        if folder is not None:
            os.close(folder)
        raise
    return finish_file(f, error, (folder, name), entry, digest, written, have)


def open_folder(root: str, folder: str) -> int:
    """The file's directory, opened once (made when missing) and checked to be under the root as
    opened: the part file, its rename and its removal go through this descriptor, so a directory
    swapped for a link after the check leads nowhere else."""
    os.makedirs(folder, exist_ok=True)
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    if not inside(os.path.realpath(root), os.readlink(f"/proc/self/fd/{fd}")):
        os.close(fd)
        raise OSError(f"{folder} leads out of {root} through a link")
    return fd


def hash_prefix(f, have: int, digest) -> int:
    """Hash what a partial file already holds (up to `have` bytes); returns how much that was."""
    left = have
    while left:
        block = f.read(min(CHUNK, left))
        if not block:
            break
        digest.update(block)
        left -= len(block)
    f.seek(have - left)
    f.truncate()
    return have - left


def finish_file(f, error, at: tuple, entry: dict, digest, written: int, have: int):
    rel, (folder, name) = entry["path"], at
    if f is not None:
        f.close()
    try:
        return settle(error, folder, name, rel, entry, digest, written, have)
    finally:
        if folder is not None:
            os.close(folder)


def settle(error, folder, name: str, rel: str, entry: dict, digest, written: int, have: int):
    """The part file renamed into place (within its opened directory) when its sha256 is the launcher's."""
    got = digest.hexdigest()
    if error is None and got != entry["sha256"]:
        error = f"sha256 {got} is not the launcher's {entry['sha256']} (altered on the way?): not kept"
    if error is not None:
        if "sha256" in error:
            try:
                os.unlink(name + PART, dir_fd=folder)
            except (OSError, TypeError):
                pass
        say("file", path=rel, state="failed", detail=error)
        return error
    os.replace(name + PART, name, src_dir_fd=folder, dst_dir_fd=folder)
    say("file", path=rel, state="done", bytes=written, resumed_at=have)
    return None


# -- sources ------------------------------------------------------------------------------------------


def records(root: str, recs: list):
    """The record stream of these files (each from its `start`) as pieces of bytes."""
    for rec in recs:
        why = unsafe_name(rec["path"])
        if why is not None:
            raise OSError(f"{rec['path']!r}: {why}")
        head = {"path": rec["path"], "size": rec["size"], "start": rec["start"], "length": rec["size"] - rec["start"]}
        yield header_bytes(head)
        with open(os.path.join(root, rec["path"]), "rb") as f:
            f.seek(rec["start"])
            left = head["length"]
            while left:
                block = f.read(min(CHUNK, left))
                if not block:
                    raise OSError(f"{rec['path']} is shorter than when it was scanned")
                yield block
                left -= len(block)
    yield header_bytes({"end": True})


def header_bytes(head: dict) -> bytes:
    data = json.dumps(head).encode()
    return b"LR" + struct.pack("!I", len(data)) + data


def emit_into(relay: Relay, source: dict) -> None:
    """This node's own directory as the stream's root: sealed with the run's key."""
    sealer = Sealer(relay.key)
    try:
        for piece in records(source["root"], source["records"]):
            for part in sealer.seal(piece):
                if not relay.ring.write(part):
                    return
        relay.ring.write(sealer.end())
        relay.ring.finish()
        say("received", bytes=relay.ring.end)
    except OSError as exc:
        say("source-failed", detail=str(exc))


def emit(req: dict) -> int:
    out = sys.stdout.buffer
    for piece in records(req["root"], req["records"]):
        out.write(piece)
    out.flush()
    return 0


def main() -> int:
    mode = sys.argv[1] if len(sys.argv) > 1 else ""
    try:
        req = json.loads(sys.stdin.buffer.readline())
    except ValueError:
        say("error", detail="no request from the launcher")
        return 2
    if mode == "emit":
        return emit(req)
    if mode != "relay":
        say("error", detail=f"unknown mode {mode!r}")
        return 2
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=control_lines, args=(lines,), daemon=True).start()
    code = run_relay(req, lines)
    sys.stdout.flush()
    os._exit(code)  # not the interpreter's shutdown: a daemon thread still blocks reading stdin


if __name__ == "__main__":
    sys.exit(main())
