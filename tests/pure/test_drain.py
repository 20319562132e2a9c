"""The drain as data and its untrusted input: which services are drained in which order, the grace-period
env and the frontend's migration flag in the plan, and the in-flight count read from a /metrics answer,
real (Dynamo 1.6.1's own, recorded in tests/data/metrics) or hostile (huge, garbage, negative, NaN, a
peer on loopback that sends without end or one byte at a time)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from launcher.config.load import load
from launcher.operations.drain import in_flight
from launcher.output import plan_views
from launcher.plan import drain
from launcher.plan.build import build
from launcher.plan.types import Node, Probe, Service
from launcher.transport import http
from launcher.transport.host import Options
from launcher.transport.local import LocalHost
from tests.helpers import REPO, fresh_env, run_cli

METRICS = REPO / "tests" / "data" / "metrics"
DECODE = (METRICS / "dynamo-1.6.1-mocker-decode.txt").read_text()
PREFILL = (METRICS / "dynamo-1.6.1-mocker-prefill.txt").read_text()
FRONTEND = (METRICS / "dynamo-1.6.1-frontend.txt").read_text()
GAUGE = 'dynamo_component_inflight_requests{dynamo_component="backend",dynamo_endpoint="generate"'


def plan_of(name: str):
    return build(load(REPO / "configs" / name, environ={"CONFIG_DIR": "/repo/configs"}))


# -- the count ---------------------------------------------------------------------------------------


def test_the_real_answers_read_zero_and_a_count_is_read_where_the_mocker_puts_it():
    assert drain.worker_in_flight(DECODE) == 0
    assert drain.worker_in_flight(PREFILL) == 0  # its other endpoint's gauge is not the generate one
    assert drain.frontend_in_flight(FRONTEND) == 0
    busy = DECODE.replace(f'{GAUGE},dynamo_namespace="dynamo",worker_id="7d7ba236d4e50d0b"}} 0', f"{GAUGE}}} 6")
    assert busy != DECODE
    assert drain.worker_in_flight(busy) == 6
    # Two DP ranks' generate gauges add up; another endpoint's never counts.
    two = f'{GAUGE},rank="0"}} 2\n{GAUGE},rank="1"}} 3\n' + GAUGE.replace("generate", "clear") + "} 50\n"
    assert drain.worker_in_flight(two) == 5


def test_a_frontend_that_never_relayed_a_request_has_none_in_flight_and_garbage_is_no_count():
    # Its per-model series appear with the first request: before, only the families' HELP/TYPE lines.
    fresh = "\n".join(line for line in FRONTEND.splitlines() if not line.startswith("dynamo_frontend_")) + "\n"
    assert "dynamo_frontend_inflight_requests{" not in fresh and "# TYPE dynamo_frontend_" in fresh
    assert drain.frontend_in_flight(fresh) == 0
    # Requests served but no in-flight series, or an answer that is not the frontend's: no count.
    served = fresh + 'dynamo_frontend_requests_total{model="tiny",status="success"} 7\n'
    for text in (served, "<html>busy</html>\n", ""):
        with pytest.raises(ValueError):
            drain.frontend_in_flight(text)


def test_without_dynamos_gauge_the_engines_running_and_waiting_requests_count():
    text = 'sglang:num_running_reqs{tp="0"} 4\nsglang:num_queue_reqs{tp="0"} 1\nsglang:token_usage 0.5\n'
    assert drain.worker_in_flight(text) == 5


@pytest.mark.parametrize(
    "answer, why",
    [
        ("", "no in-flight request count"),
        ("<html>502 Bad Gateway</html>", "no in-flight request count"),
        (f"{GAUGE}}} -3\n", "not a request count"),
        (f"{GAUGE}}} NaN\n", "not a request count"),
        (f"{GAUGE}}} +Inf\n", "not a request count"),
        (f"{GAUGE}}} 1e300\n", "not a request count"),
        (f"{GAUGE}}} 2.5\n", "not a request count"),
        (f'{GAUGE}}} 600000\n{GAUGE},x="1"}} 600000\n', "total 1200000 is not a request count"),
        (f"{GAUGE}}} many\n", "not Prometheus text"),
        (f'{GAUGE}="unterminated}} 1\n', "not Prometheus text"),
        (f"{GAUGE}}} 1\n" * (drain.MAX_SERIES + 1), "in-flight series"),
        ("#" * (drain.MAX_METRICS_BYTES + 1), "over"),
        # the parser copies a label value up to each escaped quote in it: 4 MB of them took hours
        (GAUGE + ',x="' + '\\"' * 50_000 + '"} 1\n', "line over"),
    ],
)
def test_a_hostile_answer_is_unreadable_never_a_crash(answer, why):
    with pytest.raises(ValueError, match=why):
        drain.worker_in_flight(answer)


# -- a hostile /metrics peer on loopback ---------------------------------------------------------------


def serve_once(behaviour) -> tuple[int, threading.Thread]:
    """A loopback peer that answers one connection with `behaviour(conn)` (the test's attacker)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)

    def run():
        conn, _ = server.accept()
        try:
            conn.recv(65536)
            behaviour(conn)
        except OSError:
            pass  # the launcher hung up on it: what it is meant to do
        finally:
            conn.close()
            server.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return server.getsockname()[1], thread


def endless(conn):
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n")
    chunk = (f"{GAUGE}}} 1\n" * 1000).encode()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        conn.sendall(chunk)


def trickle(conn):
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        conn.sendall(b"#")
        time.sleep(0.2)  # each byte well within any socket timeout: only a whole-exchange deadline ends it


def worker_at(port: int) -> tuple[LocalHost, Service]:
    node = Node(0, "local", "127.0.0.1", ssh=None, gpus=0)  # type: ignore[arg-type]
    service = Service(
        "d", "decode-r0", "decode", node, "", ["python3"], {"DYN_SYSTEM_PORT": str(port)}, None,  # type: ignore[arg-type]
        Probe("running"), 1.0, group="decode", rank=0, engine="mocker",
    )  # fmt: skip
    return LocalHost(node, Options()), service


@pytest.mark.parametrize("behaviour", [endless, trickle], ids=["endless", "one byte at a time"])
def test_a_metrics_peer_that_never_ends_its_answer_is_cut_off(behaviour):
    port, thread = serve_once(behaviour)
    host, service = worker_at(port)
    started = time.monotonic()
    assert in_flight(host, service, deadline=time.monotonic() + 2) is None
    took = time.monotonic() - started
    assert took < 5, f"the read took {took:.1f}s"
    thread.join(timeout=35)


def test_a_metrics_peer_that_answers_well_is_read():
    body = f"{GAUGE}}} 7\n".encode()
    port, thread = serve_once(
        lambda conn: conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
    )
    host, service = worker_at(port)
    assert in_flight(host, service, deadline=time.monotonic() + 5) == 7
    thread.join(timeout=5)


def answer(body: bytes):
    return lambda conn: conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))


def test_a_metrics_answer_nested_too_deep_for_json_is_unreadable_not_a_crash():
    """`[[[[...` (100 KB, within the size bound) made json.loads raise RecursionError through in_flight:
    the whole node's drain ended as "node failed", its other workers neither counted nor signalled."""
    port, thread = serve_once(answer(b"[" * 100_000))
    host, service = worker_at(port)
    assert in_flight(host, service, deadline=time.monotonic() + 5) is None
    thread.join(timeout=5)


def test_an_answer_cut_at_the_deadline_is_no_count_not_its_first_part():
    """The peer sends `... 1`, then after the deadline `2\\n` (its count is 12): the cut read ended as
    at the answer's end, and its first part was read as the count, 1."""
    body = f"{GAUGE}}} 12\n".encode()

    def in_halves(conn):
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body[:-2]))
        time.sleep(1)  # well past the 0.5 s deadline
        conn.sendall(body[-2:])

    port, thread = serve_once(in_halves)
    host, service = worker_at(port)
    assert in_flight(host, service, deadline=time.monotonic() + 0.5) is None
    thread.join(timeout=5)


def test_a_peer_slow_to_open_then_trickling_is_cut_off_at_the_deadline():
    """The whole-exchange deadline passed while the socket was still being opened (a slow SSH channel):
    it found no socket to shut, and the trickle after it was read for as long as the peer sent."""
    port, thread = serve_once(trickle)

    def slow_open() -> socket.socket:
        time.sleep(0.7)
        return socket.create_connection(("127.0.0.1", port), timeout=0.5)

    started = time.monotonic()
    with pytest.raises(ConnectionError, match="no whole answer .* within 0.5s"):
        http.request(slow_open, "GET", "127.0.0.1", port, "/metrics", None, 0.5, limit=1000)
    took = time.monotonic() - started
    assert took < 5, f"the read took {took:.1f}s"
    thread.join(timeout=35)


# -- the plan ------------------------------------------------------------------------------------------


def test_prefill_workers_drain_before_decode_and_only_dynamo_ranks_that_serve_generate():
    local = plan_of("local.yaml")
    assert [[s.service for s in phase] for phase in drain.phases(local)] == [["prefill-r0"], ["decode-r0"]]
    # dynamo-sglang: only node-rank 0 registers `generate`; the other ranks stop with it
    wide = plan_of("dsr1-104gpu.yaml")
    assert [[s.service for s in phase] for phase in drain.phases(wide)] == [["prefill-r0"], ["decode-r0"]]
    # plain SGLang behind its router: rank 0 of each group, the URL the router was given, prefill first
    pd = plan_of("sglang-1p1d-32gpu.yaml")
    assert [[s.service for s in phase] for phase in drain.phases(pd)] == [["prefill-r0"], ["decode-r0"]]
    assert drain.not_drained(pd) == []


def test_the_sglang_workers_behind_the_router_are_the_urls_it_was_given(tmp_path):
    pd = plan_of("sglang-1p1d-32gpu.yaml")
    router = next(s for s in pd.services if s.role == "router")
    routed = {pd_name.split("-", 2)[-1]: (r.service, url) for pd_name, (r, url) in drain.routed(pd.services).items()}
    assert routed == {
        "prefill-r0": ("router", "http://192.0.2.40:30000"),
        "decode-r0": ("router", "http://192.0.2.42:30000"),
    }
    given = router.command[router.command.index("--pd-disaggregation") :]
    assert all(url in given for _, url in routed.values())
    assert drain.router_api(router) == "http://192.0.2.40:8000"
    # what the plan says of it
    text = plan_views.to_text(pd)
    assert "drain: `down` takes the SGLang workers out of the router first (its /workers API)" in text
    assert "Dynamo workers" not in text
    # mini_lb (SGLang 0.5.1's) has no worker API: nothing drained through it, said as before
    data = yaml.safe_load((REPO / "configs" / "sglang-1p1d-32gpu.yaml").read_text())
    data["services"]["router"]["kind"] = "mini_lb"
    data["versions"] = {"sglang": "0.5.1"}
    path = tmp_path / "mini.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    mini = build(load(path, environ={}))
    assert drain.routed(mini.services) == {} and drain.phases(mini) == []
    assert drain.not_drained(mini) == ["decode", "prefill"]


ROUTER = REPO / "tests" / "data" / "router"


def test_the_real_routers_worker_list_gives_each_workers_id_and_its_metrics_the_count():
    listed = json.loads((ROUTER / "sglang-router-0.3.2-workers.json").read_text())
    after = json.loads((ROUTER / "sglang-router-0.3.2-workers-after-delete.json").read_text())
    deleted = json.loads((ROUTER / "sglang-router-0.3.2-delete.json").read_text())
    decode, prefill = "http://127.0.0.1:37302", "http://127.0.0.1:37301"
    assert drain.router_worker_id(listed, decode) == deleted["worker_id"] == "285df6e8-39b7-48e1-9b68-ed16e69665b6"
    assert drain.router_worker_id(listed, prefill) == "1ab66203-bd71-47de-93b7-ecbdf50ddd4d"
    assert drain.router_worker_id(after, decode) is None  # removed: no longer listed
    assert drain.router_worker_id(after, prefill) == "1ab66203-bd71-47de-93b7-ecbdf50ddd4d"
    assert drain.router_worker_id(listed, "http://127.0.0.1:1") is None
    metrics = (ROUTER / "sglang-router-0.3.2-metrics-after-delete.txt").read_text()
    assert drain.router_in_flight(metrics, decode) == 0
    busy = metrics.replace(
        f'smg_worker_requests_active{{worker="{decode}"}} 0', f'smg_worker_requests_active{{worker="{decode}"}} 4'
    )
    assert busy != metrics and drain.router_in_flight(busy, decode) == 4
    with pytest.raises(ValueError, match="no in-flight count for that worker"):
        drain.router_in_flight(metrics, prefill)  # no series for it: unknown, not 0


URL = "http://10.0.0.1:30000"


@pytest.mark.parametrize(
    ("answer", "why"),
    [
        ("<html>gateway</html>", "no `workers` list"),
        ({"workers": {"url": URL}}, "no `workers` list"),
        ({"workers": [{"url": URL, "id": "../../shutdown"}]}, "not a UUID"),
        ({"workers": [{"url": URL, "id": "1ab66203-bd71-47de-93b7-ecbdf50ddd4d/../x"}]}, "not a UUID"),
        ({"workers": [{"url": URL}]}, "not a UUID"),
        ({"workers": [{"url": URL, "id": 7}]}, "not a UUID"),
        ({"workers": [{"url": "x", "id": "y"}] * 5000}, "over 4096 workers"),
    ],
)
def test_a_hostile_worker_list_is_refused_in_a_short_reason(answer, why):
    with pytest.raises(ValueError, match=why) as refused:
        drain.router_worker_id(answer, URL)
    assert len(str(refused.value)) < 80 and "\n" not in str(refused.value)
    # entries that are not objects, or other workers', are passed over
    assert drain.router_worker_id({"workers": [1, "x", None, {"url": "y", "id": "z"}]}, URL) is None


def test_a_drain_behind_the_router_says_what_came_of_the_removal():
    d = drain.Drain("decode-r0", 1, 3, 2.5, "drained", 0, router="removed from the router")
    assert d.describe() == "decode-r0 on node 1: removed from the router; 3 request(s) in flight, drained in 2.5s"


def test_the_plan_sets_the_grace_period_and_migration_and_says_so():
    local = plan_of("local.yaml")
    workers = [s for s in local.services if s.group]
    assert {s.env[drain.GRACE_ENV] for s in workers} == {"60"}
    frontend = next(s for s in local.services if s.role == "frontend")
    assert frontend.command[-2:] == ["--migration-limit", "3"]
    text = plan_views.to_text(local)
    assert "drain: a stop lets the Dynamo workers finish their requests first, up to 60s" in text
    assert "request migration: a stream whose worker dies continues on another, up to 3 time(s)" in text
    assert plan_views.to_json(local)["stop"] == {"drain_timeout": 60, "migration_limit": 3}
    pd = plan_of("sglang-1p1d-32gpu.yaml")
    assert not any(drain.GRACE_ENV in s.env for s in pd.services)
    assert "drain: a stop lets the Dynamo workers" not in plan_views.to_text(pd)


def launcher_plan(tmp_path: Path, edit) -> subprocess.CompletedProcess:
    data = yaml.safe_load((REPO / "configs" / "local.yaml").read_text().replace("${CONFIG_DIR}", str(REPO / "configs")))
    edit(data)
    path = tmp_path / "d.yaml"
    path.write_text(yaml.safe_dump(data))
    argv = [sys.executable, "-m", "launcher", "plan", str(path)]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, env=fresh_env(), cwd=tmp_path)


def test_the_file_sets_both_and_bad_values_are_one_line_exit_2(tmp_path):
    def tuned(data):
        data["drain_timeout"] = 7.5
        data["services"]["frontend"]["migration_limit"] = 0

    ok = launcher_plan(tmp_path, tuned)
    assert ok.returncode == 0, ok.stderr
    assert "up to 7.5s (drain_timeout" in ok.stdout and "DYN_GRACEFUL_SHUTDOWN_GRACE_PERIOD_SECS=7.5" in ok.stdout
    assert "request migration: off" in ok.stdout and "--migration-limit" not in ok.stdout
    bad = [
        (lambda d: d.update(drain_timeout=-1), "drain_timeout"),
        (lambda d: d.update(drain_timeout=86400), "drain_timeout"),
        (lambda d: d["services"]["frontend"].update(migration_limit="lots"), "migration_limit"),
        (lambda d: d["services"]["frontend"].update(args={"migration-limit": 2}), "--migration-limit is set from"),
    ]
    for edit, what in bad:
        r = launcher_plan(tmp_path, edit)
        assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert what in r.stderr and "Traceback" not in r.stderr, r.stderr


@pytest.mark.parametrize(
    "key, value, says",
    [
        ("drain_timeout", True, "drain_timeout: expected a number, got True"),  # was a drain of 1 s
        ("migration_limit", True, "migration_limit: expected a whole number, got True"),  # was 1 migration
        ("migration_limit", 2.0, "migration_limit: expected a whole number, got 2.0"),
    ],
)
def test_a_yes_or_a_float_is_not_taken_for_a_number(tmp_path, capsys, key, value, says):
    data = yaml.safe_load((REPO / "configs" / "local.yaml").read_text().replace("${CONFIG_DIR}", str(REPO / "configs")))
    (data if key == "drain_timeout" else data["services"]["frontend"])[key] = value
    path = tmp_path / "d.yaml"
    path.write_text(yaml.safe_dump(data))
    code, out, err = run_cli(["plan", str(path)], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and says in err, (out, err)


def test_each_drain_is_said_in_one_line_whatever_its_end():
    assert drain.Drain("decode-r0", 3, 6, 4.25, "exited", 0).describe() == (
        "decode-r0 on node 3: 6 request(s) in flight, drained in 4.2s (exited)"
    )
    assert drain.Drain("decode-r1", 4, 2, 1.0, "drained", 0).describe().endswith("drained in 1.0s")
    timed_out = drain.Drain("decode-r0", 3, None, 60.04, "timed out", None).describe()
    assert timed_out == (
        "decode-r0 on node 3: an unknown number of request(s) in flight, drain_timeout reached after 60.0s"
        " with an unknown number still in flight"
    )
    assert drain.Drain("prefill-r0", 0, outcome="not running").describe().endswith("not running, nothing to drain")
    failed = drain.Drain("decode-r0", 2, outcome="node failed: timed out: no answer").describe()
    assert failed == "decode-r0 on node 2: not drained, node failed: timed out: no answer"


def test_import_of_a_migration_limit_that_is_not_ascii_digits_is_no_crash(tmp_path, capsys):
    """`launcher import` reads the frontend's --migration-limit from its Deployment: `²` (a digit to
    str.isdigit, not to int) or 5,000 digits were a traceback; now they are carried into the frontend's
    `args` as written, which `plan` names in one line; a plain `5` is still read as migration_limit 5."""
    out = tmp_path / "manifests"
    config = REPO / "configs" / "vllm-wideep-16gpu.yaml"
    code, _, err = run_cli(["export", str(config), "--to", "lws", "-o", str(out)], capsys)
    assert code == 0, err
    files = {p: list(yaml.safe_load_all(p.read_text())) for p in sorted(out.iterdir())}
    for i, (value, expected) in enumerate((("5", 5), ("²", None), ("9" * 5000, None))):
        for path, docs in files.items():
            for doc in docs:
                for c in (doc or {}).get("spec", {}).get("template", {}).get("spec", {}).get("containers", []):
                    argv = [*c.get("command", []), *c.get("args", [])]
                    if "dynamo.frontend" in argv:
                        key = "command" if "--migration-limit" in c.get("command", []) else "args"
                        c[key][c[key].index("--migration-limit") + 1] = value
            path.write_text(yaml.safe_dump_all(docs, sort_keys=False))
        back = tmp_path / f"back-{i}.yaml"
        code, _, err = run_cli(["import", *map(str, files), "-o", str(back)], capsys)
        assert "Traceback" not in err and err.startswith("imported 2 group(s)"), err
        frontend = yaml.safe_load(back.read_text())["services"]["frontend"]
        assert frontend.get("migration_limit") == expected, frontend
        if expected is None:  # written as it was, and said in one more line not to plan (exit 1)
            assert frontend["args"][:2] == ["--migration-limit", value], frontend
            assert code == 1 and len(err.strip().splitlines()) == 2, err
            assert "--migration-limit is set from services.frontend.migration_limit" in err, err
        else:
            assert code == 0, err


def test_up_drains_a_recreated_worker_only_where_its_group_still_serves():
    """`up` recreating a group drains its Dynamo worker first (plan.drain.recreated) while every rank it runs
    runs (judged by the group label the containers were started with); a group that lost a rank cannot
    finish what it holds, so its leader is not waited for; one the file now gives more ranks still serves."""
    from launcher.plan.state import Container

    plan = plan_of("dsr1-104gpu.yaml")  # DeepSeek-R1 on 104 GPUs: Dynamo's SGLang groups over many nodes
    group = next(g for g in plan.groups if len(g.node_indices) > 1)
    ranks = [s for s in plan.services if s.group == group.name]

    def listed(exited: str | None) -> list[Container]:
        labels = {"launcher.group": group.name}
        return [
            Container(s.node.index, f"id{i}", s.name, labels, "exited" if s.name == exited else "running", 0)
            for i, s in enumerate(ranks)
        ]

    leader = next(s for s in ranks if s.rank == 0)
    assert [s.name for s in drain.recreated(plan, listed(None))] == [leader.name]
    assert drain.recreated(plan, listed(ranks[-1].name)) == []  # a rank died: nothing to wait for
    assert [s.name for s in drain.recreated(plan, listed(None)[:1])] == [leader.name]  # the file grew the group


def test_down_looks_for_strays_only_where_a_group_has_a_drain(tmp_path):
    """`down` lists the nodes for replicas the file no longer has only where some group has a drain (a
    Dynamo engine, or workers behind the sglang-router): a stray is drained as its group's engine is, so a
    `command` or plain vLLM deployment spares every node that round trip."""
    from types import SimpleNamespace

    from launcher.commands.down import drainable

    assert drainable(SimpleNamespace(plan=plan_of("local.yaml")))  # mockers
    assert drainable(SimpleNamespace(plan=plan_of("sglang-1p1d-32gpu.yaml")))  # behind the router
    data = yaml.safe_load((REPO / "configs" / "local.yaml").read_text().replace("${CONFIG_DIR}", str(REPO / "configs")))
    for group in data["groups"].values():
        group.update(engine="command", args=["sleep", "30"])
        group.pop("bootstrap_port", None)
        group.pop("system_port", None)
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(data))
    assert not drainable(SimpleNamespace(plan=build(load(tmp_path / "c.yaml", environ={}))))
