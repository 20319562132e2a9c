"""The node's relay (launcher/remote/relay.py, the real program, started as the launcher starts it) facing
a hostile upstream on loopback: the attacker here speaks the relay's own protocol. A relay keeps only
what the launcher listed over its SSH session (path, size, sha256), whatever the stream says; takes
the stream only from the upstream the launcher named, after it proved the run's key; and stays bounded
(header size, connections, handshake time, memory) whatever arrives."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import threading
import time
from pathlib import Path

from launcher.config.schema import SSHSettings
from launcher.operations import ship
from launcher.plan.types import Node
from launcher.remote import relay as remote
from launcher.remote import relay_core
from launcher.transport.host import Options
from launcher.transport.local import LocalHost

MB = 1 << 20
REPO = Path(__file__).resolve().parents[2]


class Started:
    """One relay program, as `launcher stage` starts it on a node (its stdin: the launcher's lines)."""

    def __init__(self, sink: dict, **hello):
        host = LocalHost(Node(0, "n0", "127.0.0.1", SSHSettings(), 0), Options())
        self.key = os.urandom(32)
        self.proc = host.start(ship.relay_script(None, "relay"))
        hello = {"op": "hello", "key": self.key.hex(), "id": "n0", "listen": "127.0.0.1", "sink": sink,
                 "ring": 16 * MB, "keep": 12 * MB, **hello}  # fmt: skip
        self.proc.write(ship.program() + json.dumps(hello).encode() + b"\n")
        first = json.loads(self.proc.readline(60) or "{}")
        assert first.get("ev") == "listening", (first, self.proc.stderr)
        self.port = first["port"]
        self.events: list[dict] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        while line := self.proc.readline():
            self.events.append(json.loads(line))

    def say(self, **msg) -> None:
        self.proc.write(json.dumps(msg).encode() + b"\n")

    def event(self, ev: str, timeout: float = 30, **match) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for e in list(self.events):
                if e.get("ev") == ev and all(e.get(k) == v for k, v in match.items()):
                    return e
            self.say(op="ping")
            time.sleep(0.05)
        raise AssertionError(f"no {ev} {match} in {timeout}s: {self.events[-20:]} {self.proc.stderr}")

    def rss_mb(self) -> float:
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:"))) / 1024

    def close(self) -> None:
        try:
            self.say(op="exit")
        except OSError:
            pass
        self.proc.kill()


def connect(node: Started, frm: str = "up", key: bytes | None = None) -> socket.socket:
    """An upstream's connection, through the relay's own handshake (proving `key`, the run's by default)."""
    sock = socket.create_connection(("127.0.0.1", node.port), timeout=10)
    relay_core.prove_to(sock, node.key if key is None else key, frm, "n0", time.monotonic() + 10)
    return sock


def send(sock: socket.socket, data: bytes) -> None:
    """Link frames (as a relay passes the stream on), then the link's end."""
    for at in range(0, len(data), MB):
        sock.sendall(remote.FRAME.pack(len(data[at : at + MB])) + data[at : at + MB])
    sock.sendall(remote.FRAME.pack(0))


def sealed(key: bytes, *pieces: bytes, end: bool = True) -> bytes:
    sealer = remote.Sealer(key)
    out = b"".join(bytes(p) for piece in pieces for p in sealer.seal(piece))
    return out + (sealer.end() if end else b"")


def record(path: str, body: bytes, **head) -> bytes:
    fields = {"path": path, "size": len(body), "start": 0, "length": len(body), **head}
    return remote.header_bytes(fields) + body


END = remote.header_bytes({"end": True})


def listed(files: dict[str, bytes]) -> list[dict]:
    return [{"path": p, "size": len(b), "sha256": hashlib.sha256(b).hexdigest()} for p, b in files.items()]


def dir_sink(root: Path, files: dict[str, bytes]) -> dict:
    return {"kind": "dir", "root": str(root), "files": listed(files), "need": dict.fromkeys(files, 0), "complete": []}


def doctor(root: Path) -> str:
    program = REPO / "launcher" / "remote" / "manifest.py"
    return subprocess.run(
        ["python3", str(program), "check", str(root), "M"], capture_output=True, text=True, timeout=60
    ).stdout.strip()


def test_altered_weights_from_an_upstream_that_holds_the_key_are_not_kept(tmp_path):
    """A compromised node (it holds the run's key) sends other bytes of the same size, its header naming
    their own sha256: the node keeps nothing under that name, says which file and both hashes, and its
    manifest does not call the file verified (doctor fails it). The honest file beside it is kept."""
    good, altered = os.urandom(3 * MB), os.urandom(3 * MB)
    files = {"config.json": b'{"layers": 2}\n', "model.safetensors": good}
    node = Started(dir_sink(tmp_path / "w", files), upstream="up")
    try:
        sock = connect(node)
        forged = record("model.safetensors", altered, sha256=hashlib.sha256(altered).hexdigest())
        send(sock, sealed(node.key, record("config.json", files["config.json"]), forged, END))
        sink = node.event("sink")
    finally:
        node.close()
    assert sink["ok"] is False and sink["written"] == ["config.json"]
    why = sink["failed"]["model.safetensors"]
    assert hashlib.sha256(altered).hexdigest() in why and hashlib.sha256(good).hexdigest() in why, why
    assert (tmp_path / "w" / "config.json").read_bytes() == files["config.json"]
    assert not (tmp_path / "w" / "model.safetensors").exists()
    assert not (tmp_path / "w" / "model.safetensors.launcher-part").exists()
    manifest = json.loads((tmp_path / "w" / ".launcher-manifest").read_text())
    assert set(manifest["verified"]) == {"config.json"}
    assert doctor(tmp_path / "w") == f"M model fail {tmp_path / 'w'}: missing model.safetensors"


def test_paths_that_leave_the_root_are_refused(tmp_path):
    """`../escaped.txt` (not listed), and a listed file under a directory that a link on the node turns
    to the outside: neither is written; the files listed and safe are."""
    root, outside = tmp_path / "w", tmp_path / "outside"
    (root).mkdir()
    outside.mkdir()
    (root / "sub").symlink_to(outside)
    files = {"config.json": b"{}\n", "sub/x.bin": os.urandom(1000)}
    node = Started(dir_sink(root, files), upstream="up")
    try:
        stream = [record(p, b) for p, b in files.items()] + [record("../escaped.txt", b"pwned\n"), END]
        send(connect(node), sealed(node.key, *stream))
        sink = node.event("sink")
    finally:
        node.close()
    assert sink["ok"] is False and sink["written"] == ["config.json"]
    assert "leads out of" in sink["failed"]["sub/x.bin"], sink
    assert "'../escaped.txt', a file the launcher did not list" in sink["failed"]["'../escaped.txt'"], sink
    assert list(outside.iterdir()) == [] and not (tmp_path / "escaped.txt").exists()
    assert (root / "config.json").read_bytes() == b"{}\n"


def test_only_the_named_upstream_that_proves_the_key_is_taken_and_the_launcher_alone_changes_it(tmp_path):
    """The token once travelled in clear and any connection presenting it replaced the upstream
    mid-stream. Now: a wrong key, another name, the old token line: refused, the stream goes on; the
    launcher's `upstream` line alone moves it (the new one resumes, the old one is cut off)."""
    body = os.urandom(6 * MB)
    node = Started(dir_sink(tmp_path / "w", {"model.bin": body}), upstream="up", handshake=2)
    try:
        stream = sealed(node.key, record("model.bin", body), END)
        first = connect(node)
        half = len(stream) // 2
        first.sendall(remote.FRAME.pack(half) + stream[:half])
        node.event("progress", received=half)
        try:
            connect(node, key=os.urandom(32))
            raise AssertionError("a connection without the key was taken")
        except (ConnectionError, OSError):
            pass
        node.event("refused", detail="up did not prove it holds the run's key")
        try:
            connect(node, frm="other")
            raise AssertionError("a connection the launcher did not name was taken")
        except ConnectionError as exc:
            assert "not the upstream the launcher named" in str(exc)
        with socket.create_connection(("127.0.0.1", node.port), timeout=10) as old_style:
            old_style.sendall(b"0123456789abcdef0123456789abcdef\n")  # the token, as it was
            assert old_style.recv(100) == b""
        assert sum(e["ev"] == "upstream" for e in node.events) == 1
        node.say(op="upstream", id="second")  # the launcher re-routes: the second takes over, the first is cut off
        second = socket.create_connection(("127.0.0.1", node.port), timeout=10)
        position = relay_core.prove_to(second, node.key, "second", "n0", time.monotonic() + 10)
        assert position == half
        deadline = time.monotonic() + 10
        while first.recv(65536) and time.monotonic() < deadline:
            pass
        assert time.monotonic() < deadline, "the first upstream was not cut off"
        send(second, stream[position:])
        sink = node.event("sink")
    finally:
        node.close()
    assert sink["ok"] is True and sink["written"] == ["model.bin"], sink
    assert (tmp_path / "w" / "model.bin").read_bytes() == body


def test_an_oversized_header_is_refused_at_once_and_memory_stays_bounded(tmp_path):
    """A header length of 4 GiB was trusted and built up by repeated copying (hundreds of MB and
    growing). Now it is refused before a byte of it is held, while the attacker still sends."""
    node = Started(dir_sink(tmp_path / "w", {"model.bin": b"x"}), upstream="up")
    stop = threading.Event()
    try:
        sock = connect(node)
        junk = os.urandom(MB)
        sealer = remote.Sealer(node.key)

        def flood() -> None:  # a header that claims 4 GiB, then its "bytes", until refused (or 400 MB)
            try:
                for i in range(401):
                    if stop.is_set():
                        return
                    data = b"LR" + remote.FRAME.pack(0xFFFFFFFF) if i == 0 else junk
                    piece = b"".join(bytes(p) for p in sealer.seal(data))
                    sock.sendall(remote.FRAME.pack(len(piece)) + piece)
            except OSError:
                pass

        threading.Thread(target=flood, daemon=True).start()
        sink = node.event("sink", timeout=20)
        peak = node.rss_mb()
    finally:
        stop.set()
        node.close()
    assert sink["ok"] is False and sink["detail"] == "a record header of 4294967295 bytes (at most 65536)", sink
    assert peak < 150, f"the relay holds {peak:.0f} MB"
    assert not (tmp_path / "w" / "model.bin").exists()


def test_slow_loris_connections_are_capped_and_cut_off_and_the_stream_still_arrives(tmp_path):
    """Connections that never finish the handshake once held a thread each, without end. Now: a few at
    most (the rest closed at once), each cut off at the handshake's deadline even while it trickles."""
    body = os.urandom(MB)
    node = Started(dir_sink(tmp_path / "w", {"model.bin": body}), upstream="up", handshake=2)
    try:
        lorises = [socket.create_connection(("127.0.0.1", node.port), timeout=10) for _ in range(remote.MAX_CONNS)]
        extra = socket.create_connection(("127.0.0.1", node.port), timeout=10)
        assert extra.recv(10) == b"", "a connection beyond the cap was kept"
        node.event("refused", detail=f"{remote.MAX_CONNS} connections already")
        began = time.monotonic()
        try:
            for _ in range(40):  # one trickles a byte every 0.25 s: the deadline is for the whole line
                lorises[0].sendall(b"L")
                time.sleep(0.25)
        except OSError:
            pass  # cut off
        cut = time.monotonic() - began
        for loris in lorises:
            loris.settimeout(10)
            try:
                assert loris.recv(10) == b"", "a connection that never proved itself was kept"
            except ConnectionResetError:
                pass
        assert cut < 6, f"the trickling connection was kept {cut:.1f}s (the handshake's bound: 2 s)"
        send(connect(node), sealed(node.key, record("model.bin", body), END))
        sink = node.event("sink")
    finally:
        node.close()
    assert sink["ok"] is True and (tmp_path / "w" / "model.bin").read_bytes() == body


def test_a_link_planted_at_the_manifest_s_temporary_name_is_not_followed(tmp_path):
    """A link at `.launcher-manifest.tmp` (planted by another local user, or shipped inside a model
    directory) once had the manifest written through it: the file it names, anywhere the relay's user
    may write, truncated and overwritten. Now the link itself is replaced; its target stays as it was."""
    root, victim = tmp_path / "w", tmp_path / "authorized_keys"
    root.mkdir()
    victim.write_text("ssh-ed25519 AAAA operator\n")
    (root / ".launcher-manifest.tmp").symlink_to(victim)
    files = {"config.json": b"{}\n"}
    node = Started(dir_sink(root, files), upstream="up")
    try:
        send(connect(node), sealed(node.key, record("config.json", files["config.json"]), END))
        sink = node.event("sink")
    finally:
        node.close()
    assert sink["ok"] is True, sink
    assert victim.read_text() == "ssh-ed25519 AAAA operator\n"
    assert json.loads((root / ".launcher-manifest").read_text())["verified"].keys() == {"config.json"}
    assert not (root / ".launcher-manifest.tmp").exists()


def test_a_directory_swapped_for_a_link_while_its_file_arrives_does_not_move_the_rename(tmp_path):
    """The checks looked at the path once, at the record's start; the rename went by path at its end.
    A local user who swapped `sub` for a link to their own directory meanwhile had their own
    `x.bin.launcher-part` renamed into place there, reported `done`, and `w/sub/x.bin` (through the
    link) held their bytes with the manifest calling it verified. Now the part file, its rename and its
    removal go through the directory as it was opened: the right bytes land there, nothing outside moves."""
    root, outside = tmp_path / "w", tmp_path / "outside"
    (root / "sub").mkdir(parents=True)
    outside.mkdir()
    planted = outside / "x.bin.launcher-part"
    planted.write_bytes(b"the attacker's bytes\n")
    body = os.urandom(3 * MB)
    node = Started(dir_sink(root, {"sub/x.bin": body}), upstream="up")
    try:
        sock = connect(node)
        stream = sealed(node.key, record("sub/x.bin", body), END)
        sock.sendall(remote.FRAME.pack(2 * MB) + stream[: 2 * MB])  # the first sealed frame, whole
        node.event("file", state="receiving")
        (root / "sub").rename(root / "moved")
        (root / "sub").symlink_to(outside)
        sock.sendall(remote.FRAME.pack(len(stream) - 2 * MB) + stream[2 * MB :] + remote.FRAME.pack(0))
        sink = node.event("sink")
    finally:
        node.close()
    assert planted.read_bytes() == b"the attacker's bytes\n" and not (outside / "x.bin").exists()
    assert sink["written"] == ["sub/x.bin"], sink
    assert (root / "moved" / "x.bin").read_bytes() == body
