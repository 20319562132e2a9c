"""The drain of plain SGLang workers behind their router, against the real sglang-router 0.3.2 (the wheel `uv
sync` installs), started here from the plan's own router argv (its version pin check included). No SGLang engine
runs on a CPU-only machine, so the two worker URLs the plan gives the router are a real etcd's two client ports:
the router registers any HTTP server whose /health answers 200, and that is all a removal needs.

What is checked is what `down` does first for such a worker (launcher.commands.drain.unroute): its id looked
up in the router's `GET /workers`, `DELETE /workers/{id}`, and the router listing it no more, the other worker
left in; the router's own count of its requests read from its /metrics; a removal done twice; and a hostile
router (garbage, a forged id, an answer without end) refused in one line within the deadline."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from launcher.commands.drain import router_count, unroute
from launcher.config.load import load
from launcher.plan import drain
from launcher.plan.build import build
from launcher.plan.types import Node, Plan, Probe, Service
from launcher.transport.host import Options
from launcher.transport.local import LocalHost
from tests.helpers import free_port, wait_for
from tests.test_drain import answer, serve_once, trickle

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent  # the project's env: etcd and the router's python3


def plan_with_router(tmp_path: Path) -> tuple[Plan, dict[str, int]]:
    ports = {k: free_port() for k in ("router", "metrics", "prefill", "decode", "peer")}
    data = {
        "deployment": "router-drain",
        "runtime": "process",
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
    path = tmp_path / "router.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return build(load(path, environ={})), ports


def started(argv: list[str], log: Path) -> subprocess.Popen:
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"}
    with log.open("w") as out:
        return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)


def listed(router: Service) -> dict[str, str]:
    """url -> worker_type of what the router lists now ({} while it does not answer)."""
    import json

    try:
        with urllib.request.urlopen(f"{drain.router_api(router)}/workers", timeout=2) as r:
            return {w["url"]: w["worker_type"] for w in json.loads(r.read())["workers"]}
    except OSError:
        return {}


@pytest.fixture
def router_up(tmp_path) -> Iterator[tuple[Service, dict[str, tuple[Service, str]]]]:
    plan, ports = plan_with_router(tmp_path)
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
