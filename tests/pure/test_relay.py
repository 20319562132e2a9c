"""The relay (launcher/transport/relay.py with launcher/remote/relay.py) on this machine: real relay
processes, real TCP between them, sinks that are real commands. One stream reaches every hop intact, a
hop dying mid-way is named and the hops after it still get every byte, a silent (stopped) relay is
found and routed around, a broken source stops everything, Ctrl-C stops every relay."""

from __future__ import annotations

import _thread
import hashlib
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from launcher.config.schema import SSHSettings
from launcher.operations import ship
from launcher.plan.types import Node
from launcher.remote import relay as remote
from launcher.transport.host import Options
from launcher.transport.local import LocalHost
from launcher.transport.relay import ROOT, Feed, Hop, Relay, RelayInterrupted, Timing

MB = 1 << 20
# Rings small enough that a 64 MB stream wraps them, keeping what production's RING/KEEP keep: KEEP
# covers RING - KEEP plus what two links hold in flight (a node re-routed past a stopped one resumes).
SMALL = {"ring": 24 * MB, "keep": 20 * MB}


def stream(total_mb: int, fail_at: int | None = None, gate: tuple[int, threading.Event] | None = None):
    """`gate` (MB, event): the source holds its MB-th megabyte until the event is set (at most 60 s), so a
    fault injected mid-way lands mid-way however fast or slow the machine is."""
    block = bytes(range(256)) * 4096  # 1 MB
    for i in range(total_mb):
        if fail_at is not None and i == fail_at:
            raise OSError("the engine went away")
        if gate is not None and i == gate[0]:
            assert gate[1].wait(60), "the fault was never injected"
        yield block[i % 251 :] + block[: i % 251]


def digest(total_mb: int) -> str:
    h = hashlib.sha256()
    for piece in stream(total_mb):
        h.update(piece)
    return h.hexdigest()


def hops(tmp_path: Path, n: int, **hello) -> list[Hop]:
    out = []
    for i in range(n):
        host = LocalHost(Node(i, f"n{i}", "127.0.0.1", SSHSettings(), 0), Options())
        sink = {"kind": "cmd", "argv": ["sh", "-c", f"sha256sum > {tmp_path}/sum{i}"]}
        out.append(Hop(f"n{i}", host, {"sink": sink, **SMALL, **hello}))
    return out


def received(tmp_path: Path, i: int) -> str:
    text = (tmp_path / f"sum{i}").read_text() if (tmp_path / f"sum{i}").exists() else ""
    return (text.split() or [""])[0]


def relay(hs: list[Hop], total_mb: int, *, fail_at: int | None = None, gate=None, **kw) -> Relay:
    events: list[str] = []
    feed = Feed(lambda: stream(total_mb, fail_at, gate), SMALL["ring"], SMALL["keep"])
    r = Relay(
        hs, ship.relay_script(None, "relay"), ship.program(), feed,
        on_event=events.append, **kw,
    )  # fmt: skip
    r.lines = events  # type: ignore[attr-defined]
    return r


def when(condition, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.02)


def test_every_hop_of_a_chain_gets_every_byte(tmp_path):
    hs = hops(tmp_path, 4)
    result = relay(hs, 64).run()
    assert [h.state for h in result.values()] == ["finished"] * 4
    assert [h.parent for h in hs] == [ROOT, "n0", "n1", "n2"]  # a chain: ONE stream leaves the root
    for i in range(4):
        assert received(tmp_path, i) == digest(64)
        assert result[f"n{i}"].sink["ok"] and result[f"n{i}"].sink["bytes"] == 64 * MB


def test_a_tree_with_fanout_two(tmp_path):
    hs = hops(tmp_path, 5)
    r = relay(hs, 32, fanout=2)
    result = r.run()
    assert [h.parent for h in hs] == [ROOT, "n0", "n0", "n1", "n1"], (r.lines, [(h.state, h.detail) for h in hs])
    assert all(h.state == "finished" for h in result.values())
    assert {received(tmp_path, i) for i in range(5)} == {digest(32)}


def test_a_hop_dying_mid_way_is_named_and_the_ones_after_it_get_every_byte(tmp_path):
    hs = hops(tmp_path, 4)
    injected = threading.Event()
    r = relay(hs, 96, timing=Timing(stall=30), gate=(40, injected))

    def kill_n1() -> None:
        when(lambda: hs[1].received > 20 * MB)
        hs[1].proc.kill()
        when(lambda: hs[2].parent == "n0")
        injected.set()

    threading.Thread(target=kill_n1, daemon=True).start()
    result = r.run()
    assert result["n1"].state == "failed" and result["n1"].cause == "relay", result["n1"]
    assert any("n2" in line and "re-routed around" in line and "n1" in line for line in r.lines), r.lines
    assert hs[2].parent == "n0"  # its new upstream: n1's
    for i in (0, 2, 3):
        assert result[f"n{i}"].state == "finished"
        assert received(tmp_path, i) == digest(96), f"n{i} got a damaged stream"


def test_a_silent_relay_is_found_and_routed_around(tmp_path):
    hs = hops(tmp_path, 3)
    injected = threading.Event()
    r = relay(hs, 96, timing=Timing(silence=1, alive=1, wedged=3, ping=0.5), gate=(40, injected))
    stopped: list[int] = []

    def stop_n1() -> None:
        when(lambda: hs[1].received > 20 * MB)
        pid = hs[1].proc.pid
        os.killpg(pid, signal.SIGSTOP)  # still there, says nothing: as wedged as a relay gets
        stopped.append(pid)
        when(lambda: hs[2].parent == "n0")  # the source waits until n2 is re-routed, within n0's kept bytes
        injected.set()

    threading.Thread(target=stop_n1, daemon=True).start()
    try:
        result = r.run()
    finally:
        for pid in stopped:
            os.killpg(pid, signal.SIGCONT)
    assert result["n1"].state == "failed" and "said nothing" in result["n1"].detail
    assert result["n2"].state == "finished" and received(tmp_path, 2) == digest(96), (result["n2"], r.lines)
    assert received(tmp_path, 0) == digest(96)


def test_a_broken_source_stops_every_hop(tmp_path):
    hs = hops(tmp_path, 3)
    r = relay(hs, 64, fail_at=20)
    result = r.run()
    assert {h.cause for h in result.values()} == {"source"}
    assert all("the engine went away" in h.detail for h in result.values())
    assert any("the source failed" in line for line in r.lines)
    for i in range(3):  # no sink saw a whole stream
        assert received(tmp_path, i) != digest(64)


def test_ctrl_c_stops_every_relay(tmp_path):
    hs = hops(tmp_path, 3)
    r = relay(hs, 10_000)  # far more than it will move

    def interrupt() -> None:
        when(lambda: hs[2].received > 10 * MB)
        _thread.interrupt_main()

    threading.Thread(target=interrupt, daemon=True).start()
    with pytest.raises(RelayInterrupted) as stopped:
        r.run()
    assert {h.state for h in stopped.value.hops.values()} == {"aborted"}
    for h in hs:
        assert h.proc.wait(10) is not None, f"{h.key}'s relay still runs"


def test_the_ring_keeps_what_a_resumed_reader_needs():
    ring = remote.Ring(cap=100, keep=60)
    ring.detach("hold")
    assert ring.attach("a", 0, 60)
    assert ring.write(b"x" * 40)
    assert ring.read("a", 0, 100) == b"x" * 40
    wrote = threading.Event()
    threading.Thread(target=lambda: (ring.write(b"y" * 10), wrote.set()), daemon=True).start()
    # 40 + 10 > 100 - 60 bytes ahead of reader "a" (at 0): the writer waits for it
    assert not wrote.wait(0.3)
    ring.advance("a", 40)
    assert wrote.wait(5)
    assert ring.held_from() == 0 and ring.end == 50
    ring.detach("a")
    ring.write(b"z" * 90)  # now the ring wraps: bytes before 40 are gone
    assert ring.held_from() == 40
    assert not ring.attach("late", 39, 60) and ring.attach("late", 40, 60)
    got = b""
    pos = 40
    while pos < ring.end:
        view = ring.read("late", pos, 100)
        got += bytes(view)
        pos += len(view)
    assert got == b"y" * 10 + b"z" * 90


def test_the_first_bytes_wait_for_the_first_reader():
    ring = remote.Ring(cap=100, keep=60)
    wrote = threading.Event()
    threading.Thread(target=lambda: (ring.write(b"x" * 150), wrote.set()), daemon=True).start()
    assert not wrote.wait(0.3) and ring.end == 100  # "hold": nobody took byte 0 yet
    assert ring.attach("first", 0, 60)
    ring.detach("hold")
    assert ring.read("first", 0, 100) == b"x" * 100


def test_ask_gives_up_at_its_bound_even_while_the_program_chatters(tmp_path):
    """A scan that keeps talking but never answers (a stuck disk) once held `stage` forever: the bound
    holds whatever comes. Here the program streams millions of lines that are not the answer."""
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "lines").write_bytes(b"\n" * 20_000_000)
    host = LocalHost(Node(0, "here", "127.0.0.1", SSHSettings(), 0), Options())
    with pytest.raises(TimeoutError, match="no answer in 1s"):
        records = [{"path": "lines", "size": 20_000_000, "start": 0}]
        ship.ask(host, None, "emit", {"root": str(tmp_path / "src"), "records": records}, timeout=1)
