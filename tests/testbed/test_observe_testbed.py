"""`top`, `metrics:` and `collect` on the 13-node testbed (sshd + dockerd per node): configs/testbed-104.yaml
with a real Prometheus server (Debian's, from this machine's /usr, mounted by the node containers) on node 0
scraping all 13 mockers and the frontend across the network namespaces."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import tarfile
import threading
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from tests.helpers import ChatLoad, fresh_env, launcher_on, top_rounds, wait_for
from tests.local.test_observe_local import GONE
from tests.testbed_104 import PROMETHEUS_PORT, testbed_104  # noqa: F401

pytestmark = pytest.mark.testbed
TESTBED_NODES = 13  # the 104-GPU shape (tests/conftest.py grows the session's testbed to it)


def launcher(testbed, config: Path, *args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    return launcher_on(testbed, config, args[0], *args[1:], cwd=cwd, timeout=timeout)


@pytest.fixture
def deployed(testbed_104):  # noqa: F811
    """The session's testbed-104 with its metrics stack (tests/testbed_104.py), shared with the bench tests."""
    return testbed_104


def prometheus_api(testbed, path: str, **query: str) -> dict:
    url = f"http://{testbed.nodes[0][1]}:{PROMETHEUS_PORT}/api/v1/{path}"
    url += "?" + urllib.parse.urlencode(query) if query else ""
    with urllib.request.urlopen(url, timeout=10) as resp:
        return json.loads(resp.read())


def test_top_json_under_load_on_13_nodes(testbed, deployed):
    cwd, config = deployed
    endpoint = f"http://{testbed.nodes[0][1]}:8000"
    served: dict[str, dict] = {}
    samples = 0
    with ChatLoad(endpoint, workers=8) as load:
        wait_for(lambda: load.answered >= 5, 90, what="the first answers of the load")
        while samples < 8 and not (
            any(r["running"] and r["output_tps"] for r in served.values() if r["role"] == "decode")
            and any(r["running"] and r["requests_ps"] for r in served.values() if r["role"] == "prefill")
        ):
            samples += 1
            top = launcher(testbed, config, "top", "--json", "--interval", "2", cwd=cwd)
            assert top.returncode == 0, top.stdout + top.stderr
            snapshot = json.loads(top.stdout)
            rows = snapshot["rows"]
            assert len(rows) == 14 and all(r["state"] == "up" for r in rows), [(r["service"], r["state"]) for r in rows]
            # each rank read on its own node: node index and address from the plan
            assert {(r["group"], r["rank"], r["node_index"]) for r in rows if r["group"] == "decode"} == {
                ("decode", k, 4 + k) for k in range(9)
            }
            for r in rows:
                if r["kind"] == "worker" and (r["requests_ps"] or r["running"]):
                    best = served.setdefault(r["service"], dict(r))
                    for key in ("running", "output_tps", "requests_ps"):
                        best[key] = max(best[key] or 0.0, r[key] or 0.0)
            totals = snapshot["totals"]
            assert totals["decode"]["ranks"] == 9 and totals["prefill"]["ranks"] == 4
    busy = sorted(served)
    print(f"\ntop --json on 13 nodes: {samples} sample(s); ranks seen serving: {busy}; {load.answered} answers")
    assert not load.errors, load.errors[:3]
    decode = [r for r in served.values() if r["role"] == "decode" and r["running"] and r["output_tps"]]
    prefill = [r for r in served.values() if r["role"] == "prefill" and r["running"] and r["requests_ps"]]
    assert decode and prefill, served
    # a decode rank that produced tokens over an interval is one that served requests in it
    assert all(r["requests_ps"] for r in served.values() if r["role"] == "decode" and r["output_tps"])


def test_prometheus_scrapes_every_node_across_the_namespaces(testbed, deployed):
    def targets():
        return prometheus_api(testbed, "targets")["data"]["activeTargets"]

    wait_for(lambda: len(targets()) == 15 and all(t["health"] == "up" for t in targets()), 60, what="15 targets up")
    found = {t["labels"]["service"]: t["scrapeUrl"] for t in targets()}
    assert found[f"decode-r{8}"] == f"http://{testbed.nodes[12][1]}:9090/metrics"
    assert found["frontend"] == f"http://{testbed.nodes[0][1]}:8000/metrics"
    result = prometheus_api(testbed, "query", query="vllm:num_requests_running")["data"]["result"]
    assert sorted(int(r["metric"]["rank"]) for r in result) == list(range(9))  # every decode mocker
    inflight = 'dynamo_component_requests_total{role="prefill",dynamo_endpoint="generate"}'
    result = prometheus_api(testbed, "query", query=inflight)["data"]["result"]
    assert len(result) == 4 and sum(float(r["value"][1]) for r in result) > 0


def test_collect_with_one_node_sshd_dead(testbed, deployed, tmp_path):
    cwd, config = deployed
    victim = 11
    testbed.run("kill-sshd", str(victim))
    try:
        out = tmp_path / "bundle.tar.gz"
        collect = launcher(testbed, config, "collect", "--out", str(out), cwd=cwd)
    finally:
        testbed.run("heal", str(victim))
    assert collect.returncode == 1, collect.stdout + collect.stderr
    name, address = testbed.nodes[victim]
    assert f"missing: node {victim} ({name} {address})" in collect.stderr and "Traceback" not in collect.stderr
    with tarfile.open(out) as tar:
        names = {m.name.split("/", 1)[1] for m in tar.getmembers()}
        index = json.loads(tar.extractfile(next(m for m in tar.getmembers() if m.name.endswith("INDEX.json"))).read())
    assert list(index["missing_nodes"]) == [str(victim)] and "refused" in index["missing_nodes"][str(victim)]
    assert not [n for n in names if n.startswith(f"nodes/{victim:02d}-") or n.startswith(f"logs/{victim:02d}-")]
    for i, (node, _) in enumerate(testbed.nodes):
        if i != victim:
            assert f"nodes/{i:02d}-{node}/ip-addr.txt" in names and f"nodes/{i:02d}-{node}/services.json" in names
    assert f"logs/00-{testbed.nodes[0][0]}/frontend.log" in names and "status.json" in names and "audit.log" in names
    assert f"logs/12-{testbed.nodes[12][0]}/decode-r8.log" in names


def test_a_rank_killed_while_top_runs_on_the_testbed(testbed, deployed):
    cwd, config = deployed
    argv = [sys.executable, "-m", "launcher", "top", "-c", str(config), "-i", str(testbed.inventory), "--interval", "2"]
    top = subprocess.Popen(argv, cwd=cwd, env=fresh_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    output: list[str] = []
    threading.Thread(target=lambda: output.extend(top.stdout), daemon=True).start()
    try:

        def all_up():
            rounds = top_rounds("".join(output))
            return rounds and len(rounds[-1][1]) == 14 and all(v.startswith("up") for v in rounds[-1][1].values())

        wait_for(all_up, 120, what="a round of top with every rank up")
        kill = testbed.ssh(7, "docker kill testbed-104-decode-r3")
        assert kill.returncode == 0, kill.stderr
        # counted from when the rank is dead (the ssh + docker kill itself takes seconds on a busy machine)
        killed_after = top_rounds("".join(output))[-1][0]

        # The first round that says it exited (a round whose listing came just before the kill, and whose
        # scrape after it, says "metrics not answering": true then, and not yet the verdict).
        def noticed():
            rounds = top_rounds("".join(output))
            return next((n for n, rows in rounds if n > killed_after and rows["decode r3"].startswith("exited")), None)

        seen = wait_for(noticed, 60, what="decode r3's row saying it is gone")
        wait_for(lambda: top_rounds("".join(output))[-1][0] >= seen + 4, 90, what="four more rounds")
    finally:
        top.send_signal(signal.SIGINT)
        _, err = top.communicate(timeout=30)
    rounds = dict(top_rounds("".join(output)))
    print(f"\nkilled after round {killed_after}, the row said so in round {seen}: {rounds[seen]['decode r3']}")
    assert seen - killed_after <= 2
    assert rounds[seen]["decode r3"].startswith("exited"), rounds[seen]["decode r3"]
    # the others keep updating: never taken for gone, and all seen up after the kill was noticed
    after = [{k: v for k, v in rows.items() if k != "decode r3" and not k.endswith("total")}
             for n, rows in rounds.items() if n >= seen]  # fmt: skip
    assert all(len(others) == 13 and not [v for v in others.values() if v.startswith(GONE)] for others in after)
    assert any(all(v.startswith("up") for v in others.values()) for others in after), after
    assert top.returncode == 130 and "Traceback" not in err
