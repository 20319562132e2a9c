"""The relay's record parser (remote/relay.py receive_all: what a node does with a stream's records)
under a bounded fuzz: hypothesis, fixed seed, 200 examples, a deadline each, in a subprocess whose
address space is capped (RLIMIT_AS) and whose allocations are traced (each example's peak bounded).
Whatever the records say (paths out of the root, sizes of 2**40, headers claiming 4 GiB, altered
bytes, a stream cut anywhere, frames not sealed with the key): nothing escapes the parser, nothing is
written outside the root, and every file kept holds the launcher's sha256."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import tracemalloc
from pathlib import Path

from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from launcher.remote import relay as remote

REPO = Path(__file__).resolve().parents[2]
KEY = b"k" * 32
BODIES = {"a.bin": bytes(range(256)) * 8, "d/b.bin": b"0123456789"}
LISTED = [{"path": p, "size": len(b), "sha256": hashlib.sha256(b).hexdigest()} for p, b in BODIES.items()]
PATHS = [*BODIES, "../x", "/abs", "d/../../x", "a\x00b", "", ".", "d//b.bin", ".launcher-manifest", "a.launcher-part"]
PEAK = 16 << 20  # bytes one example may allocate at its peak (a header is at most 64 KiB, a frame 1 MiB)


class Held:
    """A stream held in memory, read as a sink reads its ring (peek, advance, pos)."""

    def __init__(self, data: bytes):
        self.data, self.pos = memoryview(data), 0

    def peek(self, at: int, n: int) -> list:
        view = self.data[self.pos + at : self.pos + at + n]
        if len(view) < n:
            raise EOFError("the stream ended inside a record")
        return [view] if n else []

    def advance(self, n: int) -> None:
        self.pos += n


numbers = st.one_of(st.integers(-3, 3000), st.just(2**40), st.none(), st.text(max_size=3))


def rarely(draw, one_in: int) -> bool:
    """True about once in `one_in` draws (hypothesis favours 0 and the bounds: spread them first)."""
    return ((draw(st.integers(0, 1 << 16)) * 40503 + 1) & 0xFFFF) % one_in == 0


@st.composite
def records(draw) -> bytes:
    """A record: most often an honest one; else its path, numbers, body or header length hostile."""
    path = draw(st.sampled_from(list(BODIES))) if not rarely(draw, 3) else draw(st.sampled_from(PATHS) | st.text())
    right = BODIES.get(path, b"")
    body = right if not rarely(draw, 3) else draw(st.binary(max_size=3000) | st.just(bytes(len(right))))
    head = {"path": path, "size": len(right), "start": 0, "length": len(body)}
    if rarely(draw, 3):
        for field in draw(st.sets(st.sampled_from(["size", "start", "length", "path"]), min_size=1)):
            head[field] = draw(numbers)
    data = remote.header_bytes(head)
    if rarely(draw, 6):  # a header length that lies (up to 4 GiB)
        data = b"LR" + remote.FRAME.pack(draw(st.integers(0, 2**32 - 1))) + data[6:]
    return data + body


@st.composite
def streams(draw) -> bytes:
    """Records sealed with the run's key, most often whole; else cut, unsealed, another key, a flipped bit."""
    payload = b"".join(draw(st.lists(records(), min_size=1, max_size=4)))
    if not rarely(draw, 5):
        payload += remote.header_bytes({"end": True})
    if rarely(draw, 5):
        payload = payload[: draw(st.integers(0, len(payload)))]
    if rarely(draw, 10):
        return draw(st.binary(max_size=2000))  # not sealed at all
    sealer = remote.Sealer(KEY if not rarely(draw, 10) else b"other key")
    frames = b"".join(bytes(p) for p in sealer.seal(payload)) + (sealer.end() if not rarely(draw, 5) else b"")
    if frames and rarely(draw, 5):  # one bit flipped on the way
        at = draw(st.integers(0, len(frames) - 1))
        frames = frames[:at] + bytes([frames[at] ^ 1]) + frames[at + 1 :]
    return frames


@seed(20260524)
@settings(max_examples=200, deadline=2000, database=None, suppress_health_check=list(HealthCheck))
@given(streams())
def fuzz_record_parser(stream: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "w"
        root.mkdir()
        sink = {"root": str(root), "files": LISTED, "need": dict.fromkeys(BODIES, 0), "complete": []}
        tracemalloc.reset_peak()
        before = tracemalloc.get_traced_memory()[0]
        remote.receive_all(sink, remote.Opened(Held(stream), KEY))
        grew = tracemalloc.get_traced_memory()[1] - before
        assert grew < PEAK, f"the parser held {grew} bytes at its peak"
        assert os.listdir(tmp) == ["w"], os.listdir(tmp)  # nothing beside the root
        for here, _, names in os.walk(root):
            for name in names:
                rel = os.path.relpath(os.path.join(here, name), root)
                if name.startswith(".launcher-") or name.endswith(".launcher-part"):
                    continue
                assert rel in BODIES and (root / rel).read_bytes() == BODIES[rel], rel


def test_the_record_parser_under_a_bounded_fuzz():
    code = (
        "import resource, sys, tracemalloc;"
        "resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30));"
        "tracemalloc.start();"
        "from tests.pure.test_relay_fuzz import fuzz_record_parser;"
        "fuzz_record_parser()"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=600,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert proc.stdout.count('"ev": "sink"') == 200, proc.stdout[-2000:]  # every example reached the end
    kept = proc.stdout.count('"state": "done"')
    refused = proc.stdout.count('"ok": false')
    assert kept > 20 and refused > 50, (kept, refused)  # the fuzz reached both the honest and the hostile
