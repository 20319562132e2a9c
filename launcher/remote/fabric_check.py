#!/usr/bin/env python3
"""The launcher's fabric check, run on every node of a deployment at once, in the group's image with the
group's container settings (or in python_env), before any engine starts.

    python3 -c BOOT JOB_JSON     (how the launcher runs it: stdin is the run's token on one line, then this
                                  file; BOOT, in launcher/runtime/fabric.py, reads both and runs this file)
    python3 fabric_check.py --leader ADDR --port P --world N --rank R [--timeout S] [--mb M]   (by hand)

A job has up to two parts:

* ``reach``: the peer ports this node serves and the ones it uses on other nodes. Each served port
  gets a temporary listener on the address its users connect to (never on every interface) where it
  is free (where something already listens, what answers there is
  tried as it is); each used port is connected to, retried until ``window`` seconds (a peer's listener
  may come up a moment later; a dropped packet is waited for, a refusal retried). A listener closes once
  every node expected to connect has connected, else after the window.
* ``rendezvous``: exactly what the engines do: a ``torch.distributed`` TCPStore at the group's leader
  address and dist-init port (rank 0 hosts it), world size = the group's node count, rank = this node's
  rank, then ``init_process_group`` on that store (Gloo; Gloo and NCCL where CUDA is visible). Before
  the process group, each rank records itself in the store (``launcher-fabric/joined/R``) and waits for
  the others, so that a rank that never comes is named, and the waiting side says how long it waited.
  Then an all-reduce of a known tensor, checked element by element, and bandwidth figures: each rank
  sends ``mb`` MiB to the next rank while receiving from the previous (its own link, per node), and an
  all-reduce's bus bandwidth (the group's). On GPUs both run with NCCL on the first visible GPU (the
  IB/RoCE path NCCL picks for it), with Gloo on CPU tensors as well.

torch is imported in a thread while the peer ports are tried. A member that cannot reach the leader's
dist-init port at all (no answer, no route) does not wait further; a leader that saw fewer members
connect than expected still opens the store and tells those that came to stop (``launcher-fabric/abort``).
Everything is bounded: the store and each collective by ``timeout``, the whole program by a watchdog.

A listener believes a node's claim to have reached it (`reach N`) only with the run's token: it greets
with a fresh nonce, and the claim carries HMAC-SHA256(token, "nonce N port"). The token comes on stdin
(never in argv, visible to `ps` and `docker inspect`).

Fail fast: a connection to which nothing at all answers (no accept, no refusal) for ``silence`` seconds is
taken as dropped (a refusal is a node not started yet and is tried again). As soon as this rank's
rendezvous has failed, a line ``@@fabric-fatal JSON`` says so on stdout (the launcher then stops the
group's other ranks rather than let them wait), and ``@@fabric-reach JSON`` gives the peer results as soon
as they are known.

Output: one JSON line on stdout (what torch or NCCL print goes to stderr). Standard library, and torch for
the rendezvous part only: nothing of the launcher, nothing downloaded.
"""

from __future__ import annotations

import argparse
import errno
import hashlib
import hmac
import json
import os
import secrets
import socket
import sys
import threading
import time
from datetime import timedelta
from typing import Any

PREFIX = "launcher-fabric"
GRACE = 1.5  # seconds a listener stays beyond the window, for connections that started late in it
# Seconds a connection waits for a temporary listener's greeting before taking the port for a real
# service's (which waits to be asked): generous, a node importing torch on a busy CPU answers late.
BANNER_WAIT = 3.0
ABORT_WAIT = 5.0  # seconds past the window a member waits for the leader's word on its held connection
ELEMENTS = 4096  # of the checked all-reduce
SILENCE = 3.0  # seconds without any answer (no accept, no refusal) after which a port is taken as dropped
FATAL, REACH = "@@fabric-fatal", "@@fabric-reach"


class State:
    """What the output will say; the watchdog prints it as it stands if time runs out."""

    def __init__(self) -> None:
        self.out: dict[str, Any] = {"ok": False, "phase": "start", "host": socket.gethostname()}
        self.lock = threading.Lock()
        self.printed = False

    def emit(self) -> None:
        with self.lock:
            if not self.printed:
                self.printed = True
                sys.stdout.write(json.dumps(self.out) + "\n")
                sys.stdout.flush()

    def tell(self, mark: str, what: dict[str, Any]) -> None:
        """A line the launcher reads as it comes (before the final answer)."""
        with self.lock:
            if not self.printed:
                sys.stdout.write(f"{mark} {json.dumps(what)}\n")
                sys.stdout.flush()


# -- peer ports --------------------------------------------------------------------------------------


BANNER = b"launcher-fabric-reach"  # a temporary listener's greeting starts so (then a nonce); real services do not


class Denied(Exception):
    """A claim without the run's token."""


def claim_mac(token: str, nonce: str, node: int, port: int) -> str:
    """What proves a claim `reach NODE` to be the run's own: only holders of the run's token can make it."""
    return hmac.new(token.encode(), f"{nonce} {node} {port}".encode(), hashlib.sha256).hexdigest()


class Listener(threading.Thread):
    """A temporary listener on a free port, bound to the address its users connect to. It greets each
    connection with BANNER and a nonce, and records the node the other side claims to be (`reach N MAC`)
    when the claim carries the run's token (else it answers `denied`); it closes once every expected node
    came, or at `until`.

    `hold` (the leader's dist-init port): members keep their connection open; once the listener has
    closed its socket it tells each of them `go` (the port is about to be the TCPStore's) or `abort
    WHY` (some member never came: nobody waits for it)."""

    def __init__(self, port: int, users: list[int], until: float, hold: bool = False, address: str = "",
                 token: str = ""):  # fmt: skip
        super().__init__(daemon=True)
        self.port, self.users, self.until, self.hold = port, set(users), until, hold
        self.address, self.token = address, token
        self.seen: set[int] = set()
        self.denied = 0  # claims without the run's token
        self.held: list[socket.socket] = []
        self.lock = threading.Lock()
        self.state, self.error = "temp", ""
        self.sock: socket.socket | None = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self.sock.bind((address, port))
            self.sock.listen(256)
        except OSError as exc:
            self.sock.close()
            self.sock = None
            # In use: a service (this deployment's, still running) answers there; the users try it as it is.
            self.state = "busy" if exc.errno == errno.EADDRINUSE else "error"
            self.error = f"{address}:{port}: {exc}"
            if exc.errno == errno.EADDRNOTAVAIL:
                self.error = f"{address} is not an address of this node (or of the container's network)"

    @property
    def missing(self) -> list[int]:
        return sorted(self.users - self.seen) if self.state == "temp" else []

    def run(self) -> None:
        if self.sock is None:
            return
        try:
            while self.users - self.seen and time.monotonic() < self.until:
                self.sock.settimeout(max(0.01, min(0.2, self.until - time.monotonic())))
                try:
                    conn, _ = self.sock.accept()
                except (TimeoutError, OSError):
                    continue
                # Greeted at once, each in its own thread: a connection waiting in the backlog while
                # another is served would take the silence for a real service's.
                threading.Thread(target=self._greet, args=(conn,), daemon=True).start()
        finally:
            self.sock.close()
        time.sleep(0.05)  # greetings under way record their node
        with self.lock:
            held, self.held = self.held, []
        word = b"go\n" if not self.missing else f"abort {self.why()}\n".encode()
        for conn in held:
            _tell_and_close(conn, word)

    def why(self) -> str:
        return f"node(s) {', '.join(str(i) for i in self.missing)} never reached the dist-init port {self.port}"

    def _greet(self, conn: socket.socket) -> None:
        # Patient: the other side may be a process busy importing torch (which holds its GIL for seconds).
        conn.settimeout(max(2.0, self.until - time.monotonic()))
        nonce = secrets.token_hex(16)
        try:
            conn.sendall(BANNER + f" {nonce}\n".encode())
            line = conn.makefile("rb").readline(160).decode(errors="replace").split()
            if len(line) == 3 and line[0] == "reach" and line[1].isdigit():
                node, mac = int(line[1]), line[2]
                if not hmac.compare_digest(mac, claim_mac(self.token, nonce, node, self.port)):
                    raise Denied
                with self.lock:
                    self.seen.add(node)
                    if self.hold and self.sock is not None and self.sock.fileno() >= 0:
                        conn.sendall(b"held\n")  # the member now waits on this connection for the word
                        self.held.append(conn)
                        return
            elif line:
                raise Denied
            conn.recv(1)  # the other side closes first: no TIME_WAIT left on this port
        except Denied:
            with self.lock:
                self.denied += 1
            _tell_and_close(conn, b"denied\n")
            return
        except OSError:
            pass
        conn.close()

    def to_json(self) -> dict[str, Any]:
        return {"address": self.address, "port": self.port, "state": self.state, "users": sorted(self.users),
                "seen": sorted(self.seen), "denied": self.denied, "error": self.error}  # fmt: skip


def _tell_and_close(conn: socket.socket, word: bytes) -> None:
    """Send the word, then wait (briefly) for the other side to close first."""
    try:
        conn.settimeout(2.0)
        conn.sendall(word)
        conn.recv(1)
    except OSError:
        pass
    conn.close()


def connect(
    address: str, port: int, until: float, me: int, patience: float | None = None, hold: bool = False,
    token: str = "", silence: float = SILENCE,
) -> dict[str, Any]:  # fmt: skip
    """Try address:port until it answers or `until`; say how it failed the last time. A temporary
    listener (it greets with BANNER and a nonce) is told who came, with the run's token; a real service
    is only connected to.

    `patience`: a refusal is a node that is late (its container started after ours: nothing listens
    yet) and is tried again until then; no answer at all for `silence` seconds (dropped packets: a node
    not started yet refuses, it is not silent), or no route, ends it at once.
    `hold` (a member's connection to its leader's dist-init port): the port must be the leader's
    temporary listener (a silent answer is tried again too), and the connection is kept (as "socket")
    for the listener's word."""
    started = time.monotonic()
    error, kind = "", ""
    answered = False
    late = ("", "refused", "silent") if hold else ("", "refused")
    while time.monotonic() < (patience if patience and kind in late else until):
        try:
            left = max(0.05, (until if time.monotonic() < until else patience or until) - time.monotonic())
            sock = socket.create_connection((address, port), timeout=min(left, silence))
        except socket.gaierror as exc:
            error, kind = f"name not resolved: {exc}", "name"
            break
        except (TimeoutError, socket.timeout):  # noqa: UP041 (Python < 3.10 in older images)
            error, kind = f"no answer in {time.monotonic() - started:.0f} s (packets dropped?)", "timeout"
            break
        except ConnectionRefusedError:
            error, kind = "connection refused", "refused"
            time.sleep(0.1)
            continue
        except OSError as exc:
            unreachable = exc.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH)
            error, kind = (exc.strerror or str(exc)).lower(), ("unreachable" if unreachable else "error")
            time.sleep(0.2)
            continue
        answered = True
        greeting = _banner(sock, BANNER_WAIT).split()
        temp = len(greeting) == 2 and greeting[0] == BANNER
        if temp:
            sock.sendall(f"reach {me} {claim_mac(token, greeting[1].decode(errors='replace'), me, port)}\n".encode())
        result = {"address": address, "port": port, "ok": True, "seconds": round(time.monotonic() - started, 3),
                  "temp": temp}  # fmt: skip
        if hold and temp and _line(sock, max(until, patience or until) + GRACE) == "held":
            return {**result, "socket": sock}
        sock.close()
        if not hold:
            return result
        error, kind = "it answers, but not as the check's listener: does something else listen there?", "silent"
    seconds = round(time.monotonic() - started, 3)
    if answered and not hold:
        return {"address": address, "port": port, "ok": True, "seconds": seconds, "temp": False}
    return {"address": address, "port": port, "ok": False, "error": error, "kind": kind, "seconds": seconds}


def _banner(sock: socket.socket, wait: float) -> bytes:
    """The first line the other side sends within `wait` (b"" from a service that waits to be asked)."""
    sock.settimeout(wait)
    data = b""
    try:
        while len(data) < 80 and not data.endswith(b"\n"):
            chunk = sock.recv(80 - len(data))
            if not chunk:
                break
            data += chunk
    except OSError:
        pass
    return data


def _line(sock: socket.socket, until: float) -> str:
    """One line from the other side, waiting until `until` at most ("" if none)."""
    try:
        sock.settimeout(max(0.1, until - time.monotonic()))
        data = b""
        while not data.endswith(b"\n") and len(data) < 400:
            chunk = sock.recv(1)
            if not chunk:
                break
            data += chunk
        return data.decode(errors="replace").strip()
    except OSError:
        return ""


def leader_word(sock: socket.socket | None, until: float) -> str:
    """A member's held connection to the leader's temporary listener: what it finally says ("go", or
    "abort WHY"); "" if it never says (the leader's program ended: the store phase will tell)."""
    if sock is None:
        return ""
    try:
        return _line(sock, until)
    finally:
        sock.close()


def reach(
    spec: dict[str, Any], base: float, me: int, dist_init: tuple[str, int, int] | None = None, patience: float = 0,
    token: str = "",
) -> tuple[list[Listener], list[dict[str, Any]]]:  # fmt: skip
    """Serve and try the peer ports, within `window` seconds from `base` (listeners a little longer).
    `dist_init` (address, port, rank) of this node's rendezvous: the leader holds its members'
    connections on it, a member keeps its connection for the leader's word (waiting for a late leader
    until `patience`)."""
    window = float(spec.get("window", 10))
    # Listeners wait for nodes that start late as long as those nodes try them (closing once all came).
    until = max(base + window, patience) + GRACE
    leader_port = dist_init[1] if dist_init and dist_init[2] == 0 else None
    listeners = [
        Listener(int(x["port"]), list(x["users"]), until, int(x["port"]) == leader_port, x.get("address", ""), token)
        for x in spec.get("listen", [])
    ]
    silence = float(spec.get("silence", SILENCE))
    for listener in listeners:
        listener.start()
    results: list[dict[str, Any]] = [{} for _ in spec.get("connect", [])]

    def one(k: int, target: dict[str, Any]) -> None:
        address, port = str(target["address"]), int(target["port"])
        hold = dist_init is not None and dist_init[2] > 0 and (address, port) == dist_init[:2]
        results[k] = connect(address, port, base + window, me, max(patience, base + window), hold, token, silence)

    threads = [threading.Thread(target=one, args=(k, t), daemon=True) for k, t in enumerate(spec.get("connect", []))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return listeners, results


# -- the rendezvous ----------------------------------------------------------------------------------


class TorchImport(threading.Thread):
    """`import torch` (seconds of CPU) while the peer ports are tried."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.torch: Any = None
        self.error = ""

    def run(self) -> None:
        try:
            import warnings

            warnings.filterwarnings("ignore", message="Failed to initialize NumPy")  # the check needs no numpy
            import torch
            import torch.distributed  # noqa: F401

            self.torch = torch
        except BaseException as exc:  # an image without torch: said, not raised
            self.error = f"{type(exc).__name__}: {exc}"


def join_store(torch: Any, spec: dict[str, Any], out: dict[str, Any]) -> Any:
    """The TCPStore (rank 0 hosts it), then every rank recorded in it; None when it did not come to that
    (out says why: the leader that never answered, or the ranks that never joined)."""
    dist = torch.distributed
    rank, world, timeout = int(spec["rank"]), int(spec["world"]), float(spec["timeout"])
    began = time.monotonic()
    out["phase"] = "store"
    try:
        store = dist.TCPStore(
            spec["leader"], int(spec["port"]), world, is_master=rank == 0,
            timeout=timedelta(seconds=timeout), wait_for_workers=False,
        )  # fmt: skip
    except Exception as exc:
        out.update(error=_one_line(exc), waited_s=round(time.monotonic() - began, 2))
        return None
    store.set(f"{PREFIX}/joined/{rank}", json.dumps({"host": socket.gethostname(), "time": time.time()}))
    out["phase"] = "join"
    missing = _wait_keys(store, [f"{PREFIX}/joined/{r}" for r in range(world)], began + timeout)
    out["waited_s"] = round(time.monotonic() - began, 2)
    if missing:
        out.update(missing=[int(k.rsplit("/", 1)[1]) for k in missing], error="ranks never joined")
        return None
    return store


def _wait_keys(store: Any, keys: list[str], until: float) -> list[str]:
    """Poll until every key is set or `until`; the keys still missing. A store that went away (its
    leader ended) counts as keys that will never come."""
    left = list(keys)
    while left:
        try:
            left = [k for k in left if not store.check([k])]
        except Exception:
            return left
        if not left or time.monotonic() > until:
            break
        time.sleep(0.05)
    return left


def check_allreduce(torch: Any, spec: dict[str, Any], device: str, out: dict[str, Any], label: str) -> None:
    """An all-reduce of a known tensor on one device ('cpu': Gloo, 'cuda': NCCL), checked element by element."""
    dist = torch.distributed
    rank, world = int(spec["rank"]), int(spec["world"])
    out["phase"] = f"allreduce:{label}"
    t = torch.arange(ELEMENTS, dtype=torch.float64, device=device) + rank * ELEMENTS
    dist.all_reduce(t)
    base = torch.arange(ELEMENTS, dtype=torch.float64, device=device)
    expected = base * world + ELEMENTS * world * (world - 1) / 2
    wrong = int((t != expected).sum().item())
    result = {"ok": wrong == 0, "elements": ELEMENTS, "wrong": wrong, "first": [t[0].item(), expected[0].item()]}
    out.setdefault("allreduce", {})[label] = result
    if wrong:
        raise RuntimeError(f"all-reduce over {label}: {wrong} of {ELEMENTS} elements wrong")


def measure(torch: Any, spec: dict[str, Any], device: str, out: dict[str, Any], label: str) -> None:
    """Bandwidth figures on one device: this rank sending to the next (its own link), and an all-reduce's
    bus bandwidth (the group's)."""
    dist = torch.distributed
    rank, world = int(spec["rank"]), int(spec["world"])
    out["phase"] = f"bandwidth:{label}"
    mb = float(spec["nccl_mb"] if label == "nccl" else spec["gloo_mb"])
    iters = int(spec.get("iters", 3))
    numel = max(1, int(mb * 2**20 / 4))
    data = torch.ones(numel, dtype=torch.float32, device=device)
    figures: dict[str, Any] = {"mb": mb, "iters": iters}
    if world > 1:
        seconds = _timed(torch, device, iters, lambda: _ring(dist, data, rank, world))
        figures["ring_gbps"] = round(mb * 2**20 * iters / seconds / 1e9, 3)
    seconds = _timed(torch, device, iters, lambda: dist.all_reduce(data))
    bus = 2 * (world - 1) / world if world > 1 else 1.0
    figures["allreduce_busbw_gbps"] = round(mb * 2**20 * iters * bus / seconds / 1e9, 3)
    figures["allreduce_ms"] = round(seconds / iters * 1000, 2)
    out.setdefault("bandwidth", {})[label] = figures


def _ring(dist: Any, data: Any, rank: int, world: int) -> None:
    received = data.new_empty(data.shape)
    ops = [dist.P2POp(dist.isend, data, (rank + 1) % world), dist.P2POp(dist.irecv, received, (rank - 1) % world)]
    for request in dist.batch_isend_irecv(ops):
        request.wait()


def _timed(torch: Any, device: str, iters: int, step: Any) -> float:
    step()  # warm-up (connections, buffers)
    _sync(torch, device)
    torch.distributed.barrier()
    began = time.perf_counter()
    for _ in range(iters):
        step()
    _sync(torch, device)
    return max(time.perf_counter() - began, 1e-9)


def _sync(torch: Any, device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def rendezvous(imported: TorchImport, spec: dict[str, Any], out: dict[str, Any]) -> None:
    """Store, join, process group, all-reduce, bandwidth; `out` says how far it got and why not further."""
    began = time.monotonic()
    imported.join()
    out["import_s"] = round(time.monotonic() - began, 2)
    if imported.torch is None:
        out.update(phase="import", error=f"torch does not import with {sys.executable}: {imported.error}")
        return
    torch = imported.torch
    out["torch"] = torch.__version__
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    out["gpus"] = gpus
    out["interface"] = {k: os.environ.get(k) for k in ("GLOO_SOCKET_IFNAME", "NCCL_SOCKET_IFNAME")}
    out["gloo_default"] = _hostname_address()
    store = join_store(torch, spec, out)
    if store is None:
        return
    backend = "cpu:gloo,cuda:nccl" if gpus else "gloo"
    out.update(phase="init", backend=backend)
    timeout = float(spec["timeout"])
    worker = threading.Thread(target=collectives, args=(torch, spec, store, out, gpus), daemon=True)
    worker.start()
    # Gloo connects its full mesh with retries of its own: bounded here, so that a rank stuck on an
    # address nobody can reach says so by the group's timeout.
    worker.join(2 * timeout)
    if worker.is_alive() and out.get("proven"):
        # The ranks met and the all-reduce was right; only the figures took too long (a starved CPU).
        out.update(ok=True, note=f"{out['phase']} did not finish in {2 * timeout:.0f} s: no figure")
    elif worker.is_alive():
        out["error"] = f"{out['phase']} did not finish in {2 * timeout:.0f} s"


def collectives(torch: Any, spec: dict[str, Any], store: Any, out: dict[str, Any], gpus: int) -> None:
    """The process group on the store, the checked all-reduce, the bandwidth figures."""
    dist = torch.distributed
    try:
        if gpus:
            torch.cuda.set_device(0)
        began = time.monotonic()
        dist.init_process_group(
            out["backend"], store=dist.PrefixStore(f"{PREFIX}/pg", store), rank=int(spec["rank"]),
            world_size=int(spec["world"]), timeout=timedelta(seconds=float(spec["timeout"])),
        )  # fmt: skip
        out["init_s"] = round(time.monotonic() - began, 2)
        check_allreduce(torch, spec, "cpu", out, "gloo")
        if gpus:
            check_allreduce(torch, spec, "cuda", out, "nccl")
        out["proven"] = True  # met and computed right: what follows are figures
        measure(torch, spec, "cpu", out, "gloo")
        if gpus:
            measure(torch, spec, "cuda", out, "nccl")
        dist.barrier()
        out.update(phase="done", ok=True)
        dist.destroy_process_group()
    except Exception as exc:
        out["error"] = _one_line(exc)


def _hostname_address() -> str:
    """What Gloo binds to without GLOO_SOCKET_IFNAME: the address this host's name resolves to."""
    name = socket.gethostname()
    try:
        return f"{name} -> {socket.gethostbyname(name)}"
    except OSError as exc:
        return f"{name} -> not resolved ({exc}): Gloo falls back to loopback"


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:600]


# -- the job -------------------------------------------------------------------------------------------


def aligned(job: dict[str, Any], started: float) -> float:
    """Where this node's peer window starts (monotonic). The launcher sends `start_at` (its wall clock, a
    few seconds ahead) and `margin`: every node's window starts then, however late its container
    started within the margin, so a node that started late is not taken for one that cannot connect.
    A node whose clock disagrees gets at most `margin` more, never less than its own start."""
    if job.get("start_at") is None:
        return started
    return started + min(max(float(job["start_at"]) - time.time(), 0.0), float(job.get("margin", 0)))


def run(job: dict[str, Any], state: State) -> None:
    started = time.monotonic()
    out = state.out
    out["started_at"] = round(time.time(), 3)
    base = aligned(job, started)
    spec = job.get("rendezvous")
    window = float(job.get("reach", {}).get("window", 0))
    # Containers start unevenly on a busy machine: a refused port (its owner not started yet) is tried
    # again for `late` seconds, and a member waits for a late leader up to the group's timeout.
    late = float(job.get("reach", {}).get("late", 0))
    member = float(spec["timeout"]) if spec and int(spec["rank"]) > 0 else 0.0
    patience = base + max(late, member) if job.get("reach") else 0.0
    # By then the peer part has answered: the window (or a late leader's), and the leader's word.
    until = max(base, patience) + window + GRACE + ABORT_WAIT
    peers = PeerPart(job, base, until, patience) if job.get("reach") else None  # forked before torch is imported
    watchdog(state, hard_limit(job))  # after the fork: the peer part bounds itself
    imported = TorchImport() if spec else None
    if imported is not None:
        imported.start()
    first: dict[str, Any] = {}
    if peers is not None:
        out["phase"] = "reach"
        first = peers.answer(until + 5)
        out["connect"] = first.get("connect", [])
        if first.get("error"):
            out["error"] = first["error"]
        state.tell(REACH, {"connect": out["connect"]})
    if spec is not None:
        out["rendezvous"] = rdv = {"rank": int(spec["rank"]), "world": int(spec["world"]), "ok": False}
        if first.get("stop"):
            rdv.update(phase="reach", error=first["stop"], aborted=first.get("aborted", False),
                       waited_s=round(time.monotonic() - started, 2))  # fmt: skip
        else:
            rendezvous(imported, spec, rdv)
        rdv["seconds"] = round(time.monotonic() - started, 2)
        if not rdv["ok"]:  # the launcher stops the group's other ranks now, rather than let them wait
            state.tell(FATAL, out)
    if peers is not None:
        out["listen"] = peers.answer(until + 5).get("listen", [])
    out["seconds"] = round(time.monotonic() - started, 2)
    out["ok"] = all(c.get("ok") for c in out.get("connect", [])) and (spec is None or out["rendezvous"]["ok"])
    out["phase"] = "done"


class PeerPart:
    """The peer ports in a process of their own, forked before torch is imported: importing torch holds
    the interpreter's lock for seconds at a time (loading its libraries), which would leave a listener
    unable to greet, or a connection unable to answer, for that long. Two JSON lines come back through a
    pipe: the connections and whether to go on to the store (as soon as that is known), then the
    listeners (once they close)."""

    def __init__(self, job: dict[str, Any], base: float, until: float, patience: float):
        read, write = os.pipe()
        self.pid = os.fork()
        if self.pid == 0:  # the child: no torch, no threads but its own
            os.close(read)
            try:
                with os.fdopen(write, "w") as pipe:
                    peer_part(job, base, until, patience, pipe)
            finally:
                os._exit(0)
        os.close(write)
        self.pipe = os.fdopen(read, "r")

    def answer(self, deadline: float) -> dict[str, Any]:
        """The child's next line, waiting until `deadline` at most."""
        import select

        ready, _, _ = select.select([self.pipe], [], [], max(0.0, deadline - time.monotonic()))
        line = self.pipe.readline() if ready else ""
        if not line:
            return {"error": "the peer part gave no answer in time"}
        return json.loads(line)


def peer_part(job: dict[str, Any], base: float, until: float, patience: float, pipe: Any) -> None:
    spec = job.get("rendezvous")
    dist_init = (str(spec["leader"]), int(spec["port"]), int(spec["rank"])) if spec else None
    listeners, connects = reach(job["reach"], base, int(job.get("node", -1)), dist_init, patience, job.get("token", ""))
    held = next((c.pop("socket") for c in connects if "socket" in c), None)
    stop, aborted = before_store(spec, connects, listeners, held, until) if spec else ("", False)
    pipe.write(json.dumps({"connect": connects, "stop": stop, "aborted": aborted}) + "\n")
    pipe.flush()
    for listener in listeners:
        listener.join()
    pipe.write(json.dumps({"listen": [x.to_json() for x in listeners]}) + "\n")
    pipe.flush()


def before_store(
    spec: dict[str, Any], connects: list[dict[str, Any]], listeners: list[Listener], held: Any, until: float
) -> tuple[str, bool]:
    """Whether to go on to the store: ("", _) yes; (why, aborted) no. The leader stops when members never
    reached its dist-init port (it tells those that did, through their held connections); a member stops
    when the leader said so, or when it never got through to the leader's port (no answer, no route, or
    refused until the group's timeout: a leader that never came)."""
    port = int(spec["port"])
    if int(spec["rank"]) == 0:
        mine = next((x for x in listeners if x.port == port), None)
        if mine is None:
            return "", False
        mine.join()  # it closes once every member came (or at the window's end): the store binds its port
        return (mine.why(), True) if mine.missing else ("", False)
    word = leader_word(held, until)
    if word.startswith("abort"):
        return "the leader stopped: " + word.removeprefix("abort").strip(), True
    c = next((c for c in connects if c["address"] == spec["leader"] and c["port"] == port), None)
    if c is None or c["ok"]:
        return "", False
    return f"cannot reach the leader {spec['leader']}:{port}: {c['error']}", False


def hard_limit(job: dict[str, Any]) -> float:
    """Seconds after which the program stops whatever it is doing, saying where it was."""
    window = float(job.get("reach", {}).get("window", 0))
    timeout = float(job.get("rendezvous", {}).get("timeout", 0))
    return float(job.get("margin", 0)) + 2 * window + GRACE + ABORT_WAIT + 4 * timeout + 30


def watchdog(state: State, seconds: float) -> None:
    def fire() -> None:
        state.out["error"] = f"stopped by its watchdog after {seconds:.0f} s in phase {state.out.get('phase')}"
        rdv = state.out.get("rendezvous")
        if isinstance(rdv, dict) and not rdv.get("error"):
            rdv["error"] = f"stopped after {seconds:.0f} s in phase {rdv.get('phase')}"
        state.emit()
        os._exit(3)

    timer = threading.Timer(seconds, fire)
    timer.daemon = True
    timer.start()


def from_argv(argv: list[str]) -> dict[str, Any]:
    """A job from JOB_JSON, or (by hand) a one-group rendezvous from options."""
    if len(argv) == 1 and argv[0].startswith("{"):
        return json.loads(argv[0])
    cli = argparse.ArgumentParser(description="torch.distributed rendezvous, all-reduce and bandwidth check")
    cli.add_argument("--leader", required=True)
    cli.add_argument("--port", type=int, required=True)
    cli.add_argument("--world", type=int, required=True)
    cli.add_argument("--rank", type=int, required=True)
    cli.add_argument("--timeout", type=float, default=60)
    cli.add_argument("--mb", type=float, default=8, help="bandwidth message size (Gloo), MiB")
    cli.add_argument("--nccl-mb", type=float, default=256)
    cli.add_argument("--iters", type=int, default=3)
    o = cli.parse_args(argv)
    spec = {"leader": o.leader, "port": o.port, "world": o.world, "rank": o.rank, "timeout": o.timeout,
            "gloo_mb": o.mb, "nccl_mb": o.nccl_mb, "iters": o.iters}  # fmt: skip
    return {"rendezvous": spec}


def main(argv: list[str] | None = None) -> int:
    job = from_argv(sys.argv[1:] if argv is None else argv)
    # The run's token: the launcher's bootstrap read it from stdin, ahead of this file.
    job["token"] = str(globals().get("FABRIC_TOKEN", ""))
    state = State()
    try:
        run(job, state)
    except Exception as exc:
        state.out["error"] = _one_line(exc)
    state.emit()
    return 0 if state.out.get("ok") else 1


if __name__ == "__main__":
    # os._exit: a process group's threads (Gloo's, NCCL's watchdog) never hold the exit up.
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
