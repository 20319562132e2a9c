"""`watch`'s rules, pure: the progress rule (launcher.plan.stall) on real Dynamo scrapes, the health probe
rule (launcher.plan.liveness) and its probes against hostile peers on loopback, the restart budget and
back-off (watch.Budget), which setting wins (flag, group, deployment, default), the file's `watch:` keys
and the alert webhook (a receiver written here on loopback: the user's endpoint)."""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from launcher.commands.watch import Budget, Unit, budget_of, units
from launcher.config.load import load as load_config
from launcher.config.schema import WatchPolicy
from launcher.errors import ConfigError
from launcher.operations import alert
from launcher.plan import observe
from launcher.plan.build import build as build_plan
from launcher.plan.liveness import MIN_FAILED, Liveness
from launcher.plan.stall import Tracker, in_flight, progress_count
from tests.helpers import MINIMAL, run_cli, write

DATA = Path(__file__).resolve().parents[1] / "data" / "metrics"
DECODE = (DATA / "dynamo-1.6.1-mocker-decode.txt").read_text()
PREFILL = (DATA / "dynamo-1.6.1-mocker-prefill.txt").read_text()


def with_value(text: str, sample: str, value: float) -> str:
    """The scrape with one sample (its first series) set to VALUE: a later scrape of the same rank."""
    return re.sub(rf"^({re.escape(sample)}(?:\{{[^}}]*\}})?) \S+$", rf"\g<1> {value}", text, count=1, flags=re.M)


def decode(running: float, itl: float) -> observe.Parsed:
    text = with_value(DECODE, "vllm:num_requests_running", running)
    return observe.parse(with_value(text, "vllm:inter_token_latency_seconds_count", itl))


# -- the progress rule ----------------------------------------------------------------------------


def test_the_real_scrapes_give_work_in_flight_and_a_progress_count():
    assert in_flight(decode(3, 241)) == 3
    # an engine gauge still at 0 while Dynamo counts 2 requests in its handler (a step that never ends)
    held = observe.parse(with_value(DECODE, "dynamo_component_inflight_requests", 2))
    assert held.first(("vllm:num_requests_running",)) == 0 and in_flight(held) == 2
    assert progress_count(decode(3, 241)) == progress_count(decode(3, 240)) + 1  # one more token: progress
    prefill = observe.parse(PREFILL)  # Dynamo's own metrics only: in-flight requests and bytes streamed back
    assert in_flight(prefill) == 0 and progress_count(prefill) == 3885


def test_a_rank_with_work_in_flight_and_no_progress_is_hung_after_the_window():
    tracker = Tracker()
    states = [tracker.see("r0", at, decode(2, 100), window=10).state for at in (0, 5, 9.9, 10)]
    assert states == ["progressing", "stalled", "stalled", "hung"]
    verdict = tracker.see("r0", 12, decode(2, 100), window=10)
    assert verdict.hung and verdict.line == "2 request(s) running, no token progress for 12.0s"
    # one token more and it is progressing again; its stall counts from there
    assert tracker.see("r0", 13, decode(2, 101), window=10).state == "progressing"
    assert tracker.see("r0", 22, decode(2, 101), window=10).state == "stalled"


def test_an_idle_rank_is_never_hung_however_long_nothing_moves():
    tracker = Tracker()
    assert {tracker.see("r0", at, decode(0, 100), window=10).state for at in range(0, 100, 5)} == {"idle"}
    # work arriving starts the clock then, not at the last token an hour ago
    assert tracker.see("r0", 100, decode(1, 100), window=10).state == "stalled"
    assert tracker.see("r0", 111, decode(1, 100), window=10).hung


def test_no_data_neither_proves_progress_nor_makes_a_rank_hung():
    tracker = Tracker()
    tracker.see("r0", 0, decode(1, 100), window=10)
    assert tracker.see("r0", 30, None, window=10).state == "no data"
    assert tracker.see("r0", 31, decode(1, 100), window=10).hung  # the stall went on meanwhile
    blank = observe.parse("# nothing a rank counts\nother_metric 1\n")
    assert tracker.see("r1", 0, blank, window=1).state == "no data"
    assert tracker.see("r1", 50, blank, window=1).state == "no data"


def test_a_counter_that_went_down_is_a_restarted_engine_not_a_stall():
    tracker = Tracker()
    tracker.see("r0", 0, decode(1, 500), window=10)
    assert tracker.see("r0", 9, decode(1, 3), window=10).state == "progressing"
    tracker.forget(["r0"])
    assert tracker.see("r0", 100, decode(1, 3), window=10).state == "progressing"  # a fresh start


# -- the health probe rule -------------------------------------------------------------------------


def test_a_rank_that_stops_answering_is_unhealthy_after_the_window_and_three_failed_probes():
    live = Liveness()
    assert live.see("r0", "c1", 0, None, window=10, grace=600) is None  # it passed: judged from now on
    seen = [live.see("r0", "c1", at, "timed out", window=10, grace=600) for at in (2, 4, 8, 11.9, 12)]
    assert seen == [None, None, None, None, "unhealthy for 10s: timed out"]  # counted from the first failure
    # a short window still takes MIN_FAILED probes in a row: one slow answer on a loaded rank is not a fault
    quick = Liveness()
    quick.see("r0", "c1", 0, None, window=0.5, grace=600)
    assert [quick.see("r0", "c1", at, "HTTP 503", window=0.5, grace=600) for at in range(1, MIN_FAILED + 1)] == [
        *[None] * (MIN_FAILED - 1),
        f"unhealthy for {MIN_FAILED - 1}s: HTTP 503",
    ]


def test_a_probe_that_passes_again_starts_the_count_over():
    live = Liveness()
    live.see("r0", "c1", 0, None, window=4, grace=600)
    assert live.see("r0", "c1", 1, "timed out", window=4, grace=600) is None
    assert live.see("r0", "c1", 2, "timed out", window=4, grace=600) is None
    assert live.see("r0", "c1", 3, None, window=4, grace=600) is None  # answered: not failing any more
    again = [live.see("r0", "c1", at, "timed out", window=4, grace=600) for at in (4, 6, 8)]
    assert again == [None, None, "unhealthy for 4s: timed out"]


def test_a_rank_loading_is_judged_only_past_its_ready_timeout_and_a_new_container_afresh():
    live = Liveness()
    # never passed since this watch first saw its container: loading its weights, `up`'s wait
    assert {live.see("r0", "c1", at, "connection refused", window=2, grace=60) for at in range(0, 60, 2)} == {None}
    assert live.see("r0", "c1", 60, "connection refused", window=2, grace=60) == "unhealthy for 60s: connection refused"
    # recreated (another container id): a fresh start, whatever the old one did
    assert live.see("r0", "c2", 61, "connection refused", window=2, grace=60) is None
    assert live.see("r0", "c2", 62, None, window=2, grace=60) is None
    frozen = [live.see("r0", "c2", at, "timed out", window=2, grace=60) for at in (63, 64, 65)]
    assert frozen == [None, None, "unhealthy for 2s: timed out"]


# -- giving up on one unit ------------------------------------------------------------------------


def test_a_unit_given_up_on_is_taken_back_only_once_recreated_by_someone_else(tmp_path):
    from launcher.commands.watch import Watcher
    from launcher.plan.state import Container
    from tests.helpers import local_command_deployment

    plan = build_plan(load_config(local_command_deployment(tmp_path, "back", "g", "true"), environ={}))
    (unit,) = units(plan)
    said: list[str] = []
    w = Watcher(None, type("Said", (), {"log": staticmethod(said.append)})(), [unit])  # type: ignore[arg-type]
    rank = plan.services[0]

    def listed(container_id: str, state: str = "running"):
        return {(rank.node.index, rank.name): Container(rank.node.index, container_id, rank.name, {}, state, 0)}

    key = (rank.node.index, rank.name)
    unit.times, unit.given_up, unit.gave_up_after = [1.0, 2.0], {key: None}, "2 restart(s)"
    w.taken_back(unit, listed("41"))  # not listed when watch gave up (its node unseen): what runs now is the baseline
    assert unit.given_up == {key: "41"} and not said
    assert w.gave_up_on() == "group g (after 2 restart(s))"
    w.taken_back(unit, listed("41"))  # the one it gave up on, still running (a hung rank): stays given up
    w.taken_back(unit, listed("42", "exited"))  # recreated, but not running
    w.taken_back(unit, {})  # gone, or its node unseen
    assert unit.given_up == {key: "41"} and not said
    w.taken_back(unit, listed("42"))  # a `launcher up` recreated it: watched again, from a fresh budget
    assert unit.given_up is None and unit.restarts == 0 and w.gave_up_on() == ""
    assert said == ["group g: runs again, recreated since watch gave up on it: watched again, budget fresh"]
    unit.given_up = {key: ""}  # gone from a node that answered when watch gave up (its restart's start failed)
    w.taken_back(unit, listed("43"))  # whatever runs there now was started since
    assert unit.given_up is None and len(said) == 2


# -- the budget and back-off ----------------------------------------------------------------------


def test_backoff_doubles_and_the_budget_counts_restarts_within_its_window():
    budget, unit = Budget(max_restarts=3, backoff=10, within=300), Unit("group decode", [])
    budget.count(unit, 0)
    assert unit.next_allowed == 10
    budget.count(unit, 10)
    assert unit.next_allowed == 30
    budget.count(unit, 30)
    assert unit.next_allowed == 70
    assert budget.exhausted(unit, 70)  # 3 restarts in 5 minutes
    assert not budget.exhausted(unit, 301)  # the first dropped out of the window: one more is allowed
    assert unit.restarts == 2


def test_without_a_window_the_count_resets_only_after_reset_after_healthy_seconds():
    budget, unit = Budget(max_restarts=2, backoff=1, reset_after=60), Unit("etcd", [])
    budget.count(unit, 0)
    budget.count(unit, 5)
    assert budget.exhausted(unit, 10_000)
    assert budget.healthy(unit, 30) is None and unit.restarts == 2
    assert budget.healthy(unit, 66) == "healthy for 60s, restart count reset"
    assert unit.restarts == 0 and unit.next_allowed == 0 and not budget.exhausted(unit, 66)


def test_a_flag_given_wins_over_the_group_which_wins_over_the_deployment_and_the_default(tmp_path):
    text = MINIMAL + "watch: {max_restarts: 7, backoff: 2, hung_after: 30}\n"
    text = text.replace(
        "    args: {tp-size: 16}\n", "    args: {tp-size: 16}\n    watch: {max_restarts: 2, within: 10}\n"
    )
    plan = build_plan(load_config(write(tmp_path, text), environ={}))
    found = {u.name: u.budget for u in units(plan)}
    assert found["group decode"] == Budget(max_restarts=2, backoff=2, within=600, hung_after=30)
    assert found["group prefill"] == Budget(max_restarts=7, backoff=2, hung_after=30)
    assert found["etcd"] == Budget()  # single services: flags or the defaults
    flagged = {u.name: u.budget for u in units(plan, {"max_restarts": 4, "backoff": None, "reset_after": 9})}
    assert flagged["group decode"] == Budget(max_restarts=4, backoff=2, reset_after=9, within=600, hung_after=30)
    assert budget_of(WatchPolicy(), {}) == Budget(max_restarts=5, backoff=5.0, reset_after=600.0)
    assert budget_of(WatchPolicy(), {}).unhealthy_after == 10  # a frozen rank: caught within seconds
    sick = MINIMAL + "watch: {unhealthy_after: 30}\n"
    sick = sick.replace("    args: {tp-size: 16}\n", "    args: {tp-size: 16}\n    watch: {unhealthy_after: 4}\n")
    found = {u.name: u.budget for u in units(build_plan(load_config(write(tmp_path, sick), environ={})))}
    assert (found["group decode"].unhealthy_after, found["group prefill"].unhealthy_after) == (4, 30)
    assert found["group decode"].describe(probed=True).endswith(", unhealthy after 4s failing its health probe")


@pytest.mark.parametrize(
    ("watch", "expected"),
    [
        ("{hung_after: 0}", "watch.hung_after"),
        ("{unhealthy_after: -2}", "watch.unhealthy_after"),
        ("{max_restarts: true}", "watch.max_restarts"),
        ("{within: -1}", "watch.within"),
        ("{retries: 3}", "watch.retries"),
    ],
)
def test_bad_watch_keys_give_one_line_naming_the_key(tmp_path, capsys, watch, expected):
    text = MINIMAL.replace("    args: {tp-size: 16}\n", f"    args: {{tp-size: 16}}\n    watch: {watch}\n")
    code, _, err = run_cli(["plan", str(write(tmp_path, text))], capsys)
    assert code == 2 and "Traceback" not in err, err
    assert f"groups.decode.{expected}" in err.splitlines()[0], err


def test_the_webhook_must_be_a_declared_secret_holding_an_http_url(tmp_path):
    text = MINIMAL + "secrets: [HOOK]\nwatch: {webhook_url_env: HOOK}\n"
    plan = build_plan(load_config(write(tmp_path, text), environ={"HOOK": "http://127.0.0.1:9/alert"}))
    assert plan.watch_webhook_env == "HOOK"
    with pytest.raises(ConfigError) as not_url:
        build_plan(load_config(write(tmp_path, text), environ={"HOOK": "ftp://secret-host/x"}))
    assert "HOOK must hold an http:// or https:// URL" in str(not_url.value)
    assert "secret-host" not in str(not_url.value)
    undeclared = MINIMAL + "watch: {webhook_url_env: HOOK}\n"
    with pytest.raises(ConfigError, match="HOOK: expected a secret declared under `secrets:`"):
        build_plan(load_config(write(tmp_path, undeclared), environ={"HOOK": "http://x"}))


# -- the webhook ----------------------------------------------------------------------------------


class Receiver(ThreadingHTTPServer):
    """The user's alert endpoint on loopback: counts what it is sent; `delay` makes it slow to answer."""

    daemon_threads = True

    def __init__(self, delay: float = 0.0):
        self.received: list[dict] = []
        self.delay = delay
        super().__init__(("127.0.0.1", 0), _Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/hooks/T0KEN-in-the-path"


class _Handler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        time.sleep(self.server.delay)  # type: ignore[attr-defined]
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.server.received.append(json.loads(body))  # type: ignore[attr-defined]
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


def plan_with_hook(tmp_path: Path, url: str):
    text = MINIMAL + "secrets: [HOOK]\nwatch: {webhook_url_env: HOOK}\n"
    return build_plan(load_config(write(tmp_path, text), environ={"HOOK": url}))


def test_the_webhook_receives_the_alert_as_json(tmp_path):
    receiver = Receiver()
    try:
        said = alert.webhook(plan_with_hook(tmp_path, receiver.url), {"unit": "group decode", "event": "gave up"})
    finally:
        receiver.shutdown()
    assert said == "webhook (HOOK) answered HTTP 204"
    assert receiver.received == [{"unit": "group decode", "event": "gave up"}]


def test_a_failed_or_slow_webhook_is_one_line_within_the_timeout_and_never_shows_the_url(tmp_path, monkeypatch):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}/hooks/T0KEN-in-the-path"
    said = alert.webhook(plan_with_hook(tmp_path, closed), {"event": "gave up"})
    assert said is not None and said.startswith("webhook (HOOK) failed: ") and "T0KEN" not in said, said
    monkeypatch.setattr(alert, "WEBHOOK_TIMEOUT", 0.5)
    slow = Receiver(delay=3)
    try:
        started = time.monotonic()
        said = alert.webhook(plan_with_hook(tmp_path, slow.url), {"event": "gave up"})
        took = time.monotonic() - started
    finally:
        slow.shutdown()
    assert said == "webhook (HOOK) failed: no answer within 0.5s", said
    assert took < 2.5, took  # bounded: not the receiver's 3 s
    assert alert.webhook(build_plan(load_config(write(tmp_path, MINIMAL), environ={})), {}) is None


# -- one-shot views (status, top --once): a stall shorter than the file's window is not `hung` -------------


class StuckRank(ThreadingHTTPServer):
    """A rank's /metrics on loopback: 2 requests running, its token counters never moving."""

    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), _Metrics)
        threading.Thread(target=self.serve_forever, daemon=True).start()


class _Metrics(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        body = with_value(DECODE, "vllm:num_requests_running", 2).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.mark.parametrize(("hung_after", "state"), [(60, "stalled"), (1, "hung")])
def test_a_one_shot_view_names_hung_only_after_the_files_window(tmp_path, hung_after, state):
    from launcher.operations import rank_progress
    from launcher.plan.metrics import ScrapeTarget
    from tests.helpers import connected_target, local_command_deployment

    config = local_command_deployment(tmp_path, "stall", "worker", "sleep 1", watch={"hung_after": hung_after})
    plan = build_plan(load_config(config, environ={}))
    rank = StuckRank()
    try:
        target_ = ScrapeTarget(plan.services[0], f"http://127.0.0.1:{rank.server_address[1]}/metrics", "worker")
        with connected_target(plan) as t:
            seen = rank_progress.stalls_over(t, [target_])
    finally:
        rank.shutdown()
    verdict = seen[plan.services[0].name]
    assert verdict.state == state and "2 request(s) running, no token progress for" in verdict.line, verdict


def test_a_budget_from_the_flags_never_overflows_its_back_off():
    """--max-restarts has no upper bound (the file's has 1000): past 1024 restarts, 2**n no longer fits a
    float, and the back-off must stay a number rather than end `watch` with a traceback."""
    budget, unit = Budget(max_restarts=5000, backoff=0.5, reset_after=10**9), Unit("group decode", [])
    for at in range(1100):
        budget.count(unit, float(at))
    assert unit.restarts == 1100 and 1099 < unit.next_allowed < float("inf")
    assert not budget.exhausted(unit, 1100.0)


# -- the health probes of `watch`: answers from the network, never trusted ------------------------


class HostileRank(ThreadingHTTPServer):
    """A rank's health endpoint on loopback, one behaviour per path: /ok answers ready; /frozen reads the
    request and never answers (a SIGSTOPped engine: the kernel accepts, nothing replies); /huge sends a
    megabyte of JSON; /ugly a 503 whose words hold newlines and escapes."""

    daemon_threads = True

    def __init__(self):
        self.release = threading.Event()
        super().__init__(("127.0.0.1", 0), _Hostile)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}{path}"


class _Hostile(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        if self.path == "/frozen":
            self.server.release.wait(30)  # type: ignore[attr-defined]
            return
        status, body = {
            "/ok": (200, b'{"status": "ready"}'),
            "/huge": (200, b'{"status": "ready", "pad": "' + b"x" * (1 << 20) + b'"}'),
            "/ugly": (503, b'{"status": "notready\\n\\u001b[31mERROR\\r", "reason": "' + b"y" * 5000 + b'"}'),
        }[self.path]
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


def test_each_probe_is_bounded_in_time_and_bytes_and_a_bad_answer_is_one_line(tmp_path, monkeypatch):
    import dataclasses

    from launcher.operations import health
    from launcher.plan.types import Probe
    from tests.helpers import connected_target, local_command_deployment

    monkeypatch.setattr(health, "PROBE_TIMEOUT", 1.0)
    plan = build_plan(load_config(local_command_deployment(tmp_path, "probes", "worker", "true"), environ={}))
    rank = HostileRank()
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}/health"
    urls = {"ok": rank.url("/ok"), "frozen": rank.url("/frozen"), "huge": rank.url("/huge"),
            "ugly": rank.url("/ugly"), "closed": closed}  # fmt: skip
    ranks = [
        dataclasses.replace(plan.services[0], service=name, probe=Probe("http", url, {"status": "ready"}))
        for name, url in urls.items()
    ]
    try:
        with connected_target(plan) as t:
            started = time.monotonic()
            said = {name.removeprefix("probes-"): why for name, why in health.failures(t, ranks).items()}
            took = time.monotonic() - started
    finally:
        rank.release.set()
        rank.shutdown()
    assert took < 2.5, took  # all at once, each within the probe's timeout: not the sum, not the peer's pace
    assert said["ok"] is None, said
    assert said["frozen"] == f"no whole answer from 127.0.0.1:{rank.server_address[1]}/frozen within 1s", said
    assert "over 65536 bytes" in said["huge"], said
    assert "refused" in said["closed"].lower(), said
    assert said["ugly"].startswith("HTTP 503 notready"), said
    for why in said.values():
        assert why is None or (why.isprintable() and len(why) <= 200), said


def test_a_plain_sglang_leader_is_asked_a_page_its_http_server_answers_without_generating():
    """SGLang's /health generates a token (up to 20 s under load): watch's liveness look asks rank 0 for
    /get_model_info instead; ranks 1 and up, and Dynamo's workers, keep their readiness probe."""
    from launcher.config.load import load
    from launcher.plan import readiness
    from launcher.plan.build import build
    from tests.helpers import REPO

    plan = build(load(REPO / "configs" / "sglang-tp16-2node.yaml", environ={"CONFIG_DIR": "/repo/configs"}))
    ranks = sorted((s for s in plan.services if s.engine == "sglang"), key=lambda s: s.rank)
    urls = [readiness.liveness_probe(s).url for s in ranks]
    assert (
        urls[0].endswith("/get_model_info")
        and urls[0].removesuffix("/get_model_info") + "/health" == ranks[0].probe.url
    )
    assert urls[1:] == [s.probe.url for s in ranks[1:]] and all(u.endswith("/health") for u in urls[1:])
    local = build(load(REPO / "configs" / "local.yaml", environ={"CONFIG_DIR": "/repo/configs"}))
    assert all(readiness.liveness_probe(s) == s.probe for s in local.services)


def test_unhealthy_after_0_leaves_the_ranks_unjudged_by_their_probe(tmp_path):
    import yaml

    from launcher.commands import watch
    from launcher.config.load import load
    from launcher.plan.build import build
    from tests.helpers import REPO

    data = yaml.safe_load((REPO / "configs" / "local.yaml").read_text().replace("${CONFIG_DIR}", str(REPO / "configs")))
    data["groups"]["decode"]["watch"] = {"unhealthy_after": 0}
    (tmp_path / "w.yaml").write_text(yaml.safe_dump(data))
    units = {u.name: u for u in watch.units(build(load(tmp_path / "w.yaml", environ={})))}
    assert units["group decode"].probed == [] and len(units["group prefill"].probed) == 1
    assert "not judged by its health probe (unhealthy_after 0)" in units["group decode"].budget.describe(probed=True)
