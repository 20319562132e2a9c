"""`top`, `metrics:` and `collect` on the embedded default, for real: the Dynamo 1.6.1 frontend and mockers
as local processes, a real Prometheus server (Debian's, scripts/install-prometheus) scraping them, and
fresh `launcher` processes as a user runs them. configs/local.yaml with its fixed ports moved and its state
in the test's directory (tests.helpers.local_stack): a quickstart running on this machine is left alone."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tarfile
import threading
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml

from tests.conftest import in_ci, unavailable
from tests.helpers import (
    REPO,
    ChatLoad,
    free_port,
    fresh_env,
    local_command_deployment,
    local_stack,
    top_rounds,
    wait_for,
)

pytestmark = pytest.mark.slow

LAUNCHER = [sys.executable, "-m", "launcher"]
GONE = ("exited", "missing", "metrics not answering")  # what a row says of a rank that is gone


def ensure_prometheus() -> None:
    """The real Prometheus server on PATH, installed by the project's script when missing."""
    import shutil

    if shutil.which("prometheus"):
        return
    if os.geteuid() != 0 and not in_ci():
        unavailable("prometheus is not installed (scripts/install-prometheus needs root)")
    proc = subprocess.run([str(REPO / "scripts" / "install-prometheus")], capture_output=True, text=True, timeout=900)
    if proc.returncode != 0 or not shutil.which("prometheus"):
        unavailable(f"scripts/install-prometheus failed: {proc.stdout}{proc.stderr}")


def launcher(*args: str, env: dict[str, str], cwd: Path, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([*LAUNCHER, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)


def prometheus_api(port: int, path: str, **query: str) -> dict:
    url = f"http://127.0.0.1:{port}/api/v1/{path}" + ("?" + urllib.parse.urlencode(query) if query else "")
    with urllib.request.urlopen(url, timeout=10) as resp:
        return json.loads(resp.read())


@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    """configs/local.yaml with `metrics: {prometheus: true}`, up; down at the end."""
    ensure_prometheus()
    cwd = tmp_path_factory.mktemp("observe")
    data, _ = local_stack(cwd, "local-observe")
    prometheus_port = free_port()
    data["metrics"] = {"prometheus": True, "port": prometheus_port, "scrape_interval": "1s", "retention": "1h"}
    config = cwd / "observe.yaml"
    config.write_text(yaml.safe_dump(data, sort_keys=False))
    port = free_port()
    env = {**fresh_env(), "LAUNCHER_PORT": str(port)}
    up = launcher("up", str(config), env=env, cwd=cwd)
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        assert "prometheus: ready" in up.stderr  # `up` waited for it like any service
        yield {
            "cwd": cwd,
            "env": env,
            "config": config,
            "endpoint": f"http://127.0.0.1:{port}",
            "prom": prometheus_port,
        }
    finally:
        down = launcher("down", str(config), env=env, cwd=cwd)
        assert down.returncode == 0, down.stdout + down.stderr


def rows_by_service(snapshot: dict) -> dict[str, dict]:
    return {r["service"]: r for r in snapshot["rows"]}


def test_top_json_under_load_shows_the_ranks_serving(deployment):
    d = deployment
    seen: dict[str, float] = {}
    samples = 0
    with ChatLoad(d["endpoint"], workers=6) as load:
        wait_for(lambda: load.answered >= 3, 60, what="the first answers of the load")
        wanted = ("decode running", "decode out", "prefill running", "prefill req", "frontend req", "frontend ttft")
        while samples < 8 and not all(k in seen for k in wanted):
            samples += 1
            top = launcher("top", "--json", "--interval", "1", env=d["env"], cwd=d["cwd"])
            assert top.returncode == 0, top.stdout + top.stderr
            rows = rows_by_service(json.loads(top.stdout))
            assert set(rows) == {"frontend", "prefill-r0", "decode-r0"}
            assert all(r["state"] == "up" for r in rows.values()), rows
            decode, prefill, frontend = rows["decode-r0"], rows["prefill-r0"], rows["frontend"]
            for key, value in (
                ("decode running", decode["running"]), ("decode out", decode["output_tps"]),
                ("prefill running", prefill["running"]), ("prefill req", prefill["requests_ps"]),
                ("frontend req", frontend["requests_ps"]), ("frontend ttft", frontend["ttft_p50"]),
            ):  # fmt: skip
                if value:
                    seen[key] = max(seen.get(key, 0.0), value)
            # the mocker exports no prompt-token counter: `-` (None), never a made-up 0
            assert prefill["input_tps"] is None and decode["sources"]["running"] == "vllm:num_requests_running"
    print(f"\ntop --json under load: {samples} sample(s), highest figures {seen}, {load.answered} answers")
    assert not load.errors, load.errors[:3]
    assert all(k in seen for k in wanted), f"not seen in {samples} samples: {set(wanted) - set(seen)}"


def test_top_once_prints_one_table_and_exits(deployment):
    """`launcher top --once` (what people type first): one table with every rank, then exit 0, piped."""
    d = deployment
    top = launcher("top", "--once", "--interval", "1", env=d["env"], cwd=d["cwd"], timeout=120)
    assert top.returncode == 0 and "Traceback" not in top.stderr, top.stdout + top.stderr
    heads = [line for line in top.stdout.splitlines() if line.startswith("top ")]
    assert len(heads) == 1 and heads[0].startswith("top local-observe at "), top.stdout
    rows = {m.group(1): m.group(2) for m in re.finditer(r"^\d+ \S+\s+(\S+(?: r\d+)?)\s+(.*)$", top.stdout, re.M)}
    assert set(rows) == {"frontend", "prefill r0", "decode r0"}, top.stdout
    assert all(v.startswith("up") for v in rows.values()), top.stdout
    assert len(re.findall(r"^all\s+decode total", top.stdout, re.M)) == 1, top.stdout  # one table, not rounds


def test_prometheus_scrapes_every_service(deployment):
    d = deployment
    # Prometheus lists its targets once it has read its configuration: wait for them (a loaded machine is slow).
    targets = wait_for(lambda: prometheus_api(d["prom"], "targets")["data"]["activeTargets"], 30, what="targets")
    health = {t["labels"]["service"]: t["health"] for t in targets}
    assert set(health) == {"frontend", "prefill-r0", "decode-r0", "prometheus"}
    wait_for(lambda: all(t["health"] == "up" for t in prometheus_api(d["prom"], "targets")["data"]["activeTargets"]),
             30, what="every target up")  # fmt: skip

    def query(promql: str) -> list[dict]:
        return prometheus_api(d["prom"], "query", query=promql)["data"]["result"]

    # A series appears at the first scrape after the target came up: wait for it (a loaded machine scrapes late).
    wait_for(lambda: query('vllm:num_requests_running{role="decode"}'), 30, what="the decode rank's series")
    running = query('vllm:num_requests_running{role="decode"}')
    assert len(running) == 1 and running[0]["metric"]["group"] == "decode" and running[0]["metric"]["rank"] == "0"
    served = 'dynamo_component_requests_total{role="prefill",dynamo_endpoint="generate"}'
    wait_for(lambda: query(served), 30, what="the prefill rank's request counter")
    assert float(query(served)[0]["value"][1]) > 0  # the load of the test above, counted by Prometheus


def test_collect_on_this_machine(deployment, tmp_path):
    d = deployment
    out = tmp_path / "bundle.tar.gz"
    collect = launcher("collect", "--out", str(out), env=d["env"], cwd=d["cwd"])
    assert collect.returncode == 0, collect.stdout + collect.stderr
    assert f"wrote {out}" in collect.stdout
    with tarfile.open(out) as tar:
        names = {m.name.split("/", 1)[1]: m for m in tar.getmembers()}
        index = json.loads(tar.extractfile(names["INDEX.json"]).read())
        decode_log = tar.extractfile(names["logs/00-local/decode-r0.log"]).read().decode()
        status = json.loads(tar.extractfile(names["status.json"]).read())
        ip = tar.extractfile(names["nodes/00-local/ip-addr.txt"]).read().decode()
    node = ("df", "free", "kernel", "ip-addr", "nvidia-smi-q", "ibstat", "ibv_devinfo", "versions")
    wanted = ["deployment.yaml", "plan.json", "plan.txt", "audit.log", "logs/00-local/prometheus.log"]
    wanted += [f"nodes/00-local/{name}.txt" for name in node] + ["nodes/00-local/services.json"]
    assert not [name for name in wanted if name not in names]
    assert index["missing_nodes"] == {} and index["nodes"]["0"]["missing"] is None
    assert "dynamo" in decode_log.lower() and "127.0.0.1" in ip
    assert status["ok"] is True and {s["service"] for s in status["services"]} >= {"decode-r0", "prometheus"}


def test_a_rank_killed_while_top_runs(deployment):
    """Its row says so within two intervals; the others keep updating. Last: it kills the decode rank."""
    d = deployment
    status = json.loads(launcher("status", "--json", env=d["env"], cwd=d["cwd"]).stdout)
    leader = next(int(s["id"]) for s in status["services"] if s["service"] == "decode-r0")
    top = subprocess.Popen([*LAUNCHER, "top", "--interval", "2"], env=d["env"], cwd=d["cwd"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    output: list[str] = []
    reader = threading.Thread(target=lambda: output.extend(top.stdout), daemon=True)
    reader.start()
    try:

        def all_up():
            rounds = top_rounds("".join(output))
            return rounds and len(rounds[-1][1]) == 3 and all(v.startswith("up") for v in rounds[-1][1].values())

        wait_for(all_up, 60, what="a round of top with every rank up")
        killed_after = top_rounds("".join(output))[-1][0]
        os.killpg(leader, signal.SIGKILL)  # the whole session of the decode mocker

        def decode_down():
            rounds = top_rounds("".join(output))
            return next((n for n, rows in rounds if n > killed_after and not rows["decode r0"].startswith("up")), None)

        noticed = wait_for(decode_down, 60, what="the decode row saying the rank is gone")
        wait_for(lambda: top_rounds("".join(output))[-1][0] >= noticed + 4, 90, what="four more rounds")
    finally:
        top.send_signal(signal.SIGINT)
        _, err = top.communicate(timeout=30)
    rounds = top_rounds("".join(output))
    print(f"\nkilled after round {killed_after}, the row said so in round {noticed}")
    assert noticed - killed_after <= 2, rounds
    row = dict(rounds)[noticed]["decode r0"]
    assert row.startswith(GONE), row
    # the others keep updating: never taken for gone, and seen up again after the kill was noticed
    after = [rows for n, rows in rounds if n >= noticed]
    for rows in after:
        assert not [v for k, v in rows.items() if k in ("frontend", "prefill r0") and v.startswith(GONE)], rows
    assert any(rows["frontend"].startswith("up") and rows["prefill r0"].startswith("up") for rows in after), after
    assert top.returncode == 130 and "interrupted: top stopped" in err and "Traceback" not in err


def test_collect_never_lets_a_secret_into_the_bundle(tmp_path):
    """A service that prints its secret: the bundle has `***`. Positive control: the secret is in the
    service's log on the node, so a bundle that copied it unredacted would hold it."""
    secret = "s3cr3t-" + os.urandom(8).hex()
    config = local_command_deployment(tmp_path, "leaky", "talker", 'echo "my key is $MY_API_KEY"; sleep 600')
    data = yaml.safe_load(config.read_text())
    data["secrets"] = ["MY_API_KEY"]
    config.write_text(yaml.safe_dump(data, sort_keys=False))
    (tmp_path / ".env").write_text(f"MY_API_KEY={secret}\n")
    env = fresh_env()
    up = launcher("up", str(config), "--skip-doctor", env=env, cwd=tmp_path)
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        logs = tmp_path / "state" / "leaky" / "run"
        wait_for(lambda: any(secret in p.read_text() for p in logs.glob("*/*/log")), 30, what="the secret in the log")
        out = tmp_path / "b.tgz"
        collect = launcher("collect", str(config), "--out", str(out), env=env, cwd=tmp_path)
        assert collect.returncode == 0, collect.stdout + collect.stderr
        assert secret not in collect.stdout + collect.stderr
        with tarfile.open(out) as tar:
            texts = {m.name: tar.extractfile(m).read().decode() for m in tar.getmembers() if m.isfile()}
        assert not [name for name, text in texts.items() if secret in text]
        log = next(text for name, text in texts.items() if name.endswith("talker-r0.log"))
        assert "my key is ***" in log  # redacted where it was, not dropped
        import gzip

        assert secret.encode() not in gzip.decompress(out.read_bytes())  # not in names or headers either
    finally:
        launcher("down", str(config), env=env, cwd=tmp_path)
