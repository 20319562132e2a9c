"""Small helpers shared by the unit tests (no servers)."""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import shlex
import socket
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path
from typing import NamedTuple

import pytest

from launcher import cli

REPO = Path(__file__).resolve().parent.parent
CONFIGS = REPO / "configs"
# The fixed ports of configs/local.yaml (etcd client/peer, NATS, its monitor, the mockers' system
# ports, the prefill bootstrap port): a user's quickstart holds them, so no test ever uses them (see
# local_stack); all must be free again after `down`.
LOCAL_PORTS = (12379, 12380, 14222, 18222, 19090, 19091, 13001)
# This checkout's own id (a short hash of its path): its test runs keep their names, state and ports apart
# from another checkout's on the same machine.
CHECKOUT_ID = hashlib.sha256(str(REPO).encode()).hexdigest()[:8]
# The suite runs in several processes (pytest-xdist workers gw0, gw1, ...; tests/conftest.py): each has its
# own testbed, state directory and ports. gw0, like a run in one process, keeps the checkout's own names.
WORKER = os.environ.get("PYTEST_XDIST_WORKER", "")
RUN = "" if WORKER in ("", "gw0") else WORKER


def suite_chosen() -> set[str]:
    """The names the suite chose itself (conftest), not the user: a worker inherits them from the process
    that started it and chooses its own instead."""
    return set(filter(None, os.environ.get("LAUNCHER_TEST_SUITE_NAMES", "").split(",")))


def user_set(key: str) -> str | None:
    """The environment's KEY when the user set it (not the suite on their behalf), else None."""
    return None if key in suite_chosen() else os.environ.get(key) or None


# configs/testbed-*.yaml keep their state here (testbed nodes share this machine's /var/tmp): this
# checkout's (and test process's) own directory, never the /var/tmp/launcher a real deployment uses
# (conftest exports it).
STATE_DIR = user_set("TESTBED_STATE_DIR") or f"/var/tmp/launcher-test-{CHECKOUT_ID}{'-' + RUN if RUN else ''}"
# Test ports come from a block of this range that one test process holds (a lock file per block): below
# the kernel's ephemeral ports (32768 and up, where outgoing connections take theirs) and below 32768,
# since Dynamo keeps system ports in 16 signed bits; above configs/local.yaml's fixed ports.
PORT_RANGE = (20000, 32000)
PORT_BLOCK = 1000
# Only the block's first PORTS_HANDED are handed out: a deployment's replica K listens on its group's ports
# + K x 100 (REPLICA_PORT_STEP), which must stay in this process's block too (with a block of 200 handed out
# whole, `scale decode=3`'s replica 2 once landed on another process's port, answered by its service).
PORTS_HANDED = 100


class _PortBlock:
    """PORT_BLOCK ports that only this process hands out: the first block, from one derived from the
    checkout on, whose lock file no other process holds (the lock lasts as long as this process)."""

    def __init__(self) -> None:
        blocks = (PORT_RANGE[1] - PORT_RANGE[0]) // PORT_BLOCK
        first = int(CHECKOUT_ID, 16) % blocks
        locks = Path(tempfile.gettempdir()) / "launcher-test-ports"
        locks.mkdir(mode=0o1777, exist_ok=True)
        for k in range(blocks):
            block = (first + k) % blocks
            fd = os.open(locks / f"{block}.lock", os.O_CREAT | os.O_RDWR, 0o666)  # not inherited (O_CLOEXEC)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            self.fd, self.base, self.handed = fd, PORT_RANGE[0] + block * PORT_BLOCK, 0
            return
        raise AssertionError(f"every test port block of {PORT_RANGE} is held by another process")

    def take(self) -> int:
        """The next port of the block's first PORTS_HANDED that nothing listens on (nor holds bound), never
        the same one twice in a row of PORTS_HANDED."""
        for _ in range(PORTS_HANDED):
            port = self.base + self.handed % PORTS_HANDED
            self.handed += 1
            if bindable(port):
                return port
        raise AssertionError(f"no free port in {self.base}-{self.base + PORTS_HANDED - 1}")


_ports: list[_PortBlock] = []


def bindable(port: int) -> bool:
    """Nothing holds `port` on this machine's addresses (a listener on 0.0.0.0 or on loopback)."""
    for host in ("0.0.0.0", "127.0.0.1"):
        with socket.socket() as s:
            try:
                s.bind((host, port))
            except OSError:
                return False
    return True


def free_port() -> int:
    """A port for a test's server: from this process's own block (see _PortBlock), so that neither another
    test of this run nor another checkout's run is handed it too."""
    if not _ports:
        _ports.append(_PortBlock())
    return _ports[0].take()


def local_ports_moved(text: str) -> tuple[str, tuple[int, ...]]:
    """The text of a configs/local.yaml with each of its fixed ports (LOCAL_PORTS) replaced by one of this
    run's (free_port), and the ports it now uses, in LOCAL_PORTS's order."""
    moved = []
    for port in LOCAL_PORTS:
        assert text.count(str(port)) == 1, f"configs/local.yaml no longer holds port {port} once"
        moved.append(free_port())
        text = text.replace(str(port), str(moved[-1]))
    return text, tuple(moved)


def local_stack(directory: Path, name: str) -> tuple[dict, tuple[int, ...]]:
    """configs/local.yaml as data, kept off everything a user's quickstart of this checkout holds: the
    deployment named NAME, its state in DIRECTORY/state, every fixed port moved (local_ports_moved; the
    frontend's is LAUNCHER_PORT, the caller's). Returns the data and the ports it uses."""
    import yaml

    text, ports = local_ports_moved((CONFIGS / "local.yaml").read_text().replace("${CONFIG_DIR}", str(CONFIGS)))
    data = yaml.safe_load(text)
    data["deployment"] = name
    data["state_dir"] = str(directory / "state")
    return data, ports


class LocalFile(NamedTuple):
    """A test's configs/local.yaml (local_stack), written as DIRECTORY/local.yaml: its path, data and ports;
    the frontend's port (free_port) and the environment that gives it as LAUNCHER_PORT."""

    config: str
    data: dict
    ports: tuple[int, ...]
    port: int
    env: dict[str, str]


def local_file(directory: Path, name: str, edit=None) -> LocalFile:
    """local_stack's data, changed by `edit(data)` when given, written as DIRECTORY/local.yaml."""
    import yaml

    data, ports = local_stack(directory, name)
    if edit is not None:
        edit(data)
    config = directory / "local.yaml"
    config.write_text(yaml.safe_dump(data, sort_keys=False))
    port = free_port()
    return LocalFile(str(config), data, ports, port, {**fresh_env(), "LAUNCHER_PORT": str(port)})


def launcher(*args: str, env: dict[str, str], cwd: Path, timeout: float = 180) -> subprocess.CompletedProcess:
    """A fresh `launcher ARGS` process in CWD with ENV, as a user runs it: its exit code and output."""
    argv = [sys.executable, "-m", "launcher", *args]
    return subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)


def timed_up(config: str, env: dict[str, str], cwd: Path, what: str) -> subprocess.CompletedProcess:
    """`launcher up CONFIG`, its duration printed as `WHAT, to ready: Ns` (a figure for the report)."""
    import time

    started = time.monotonic()
    up = launcher("up", config, env=env, cwd=cwd)
    print(f"\n{what}, to ready: {time.monotonic() - started:.1f}s")
    return up


def interrupted(*args: str, env: dict[str, str], cwd: Path, when, limit: float = 60) -> tuple[int, str]:
    """`launcher ARGS` as a user runs it, sent Ctrl-C (SIGINT) once a line of its stderr satisfies `when`
    (within `limit` seconds, while it still runs): its exit code and all it wrote to stderr."""
    import signal

    argv = [sys.executable, "-m", "launcher", *args]
    proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        progress = Lines(proc.stderr)
        assert progress.until(when, limit) and proc.poll() is None, progress.text()
        proc.send_signal(signal.SIGINT)
        err = progress.rest(60)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    return proc.returncode, err


# The mockers' speed where a test streams under a change (drain, scale, roll): a quarter of real time, ~38
# tokens/s per stream, so that a stream lasts as long with a quarter of the tokens. What those tests watch is
# streams in flight across a change; every token is a chunk the frontend, the mocker and the client each
# handle (about 0.5 ms of CPU all told), and four streams at speedup 1 kept a third of a core busy.
STREAM_SPEEDUP = 0.25
# Tokens a streamed answer asks for at STREAM_SPEEDUP: ~10 s, longer than a `launcher down` takes to start and
# read the counts on a loaded machine, short enough for a test.
STREAM_TOKENS = 375


def stream(
    port: int, i: int, out: dict | None = None, host: str = "127.0.0.1", max_tokens: int = STREAM_TOKENS
) -> dict:
    """One streamed chat completion: how many chunks came, its finish_reason, any error (None: none), in
    `out` as they come (another thread may watch it) and returned."""
    import http.client
    import json

    body = {
        "model": "tiny",
        "messages": [{"role": "user", "content": f"tell me a long story {i}"}],
        "max_tokens": max_tokens,
        "stream": True,
    }
    out = out if out is not None else {}
    out.update(chunks=0, finish=None, error=None)
    conn = http.client.HTTPConnection(host, port, timeout=60)
    try:
        conn.request("POST", "/v1/chat/completions", json.dumps(body), {"Content-Type": "application/json"})
        response = conn.getresponse()
        if response.status != 200:
            out["error"] = f"HTTP {response.status}: {response.read(300)!r}"
            return out
        for line in response:
            data = line.strip().removeprefix(b"data:").strip()
            if not data or data == b"[DONE]" or not line.startswith(b"data:"):
                continue
            chunk = json.loads(data)
            if "error" in chunk or not chunk.get("choices"):
                out["error"] = out["error"] or chunk.get("error", chunk)
                continue
            out["chunks"] += 1
            out["finish"] = chunk["choices"][0].get("finish_reason") or out["finish"]
    except (OSError, http.client.HTTPException, ValueError) as exc:
        out["error"] = repr(exc)
    finally:
        conn.close()
    return out


class StreamLoad:
    """`clients` threads streaming chat completions (`stream`) through the frontend at PORT one after
    another until stopped (at most `limit` seconds and `per_client` streams each); every outcome kept.
    `warm`: entering waits until every client has been served once."""

    def __init__(
        self, port: int, host: str = "127.0.0.1", *, clients: int = 4, tokens: int = STREAM_TOKENS,
        limit: float = 240, per_client: int = 1000, warm: bool = False,
    ):  # fmt: skip
        import threading
        from concurrent.futures import ThreadPoolExecutor

        self.port, self.host, self.clients, self.tokens, self.limit = port, host, clients, tokens, limit
        self.per_client, self.warm = per_client, warm
        self.stop, self.results = threading.Event(), []
        self.pool = ThreadPoolExecutor(clients)

    def _client(self, k: int) -> None:
        import time

        deadline = time.monotonic() + self.limit
        for i in range(self.per_client):
            if self.stop.is_set() or time.monotonic() >= deadline:
                return
            out = stream(self.port, k * 10_000 + i, {}, self.host, max_tokens=self.tokens)
            out["at"] = time.strftime("%H:%M:%S")
            self.results.append(out)
            if out["error"] is not None:
                time.sleep(0.1)  # a failure is counted; not spinning on it leaves the CPU to what serves

    def __enter__(self) -> StreamLoad:
        import time

        self.futures = [self.pool.submit(self._client, k) for k in range(self.clients)]
        deadline = time.monotonic() + 30
        while self.warm and len(self.results) < self.clients and time.monotonic() < deadline:
            time.sleep(0.1)
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for f in self.futures:
            f.result(timeout=180)
        self.pool.shutdown()

    def failed(self) -> list[dict]:
        return [r for r in self.results if r["error"] is not None]

    def cut(self) -> list[dict]:
        """Streams that ended without an error yet short: no finish_reason `length` or fewer chunks than asked."""
        return [
            r for r in self.results if r["error"] is None and (r["finish"] != "length" or r["chunks"] < self.tokens)
        ]

    def bad(self) -> list[dict]:
        return self.failed() + self.cut()


class Migration(NamedTuple):
    """A request the Dynamo frontend moved to another worker (`migrations`)."""

    left: str  # the worker it left
    on: str | None  # the worker that then completed it; None: not completed
    reason: str  # "disconnected": cut mid-stream; "cannot_connect": routed to a worker already gone
    client_id: str | None  # the client's X-Request-Id, where it sent one (AIPerf does)


def migrations(log: str) -> dict[str, Migration]:
    """From the Dynamo frontend's log (its request_span lines, Dynamo 1.6.1; colours or not): each migrated
    request's id (the HTTP request's: a line's first request_id) -> its Migration."""
    left: dict[str, dict[str, str]] = {}
    done: dict[str, str] = {}
    for line in re.sub(r"\x1b\[[0-9;]*m", "", log).splitlines():
        if "migration retry scheduled" not in line and "route request completed" not in line:
            continue
        fields: dict[str, str] = {}
        for key, value in re.findall(r'([\w.]+)=("[^"]*"|\S+)', line):
            fields.setdefault(key, value.strip('"'))
        request = fields.get("request_id", "")
        if "migration retry scheduled" in line:
            left.setdefault(request, fields)
        elif fields.get("migration.is_retry") == "true" and fields.get("request.outcome") == "success":
            done[request] = fields.get("worker_id", "")
    return {
        request: Migration(f.get("migration.from_worker_id", ""), done.get(request), f.get("migration.reason", ""),
                           f.get("x_request_id"))
        for request, f in left.items()
    }  # fmt: skip


def listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def assert_gone(pids: list[int], ports: tuple[int, ...]) -> None:
    """After `down`: none of these processes is alive (10 s to exit) and none of these ports listens."""
    import time

    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(Path(f"/proc/{p}").exists() for p in pids):
        time.sleep(0.2)
    assert not [p for p in pids if Path(f"/proc/{p}").exists()], "a process outlived down"
    for port in ports:
        assert not listening(port), f"port {port} still open after down"


def printed_curl_answer(stdout: str) -> str:
    """Run the curl line `up` printed, exactly as printed, and return the answer's text.

    Fails unless it answers 200 with words in `content`: what a person running the curl must see."""
    return answer_text(printed_curl_reply(stdout))


def printed_curl_reply(stdout: str) -> dict:
    """Run the curl line `up` printed, exactly as printed; the whole reply (200, and its answer has words)."""
    import json

    curl = next(line for line in stdout.splitlines() if line.startswith("curl "))
    argv = shlex.split(curl) + ["-w", "\n%{http_code}"]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=60).stdout
    body, _, status = out.rpartition("\n")
    assert status == "200", out
    reply = json.loads(body)
    answer_text(reply)
    return reply


def answer_text(reply: dict) -> str:
    """The text of a chat completion's answer; fails unless it has words (a 200 with no text is no answer)."""
    content = reply["choices"][0]["message"]["content"]
    assert isinstance(content, str) and content.split(), f"the answer has no text: {reply}"
    assert reply["usage"]["completion_tokens"] > 0, reply
    return content


def chat(endpoint: str, content: str = "hello", max_tokens: int = 8, timeout: float = 30) -> dict:
    """POST one chat completion to ENDPOINT (http://host:port); fails unless 200 with text. Returns the reply."""
    import json
    import urllib.request

    body = json.dumps({"model": "tiny", "messages": [{"role": "user", "content": content}], "max_tokens": max_tokens})
    req = urllib.request.Request(f"{endpoint}/v1/chat/completions", body.encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        assert resp.status == 200
        reply = json.loads(resp.read())
    answer_text(reply)
    return reply


def assert_workers_logged(reply: dict, logs, roles: tuple[str, ...] = ("prefill", "decode"), limit: float = 30):
    """The request crossed prefill and decode: a worker of each role logged its id.

    logs(role, request_id) runs `launcher logs --role ROLE --grep REQUEST_ID` and returns the CompletedProcess;
    retried for up to `limit` seconds (a log line may reach the file a moment after the answer)."""
    import time

    request = reply["id"].removeprefix("chatcmpl-")
    assert request, reply
    missing = list(roles)
    deadline = time.monotonic() + limit
    while missing:
        for role in list(missing):
            found = logs(role, request)
            assert found.returncode == 0, found.stdout + found.stderr
            if f" {role} r" in found.stdout and request in found.stdout:
                missing.remove(role)
        if missing and time.monotonic() > deadline:
            raise AssertionError(f"no {' or '.join(missing)} worker logged request {request}")
        if missing:
            time.sleep(0.5)


def session_members(session: int) -> list[int]:
    """Every live process of a session on this machine (zombies, dead but not yet reaped, excluded)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            fields = stat[stat.rindex(")") + 2 :].split()
            if int(fields[3]) == session and fields[0] != "Z":
                found.append(int(entry.name))
    return found


def alive(pid: int) -> bool:
    """True if pid runs (a zombie, dead but not yet reaped, counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def wait_for(condition, limit: float, interval: float = 0.2, what: str = "the condition"):
    """Poll condition() until it returns something truthy (returned) or `limit` seconds pass (AssertionError)."""
    import time

    deadline = time.monotonic() + limit
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {limit:.0f} s")
        time.sleep(interval)


MINIMAL = """\
deployment: demo
image: example/image:1
gpus_per_node: 8
nodes:
  - {address: 10.9.0.1}
  - {address: 10.9.0.2}
  - {address: 10.9.0.3}
  - {address: 10.9.0.4}
groups:
  prefill:
    engine: dynamo-sglang
    nodes: 2
    args: {tp-size: 16, dp-size: 16, enable-dp-attention: true}
  decode:
    engine: dynamo-sglang
    nodes: 2
    args: {tp-size: 16}
"""


def write(tmp_path: Path, text: str, name: str = "deploy.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def launcher_on(testbed, config: Path, command: str, *args: str, cwd: Path, timeout: float = 300):
    """`python -m launcher COMMAND -c CONFIG -i <testbed inventory> ARGS...` as a real subprocess."""
    import subprocess

    argv = [sys.executable, "-m", "launcher", command, "-c", str(config), "-i", str(testbed.inventory), *args]
    return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=timeout)


def cli_main(args: list[str]) -> int:
    """The real CLI entry point run in-process; its exit code (what it printed is the caller's to capture)."""
    old = sys.argv
    sys.argv = ["launcher", *args]
    code = 0
    try:
        cli.main()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        sys.argv = old
    return code


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """Run the real CLI entry point in-process; return (exit code, stdout, stderr)."""
    code = cli_main(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def local_command_deployment(tmp_path: Path, name: str, group: str, script: str, **group_settings) -> Path:
    """A deployment file: one `command` group running `sh -c SCRIPT` as a local process, no Dynamo services."""
    import yaml

    data = {
        "deployment": name,
        "runtime": "process",
        "state_dir": str(tmp_path / "state"),
        "gpus_per_node": 0,
        "nodes": [{"name": "local", "address": "127.0.0.1"}],
        "services": {"etcd": {"enabled": False}, "nats": {"enabled": False}, "frontend": {"enabled": False}},
        "groups": {group: {"engine": "command", "nodes": ["local"], "args": ["sh", "-c", script], **group_settings}},
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def connected_target(plan, **connection):
    """A plan as a command sees it, with a fleet of connections (a context manager)."""
    from launcher.operations.context import Connection, Target, connected
    from launcher.runtime import for_plan

    return connected(Target(Path(plan.file), None, plan, for_plan(plan)), Connection(**connection))


# The commands a user can run; the walk below must find at least these (so a test driven by it cannot
# pass on an empty walk), and finds any new one by itself.
KNOWN_COMMANDS = {
    ("plan",),
    ("up",),
    ("status",),
    ("logs",),
    ("exec",),
    ("down",),
    ("watch",),
    ("doctor",),
    ("migrate",),
    ("version",),
    ("lock",),
    ("lock", "status"),
    ("lock", "break"),
    ("top",),
    ("collect",),
    ("bench",),
    ("import",),
    ("export",),
    ("image",),
    ("image", "build"),
    ("image", "push"),
    ("stage",),
    ("scale",),
}


def cli_commands() -> dict[tuple[str, ...], object]:
    """Every command and group of the real typer app, by path: () is `launcher`, ("lock", "break") ...

    Walked from the click command typer builds, so a verb added to launcher/cli.py is found here."""
    import typer.main

    found: dict[tuple[str, ...], object] = {}

    def walk(command, path: tuple[str, ...]) -> None:
        found[path] = command
        for name, sub in (getattr(command, "commands", None) or {}).items():
            walk(sub, (*path, name))

    walk(typer.main.get_command(cli.app), ())
    return found


def loopback_inventory(path: Path, nodes: int = 13) -> Path:
    """An inventory that makes every shipped config plannable and keeps any traffic on this machine.

    Loopback addresses 127.0.1.N (never the shipped files' addresses), SSH port 1 (nothing listens:
    a connection, were one ever tried, is refused at once), the testbed configs' `vars`, and node 0
    named `local` as configs/local.yaml's groups expect."""
    import yaml

    data = {
        "ssh": {"port": 1, "connect_timeout": 1},
        "vars": {
            "TESTBED_IMAGE": "testbed-node:1",
            "TESTBED_PYTHON_HOME": "/opt/python",
            "TESTBED_VENV": "/opt/venv",
            "TESTBED_REPO": "/opt/repo",
        },
        "nodes": [{"name": "local" if i == 0 else f"lb{i}", "address": f"127.0.1.{i + 1}"} for i in range(nodes)],
    }
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def fresh_env() -> dict[str, str]:
    """The environment of a fresh `launcher` process in these tests.

    Nothing it would pick up by itself (LAUNCHER_CONFIG, LAUNCHER_INVENTORY). Bytecode is cached in a
    directory of its own outside the tree, as an installed package has it: with PYTHONDONTWRITEBYTECODE
    every process would compile typer, rich and pydantic again (twice the CPU of a run)."""
    import tempfile

    env = {k: v for k, v in os.environ.items() if k not in ("LAUNCHER_CONFIG", "LAUNCHER_INVENTORY")}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PYTHONPYCACHEPREFIX"] = str(Path(tempfile.gettempdir()) / f"launcher-tests-pycache-{os.getuid()}")
    return env


class Lines:
    """Lines of a running subprocess's pipe, read as they come by a thread: `until(predicate, limit)` waits
    (bounded) for one; `rest(limit)` reads to the end of the pipe."""

    def __init__(self, pipe):
        import queue
        import threading

        self.seen: list[tuple[float, str]] = []  # (time.monotonic() when read, line)
        self._queue: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, args=(pipe,), daemon=True).start()

    def _read(self, pipe) -> None:
        import time

        for line in pipe:
            self._queue.put((time.monotonic(), line))
        self._queue.put(None)

    def until(self, predicate, limit: float) -> str | None:
        """The next line that satisfies predicate, or None after `limit` seconds or at the end of the pipe."""
        import queue
        import time

        deadline = time.monotonic() + limit
        while (left := deadline - time.monotonic()) > 0:
            try:
                item = self._queue.get(timeout=left)
            except queue.Empty:
                return None
            if item is None:
                self._queue.put(None)  # stays ended
                return None
            self.seen.append(item)
            if predicate(item[1]):
                return item[1]
        return None

    def rest(self, limit: float) -> str:
        """Everything until the pipe ends (bounded by `limit` seconds); the whole text read so far."""
        self.until(lambda line: False, limit)
        return self.text()

    def text(self) -> str:
        """Every line read so far, including those not yet looked at by `until`."""
        import queue

        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is None:
                self._queue.put(None)
                break
            self.seen.append(item)
        return "".join(line for _, line in self.seen)


class ChatLoad:
    """A stream of chat requests to ENDPOINT from `workers` threads until stopped (at most `limit`
    seconds and `max_requests` requests): what `top` must see served. Counts answers with text."""

    def __init__(
        self, endpoint: str, workers: int = 6, max_tokens: int = 300, limit: float = 180, max_requests: int = 2000
    ):
        import threading

        self.endpoint, self.max_tokens, self.limit, self.max_requests = endpoint, max_tokens, limit, max_requests
        self.stop = threading.Event()
        self.answered = 0
        self.errors: list[str] = []
        self.sent = 0
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._work, daemon=True) for _ in range(workers)]

    def _work(self) -> None:
        import time

        deadline = time.monotonic() + self.limit
        while not self.stop.is_set() and time.monotonic() < deadline:
            with self.lock:
                if self.sent >= self.max_requests:
                    return
                self.sent += 1
            try:
                chat(self.endpoint, "tell me a long story about the sea", max_tokens=self.max_tokens, timeout=60)
                with self.lock:
                    self.answered += 1
            except Exception as exc:  # counted, not raised: the test asserts on them
                with self.lock:
                    self.errors.append(repr(exc))

    def __enter__(self) -> ChatLoad:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(70)


def top_rounds(text: str) -> list[tuple[int, dict[str, str]]]:
    """`launcher top` piped: [(round, {row label: its whole line})], a row label like `decode r3` or `frontend`."""
    import re

    rounds: list[tuple[int, dict[str, str]]] = []
    for line in text.splitlines():
        head = re.match(r"top \S+ round (\d+) at", line)
        if head:
            rounds.append((int(head.group(1)), {}))
            continue
        row = re.match(r"\d+ \S+\s+(\S+(?: r\d+)?)\s+(.*)$", line)
        if rounds and row:
            rounds[-1][1][row.group(1)] = row.group(2)
    return rounds


# A deployment whose one node is at a TEST-NET-1 address (RFC 5737): nothing answers there, so a command
# that reaches for it fails the way an unreachable node does, and nothing is ever started.
UNREACHABLE = """\
deployment: rv
image: example/img:1
gpus_per_node: 0
versions: {dynamo: "1.6.1"}
model: {path: /model, name: tiny}
nodes:
  - {name: n0, address: 192.0.2.10}
groups:
  prefill: {engine: mocker, nodes: [n0]}
  decode: {engine: mocker, nodes: [n0]}
"""


class Bounded:
    """What a fresh `launcher` process did, measured by the kernel for that process alone (wait4)."""

    def __init__(self, code: int, out: str, err: str, cpu_s: float, max_rss_mb: float):
        self.code, self.out, self.err, self.cpu_s, self.max_rss_mb = code, out, err, cpu_s, max_rss_mb


def run_bounded(args: list[str], cwd: Path, memory: int = 1 << 30, limit: float = 60) -> Bounded:
    """`python -m launcher ARGS` as a user runs it, with its address space capped at `memory` (a runaway
    fails fast instead of taking the machine); its CPU seconds and peak resident memory come back.
    Killed after `limit` seconds of wall time (a bounded wait on a loaded machine)."""
    import resource
    import tempfile
    import time

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))

    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen([sys.executable, "-m", "launcher", *args], cwd=cwd, env=fresh_env(),
                                stdin=subprocess.DEVNULL, stdout=out, stderr=err, preexec_fn=cap)  # fmt: skip
        deadline = time.monotonic() + limit
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        while pid == 0:
            if time.monotonic() > deadline:
                proc.kill()
            time.sleep(0.02)
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        return Bounded(proc.returncode, out.read(), err.read(), usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024)
