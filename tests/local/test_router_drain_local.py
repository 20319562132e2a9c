"""The drain of plain SGLang workers behind their router, against the real sglang-router 0.3.2 (the wheel `uv
sync` installs), started here from the plan's own router argv (its version pin check included). No SGLang engine
runs on a CPU-only machine, so the two worker URLs the plan gives the router are a real etcd's two client ports:
the router registers any HTTP server whose /health answers 200, and that is all a removal needs.

What is checked is what `down` does first for such a worker (launcher.operations.drain.unroute): its id looked
up in the router's `GET /workers`, `DELETE /workers/{id}`, and the router listing it no more, the other worker
left in; the router's own count of its requests read from its /metrics; a removal done twice; and a hostile
router (garbage, a forged id, an answer without end) refused in one line within the deadline."""

from __future__ import annotations

import contextlib
import dataclasses
import http.server
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from launcher.config.load import load
from launcher.operations import drain as drain_module
from launcher.operations.drain import drain_node, reroute, router_count, router_gone, unroute
from launcher.operations.nodes import start
from launcher.output.progress import Progress
from launcher.plan import drain
from launcher.plan.build import build
from launcher.plan.types import Node, Plan, Probe, Service
from launcher.transport.host import Options
from launcher.transport.local import LocalHost
from tests.helpers import assert_gone, connected_target, free_port, fresh_env, launcher, wait_for
from tests.pure.test_drain import answer, serve_once, trickle

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent  # the project's env: etcd and the router's python3


def plan_with_router(
    tmp_path: Path, decode_first: bool = False, router_args: dict | None = None
) -> tuple[Plan, dict[str, int]]:
    """decode_first: the decode group on node 0 and prefill on node 1 (the drain's lines come phase by
    phase, and within a phase by node: only then does their order show the phases'); router_args: the
    router's `args` in the file."""
    ports = {k: free_port() for k in ("router", "metrics", "prefill", "decode", "peer", "peer2")}
    data = {
        "deployment": "router-drain",
        "runtime": "process",
        "python_env": str(BIN.parent),
        "state_dir": str(tmp_path / "state"),
        "gpus_per_node": 8,
        "versions": {"sglang": "0.5.21", "sglang_router": "0.3.2"},
        "model": {"path": "/model", "name": "tiny"},
        "nodes": [{"name": "a", "address": "127.0.0.1"}, {"name": "b", "address": "localhost"}],
        "services": {
            "etcd": {"enabled": False}, "nats": {"enabled": False}, "frontend": {"enabled": False},
            "router": {"enabled": True, "node": 0, "port": ports["router"], "prometheus_port": ports["metrics"]},
        },
        "groups": {
            "prefill": {"engine": "sglang", "nodes": 1, "port": ports["prefill"], "args": {"tp-size": 8}},
            "decode": {"engine": "sglang", "nodes": 1, "port": ports["decode"], "args": {"tp-size": 8}},
        },
    }  # fmt: skip
    if router_args:
        data["services"]["router"]["args"] = router_args
    if decode_first:
        data["groups"] = {"decode": data["groups"]["decode"], "prefill": data["groups"]["prefill"]}
    path = tmp_path / "router.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return build(load(path, environ={})), ports


def etcd_argv(tmp_path: Path, name: str, client: int, peer: int) -> list[str]:
    return [
        str(BIN / "etcd"), "--name", name, "--data-dir", str(tmp_path / name), "--listen-client-urls",
        f"http://127.0.0.1:{client}", "--advertise-client-urls", f"http://127.0.0.1:{client}",
        "--listen-peer-urls", f"http://127.0.0.1:{peer}", "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
        "--initial-cluster", f"{name}=http://127.0.0.1:{peer}",
    ]  # fmt: skip


def started(argv: list[str], log: Path) -> subprocess.Popen:
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"}
    with log.open("w") as out:
        return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)


def listed(router: Service) -> dict[str, str]:
    """url -> worker_type of what the router lists now ({} while it does not answer)."""
    import json

    try:
        request = urllib.request.Request(f"{drain.router_api(router)}/workers", headers=drain.router_auth(router))
        with urllib.request.urlopen(request, timeout=2) as r:
            return {w["url"]: w["worker_type"] for w in json.loads(r.read())["workers"]}
    except OSError:
        return {}


def routed_once(router: Service) -> None:
    """One request through the router to both workers (the etcd stand-ins answer it 404): the router counts a
    worker's requests (smg_worker_requests_active) from the first one routed to it, as on a deployment that
    has served."""
    request = urllib.request.Request(f"{drain.router_api(router)}/generate", data=b'{"text": "hi"}', method="POST")
    request.add_header("Content-Type", "application/json")
    with pytest.raises(urllib.error.HTTPError, match="404"):
        urllib.request.urlopen(request, timeout=10)


# The router's control-plane keys (its worker API answers 401 without a key, 403 to a user's): the removal
# must send the admin key from its args (without one it failed with HTTP 401 and the worker stayed routed).
KEYS = ["ops:Operator:admin:adm1n-s3cret", "ro:Reader:user:us3r-s3cret"]


@pytest.fixture
def router_up(tmp_path) -> Iterator[tuple[Service, dict[str, tuple[Service, str]]]]:
    with running_router(tmp_path, {"control-plane-api-keys": KEYS}) as up:
        yield up


@contextlib.contextmanager
def running_router(tmp_path: Path, router_args: dict | None = None) -> Iterator[tuple[Service, dict]]:
    """The plan's real router, its two workers an etcd's two client ports; (the router, plan.drain.routed)."""
    plan, ports = plan_with_router(tmp_path, router_args=router_args)
    router = next(s for s in plan.services if s.role == "router")
    routed = drain.routed(plan.services)
    clients = f"http://127.0.0.1:{ports['prefill']},http://127.0.0.1:{ports['decode']}"
    etcd = started(
        [str(BIN / "etcd"), "--data-dir", str(tmp_path / "etcd"), "--listen-client-urls", clients,
         "--advertise-client-urls", clients.split(",")[0], "--listen-peer-urls", f"http://127.0.0.1:{ports['peer']}"],
        tmp_path / "etcd.log",
    )  # fmt: skip
    proc = started(router.command, tmp_path / "router.log")
    try:
        urls = {url for _, url in routed.values()}
        wait_for(lambda: set(listed(router)) == urls, 60, 0.2, "the router listing both workers")
        yield router, routed
    finally:
        for p in (proc, etcd):
            os.killpg(p.pid, 9)
            p.wait(timeout=30)


def test_a_worker_is_taken_out_of_the_real_router_and_the_other_left_in(router_up):
    """With control-plane keys on the router (KEYS): the removal sends its admin key."""
    router, routed = router_up
    (decode,) = [url for name, (_, url) in routed.items() if name.endswith("-decode-r0")]
    (prefill,) = [url for name, (_, url) in routed.items() if name.endswith("-prefill-r0")]
    assert listed(router) == {prefill: "prefill", decode: "decode"}
    host = LocalHost(router.node, Options())
    began = time.monotonic()
    said = unroute(host, router, decode, time.monotonic() + 10)
    print(f"\nremoved from the real router in {time.monotonic() - began:.2f}s: {said}")
    assert said == "removed from the router"
    assert listed(router) == {prefill: "prefill"}  # no longer routed to; the prefill worker left in
    # Done twice (a second `down`): nothing to remove, said so.
    assert unroute(host, router, decode, time.monotonic() + 10) == "not in the router's workers (nothing to remove)"
    # The router's own count of its requests on it (read when the worker's /metrics is off), and said so.
    d = drain.Drain("decode-r0", 1, router=said)
    assert router_count(host, router, decode, time.monotonic() + 10, d) == 0
    assert d.describe().startswith(
        "decode-r0 on node 1: removed from the router; counted by the router (the worker's /metrics is off);"
    ), d.describe()
    # A key the router holds as a user's: refused by the router, said in one line without the key.
    port = drain.router_api(router).rsplit(":", 1)[1]
    user = dataclasses.replace(router, command=["--port", port, "--control-plane-api-keys", "ro:R:admin:us3r-s3cret"])
    said = unroute(host, user, prefill, time.monotonic() + 10)
    assert said == "not removed from the router (ValueError: GET /workers answered HTTP 403)", said
    assert listed(router) == {prefill: "prefill"}
    # A key that is no header value (a newline in it): refused without a word of it.
    bad = dataclasses.replace(router, command=["--port", port, "--control-plane-api-keys", "k:n:admin:s3cret\nX: y"])
    said = unroute(host, bad, prefill, time.monotonic() + 1)
    assert said == (
        "not removed from the router (ValueError: a request header's value is not printable ASCII on one line)"
    ), said


def test_a_rolled_worker_is_routed_again_as_the_router_was_started_with_it(router_up):
    """A roll takes each worker out of the router before it stops it (as `down` does) and, once the new spec
    is ready, puts it back (operations.roll.route_back -> drain.reroute): the same type, and the prefill
    worker its bootstrap port, as the router's own argv gave them; a worker still listed is left as it is."""
    router, routed = router_up
    host = LocalHost(router.node, Options())
    before = workers(router)
    for _, url in routed.values():
        assert unroute(host, router, url, time.monotonic() + 10) == "removed from the router"
    assert listed(router) == {}
    for _, url in routed.values():
        assert reroute(host, router, url, time.monotonic() + 10) == "routed again (added back to the router)"
    after = workers(router)
    assert after == before and {w["worker_type"] for w in after.values()} == {"prefill", "decode"}
    assert [w.get("bootstrap_port") for w in after.values() if w["worker_type"] == "prefill"] == [
        int(drain.router_worker_spec(router, url)["bootstrap_port"])  # type: ignore[call-overload]
        for _, url in routed.values()
        if drain.router_worker_spec(router, url)["worker_type"] == "prefill"  # type: ignore[index]
    ]
    # Again (a rollback after a step that had routed it): nothing added twice.
    (url, *_) = [u for _, u in routed.values()]
    assert reroute(host, router, url, time.monotonic() + 10) == "routed: the router still lists it"
    assert len(workers(router)) == 2
    # A URL the router was never given: nothing sent, said so.
    said = reroute(host, router, "http://127.0.0.1:9", time.monotonic() + 10)
    assert said == "not routed again: the router's argv does not name http://127.0.0.1:9"


def workers(router: Service) -> dict[str, dict]:
    """url -> what the router says of the worker, its id and health left out (a new id on each addition)."""
    request = urllib.request.Request(f"{drain.router_api(router)}/workers", headers=drain.router_auth(router))
    with urllib.request.urlopen(request, timeout=5) as r:
        listing = json.loads(r.read())["workers"]
    return {w["url"]: {k: v for k, v in w.items() if k not in ("id", "is_healthy", "load")} for w in listing}


@pytest.mark.parametrize(
    ("behaviour", "says"),
    [
        (answer(b"<html>a gateway</html>"), "ValueError: not the router's worker list"),
        (answer(b'{"workers": [{"url": "http://127.0.0.1:9", "id": "../../shutdown"}]}'), "not a UUID"),
        (answer(b"x" * (2 << 20)), "is over 1048576 bytes"),
        (trickle, "no whole answer"),
    ],
    ids=["garbage", "a forged id", "huge", "one byte at a time"],
)
def test_a_hostile_router_is_refused_in_one_line_within_the_deadline(behaviour, says):
    port, thread = serve_once(behaviour)
    node = Node(0, "local", "127.0.0.1", ssh=None, gpus=0)  # type: ignore[arg-type]
    router = Service("d", "router", "router", node, "", ["--port", str(port)], {}, None, Probe("running"), 1.0)  # type: ignore[arg-type]
    began = time.monotonic()
    said = unroute(LocalHost(node, Options()), router, "http://127.0.0.1:9", time.monotonic() + 1)
    took = time.monotonic() - began
    assert said.startswith("not removed from the router (") and says in said, said
    assert "\n" not in said and len(said) < 260 and took < 5, (said, took)
    thread.join(timeout=35)


def workers_as_etcds(tmp_path: Path, plan: Plan, ports: dict[str, int]) -> list[Service]:
    """The plan's two SGLang workers (their names, node, ports) with a real etcd's command instead."""
    peers = {"prefill": ports["peer"], "decode": ports["peer2"]}
    return [
        dataclasses.replace(s, command=etcd_argv(tmp_path, s.role, ports[s.role], peers[s.role]))
        for s in plan.services if s.group
    ]  # fmt: skip


def test_a_worker_whose_router_is_gone_is_not_waited_for(tmp_path):
    """The router died (not started here): the removal fails, said in one line; the worker's own count is
    unreadable and the router answers nothing, so no request can reach it: the drain ends at once, not
    at drain_timeout."""
    plan, ports = plan_with_router(tmp_path)
    decode = next(s for s in plan.services if s.role == "decode")
    with connected_target(plan) as target:
        try:
            start(target, workers_as_etcds(tmp_path, plan, ports), Progress(live=False))
            host = target.fleet.host(decode.node.index)
            began = time.monotonic()
            [d] = drain_node(target, host, [decode], time.monotonic() + 60, {}, None, drain.routed(plan.services))
            took = time.monotonic() - began
        finally:
            target.fleet.run(target.runtime.remove_all_script(plan, now=True), timeout=60)
    print(f"\n{d.describe()}")
    assert d.outcome == "router gone" and took < 20, (d.describe(), took)
    assert d.describe().startswith(
        "decode-r0 on node 1: not removed from the router (ConnectionRefusedError: [Errno 111] Connection refused);"
        " an unknown number of request(s) in flight, drained in "
    ), d.describe()
    assert d.describe().endswith("(its own count unreadable; its router does not answer: no request reaches it)")


def serve_on(port: int, behaviour) -> threading.Thread:
    """The test's attacker on a given port: answers each connection with `behaviour(conn)`, until one ends."""
    server = socket.create_server(("127.0.0.1", port))

    def run():
        with server:
            conn, _ = server.accept()
            with conn:
                conn.recv(65536)
                with contextlib.suppress(OSError):  # the launcher hung up on it
                    behaviour(conn)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_a_router_slow_to_answer_is_not_taken_for_gone(tmp_path):
    """A router that answers its /health a byte at a time is still there (its streams may still be relaying):
    the drain must not end at once as "router gone" and stop the worker under them. It was, as was a router
    answering garbage: only a refused port is a router gone."""
    plan, ports = plan_with_router(tmp_path)
    router = next(s for s in plan.services if s.role == "router")
    with connected_target(plan) as target:
        slow = serve_on(ports["router"], trickle)
        started = time.monotonic() - drain_module.UNREADABLE_GRACE_SECONDS  # past the grace
        assert router_gone(target, router, started, time.monotonic() + 0.5) is False
        slow.join(timeout=35)
        assert router_gone(target, router, started, time.monotonic() + 0.5) is True  # now nothing listens


def test_down_takes_each_sglang_worker_out_of_the_router_before_it_stops_it(tmp_path):
    """`launcher down` as a user runs it, on the process runtime: the plan's real router and, as its two
    workers (by the plan's names, on the plan's ports), real etcds standing in for SGLang. Each worker is
    removed from the router first, counted by the router (no --enable-metrics: its count, 0 here, read
    before the removal too), then everything stops. Prefill is drained first, though on node 1.
    The old `down` said the groups had no drain and cut them."""
    plan, ports = plan_with_router(tmp_path, decode_first=True)
    router = next(s for s in plan.services if s.role == "router")
    stand_ins = workers_as_etcds(tmp_path, plan, ports)
    env = {**fresh_env(), "PATH": f"{BIN}:{os.environ['PATH']}"}
    down = None
    try:
        with connected_target(plan) as target:
            start(target, [router, *stand_ins], Progress(live=False))
        wait_for(lambda: len(listed(router)) == 2, 60, 0.2, "the router listing both workers")
        routed_once(router)
        began = time.monotonic()
        down = launcher("down", str(tmp_path / "router.yaml"), env=env, cwd=tmp_path)
        print(f"\nlauncher down: {time.monotonic() - began:.1f}s")
    finally:
        if down is None or down.returncode != 0:  # left behind: cleaned, whatever failed
            launcher("down", str(tmp_path / "router.yaml"), "--now", env=env, cwd=tmp_path)
    out = down.stdout + down.stderr
    print(f"\n{out}")
    assert down.returncode == 0, out
    assert "down: draining 2 worker(s) first, up to 60s" in out and "has no drain" not in out, out
    for role, node in (("prefill", 1), ("decode", 0)):
        line = next(x for x in out.splitlines() if x.startswith(f"drain: {role}-r0 "))
        assert line.startswith(
            f"drain: {role}-r0 on node {node}: removed from the router; counted by the router (the worker's /metrics"
            " is off); 0 request(s) in flight, drained in "
        ), line
    assert out.index("drain: prefill-r0") < out.index("drain: decode-r0"), out
    assert "down: removed " in out, out  # (both nodes are this machine: each counts all three)
    audit = (tmp_path / "state" / "router-drain" / "audit.log").read_text()
    assert '"drain decode-r0 on node 0: removed from the router;' in audit, audit
    assert_gone([], tuple(ports[k] for k in ("router", "metrics", "prefill", "decode")))


def test_a_roll_step_takes_its_workers_out_of_the_router_and_puts_them_back(tmp_path):
    """The roll's own drain (operations.roll.drain, as a step runs it) on the plan's real router with etcds
    standing in for the two SGLang workers: both are taken out of the router (they are no Dynamo workers,
    and the roll used to skip them: the router kept routing to a stopped worker), noted as out, and
    route_back puts each back; one the drain never took out is left alone."""
    from launcher.operations import roll
    from launcher.plan.roll import Step

    plan, ports = plan_with_router(tmp_path)
    router = next(s for s in plan.services if s.role == "router")
    stand_ins = workers_as_etcds(tmp_path, plan, ports)
    env = {**fresh_env(), "PATH": f"{BIN}:{os.environ['PATH']}"}
    try:
        with connected_target(plan) as target:
            start(target, [router, *stand_ins], Progress(live=False))
            wait_for(lambda: len(listed(router)) == 2, 60, 0.2, "the router listing both workers")
            before = workers(router)
            said: list[str] = []
            unrouted: set[str] = set()
            workers_of = [s for s in plan.services if s.group]
            roll.drain(target, workers_of, said.append, unrouted)
            assert unrouted == {s.name for s in workers_of} and listed(router) == {}, said
            assert all(": removed from the router;" in line for line in said), said
            step = Step("decode", ["decode"], workers_of)
            assert roll.route_back(target, step, unrouted, said.append) == [] and unrouted == set()
            assert workers(router) == before
            # Nothing out of the router: nothing sent.
            assert roll.route_back(target, step, unrouted, said.append) == []
            assert sum("routed again" in line for line in said) == 2, said
    finally:
        launcher("down", str(tmp_path / "router.yaml"), "--now", env=env, cwd=tmp_path)


def router_that_never_lets_go(port: int, urls: list[str], deleted: threading.Event) -> http.server.HTTPServer:
    """The test's attacker on the router's port: lists the workers, accepts each DELETE (202) and lists them
    still, forever: the drain stays in the removal until drain_timeout."""
    listing = json.dumps({"workers": [{"id": str(uuid.uuid4()), "url": url} for url in urls]}).encode()

    class Router(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def reply(self, status: int, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):
            self.reply(200, listing)

        def do_DELETE(self):
            self.reply(202, b"{}")
            deleted.set()

    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Router)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def test_down_interrupted_after_a_removal_says_the_worker_is_out_of_the_router(tmp_path):
    """Ctrl-C during `down`'s drain, once a worker was taken out of the router: `down` said "nothing removed"
    and nothing more, the deployment left running with that worker out of its router's routing (nothing adds
    it back: the router serves without it). It must say so, and how to finish."""
    plan, ports = plan_with_router(tmp_path)
    routed = drain.routed(plan.services)
    env = {**fresh_env(), "PATH": f"{BIN}:{os.environ['PATH']}"}
    config = str(tmp_path / "router.yaml")
    deleted = threading.Event()
    router = router_that_never_lets_go(ports["router"], [url for _, url in routed.values()], deleted)
    proc = None
    try:
        with connected_target(plan) as target:
            start(target, workers_as_etcds(tmp_path, plan, ports), Progress(live=False))
        argv = [sys.executable, "-m", "launcher", "down", config]
        proc = subprocess.Popen(
            argv, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        assert deleted.wait(60), "no DELETE reached the router"
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        router.shutdown()
        router.server_close()
        launcher("down", config, "--now", env=env, cwd=tmp_path)
    print(f"\n{out}")
    assert proc.returncode == 130, out
    assert "down: interrupted during the drain, nothing removed" in out, out
    assert (
        "the SGLang workers it took out of the router stay out (nothing adds them back): finish with `launcher down`"
        in out
    ), out
