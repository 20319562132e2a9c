"""The pure parts of up/status/down: diffing labels against the plan, scripts, readiness rules."""

from __future__ import annotations

import json
import subprocess

from launcher.config.load import load as load_config
from launcher.output import plan_views
from launcher.plan import readiness, reconcile
from launcher.plan.build import build as build_plan
from launcher.plan.state import Container
from launcher.plan.types import Probe
from launcher.runtime import base, docker
from tests.helpers import CONFIGS, REPO

INV = REPO / "tests" / "data" / "inventory-32.yaml"


def make_plan(name="testbed-104.yaml", environ=None):
    return build_plan(load_config(CONFIGS / name, INV, environ=environ or {}))


def running(p, state="running", skip=()):
    return [
        Container(s.node.index, "id" + s.service, s.name, p.labels(s), state, 0)
        for s in p.services
        if s.service not in skip
    ]


def test_unchanged_plan_keeps_everything():
    p = make_plan()
    changes = reconcile.compute(p, running(p))
    assert changes.unchanged and len(changes.keep) == len(p.services)


def test_fresh_cluster_creates_everything():
    p = make_plan()
    changes = reconcile.compute(p, [])
    assert len(changes.create) == len(p.services) == 16 and not changes.remove


def test_changed_decode_arg_recreates_exactly_the_decode_group():
    old = make_plan()
    new = build_plan(load_config(CONFIGS / "testbed-104.yaml", INV, environ={}))
    new_group = next(g for g in new.services if g.group == "decode")
    for s in new.services:
        if s.group == "decode":
            s.command = s.command + ["--max-num-seqs", "64"]
    assert new_group.spec_hash() != next(s for s in old.services if s.service == new_group.service).spec_hash()
    changes = reconcile.compute(new, running(old))
    assert sorted(s.service for s in changes.create) == sorted(f"decode-r{i}" for i in range(9))
    assert sorted(c.service for c in changes.remove) == sorted(f"decode-r{i}" for i in range(9))


def test_one_dead_rank_recreates_its_whole_group():
    p = make_plan()
    containers = running(p)
    dead = next(c for c in containers if c.service == "prefill-r2")
    dead.state, dead.exit_code = "exited", 137
    changes = reconcile.compute(p, containers)
    assert sorted(s.service for s in changes.create) == [f"prefill-r{i}" for i in range(4)]
    assert "exited (exit 137)" in changes.reasons["prefill-r2"]
    assert "recreated together" in changes.reasons["prefill-r0"]


def test_recreated_etcd_recreates_everything_registered_in_it():
    p = make_plan()
    changes = reconcile.compute(p, running(p, skip=("etcd",)))
    assert len(changes.create) == len(p.services) - 1  # all but NATS


def test_orphans_are_removed():
    p = make_plan()
    orphan = Container(5, "x", "testbed-104-old-r0", {"launcher.deployment": "testbed-104"}, "running", 0)
    changes = reconcile.compute(p, running(p) + [orphan])
    assert changes.remove == [orphan] and not changes.create


def test_parse_list_reads_docker_inspect():
    inspect = [
        {
            "Id": "0123456789abcdef",
            "Name": "/testbed-104-decode-r3",
            "Config": {"Labels": {"launcher.service": "decode-r3", "launcher.rank": "3", "launcher.group": "decode"}},
            "State": {"Status": "exited", "ExitCode": 137, "StartedAt": "2026-11-24T10:00:00.123456789Z"},
            "RestartCount": 0,
        }
    ]
    (c,) = base.parse_list(7, json.dumps(inspect))
    assert (c.node_index, c.name, c.rank, c.group, c.state, c.exit_code) == (
        7,
        "testbed-104-decode-r3",
        3,
        "decode",
        "exited",
        137,
    )
    assert c.id == "0123456789ab"


def test_start_script_keeps_secrets_off_the_command_line(tmp_path):
    p = make_plan()
    s = next(s for s in p.services if s.group == "decode")
    s.secret_env = {"HF_TOKEN": "hf_top_secret"}
    script, stdin = docker.Docker().start_script(p, [s])
    assert "hf_top_secret" not in script
    assert stdin == "HF_TOKEN=hf_top_secret\n"
    # The dd line writes exactly the stdin it is given, with mode 0600, using real bash.
    path = tmp_path / "s.env"
    line = next(x for x in script.splitlines() if x.startswith("(umask 077; dd"))
    line = line.replace(docker.secrets_file(p, s), str(path))
    subprocess.run(["bash", "-c", line], input=stdin + "EXTRA", text=True, check=True)
    assert path.read_text() == stdin
    assert path.stat().st_mode & 0o777 == 0o600


def test_poll_script_output_parses(tmp_path):
    out = "[]\n" + base.POLL_MARK + "a\nlast line of a\n" + base.POLL_MARK + "b\n\n"
    containers, last = base.parse_poll(0, out)
    assert containers == [] and last == {"a": "last line of a", "b": ""}


def test_frontend_readiness_counts_instances_not_status():
    health = {"status": "healthy", "instances": []}
    assert readiness.count_instances(health) == {}
    p = make_plan()
    expected = readiness.expected_instances(p)
    assert expected == {"prefill": 4, "backend": 9}
    health = {
        "status": "healthy",
        "instances": [{"component": "prefill", "endpoint": "generate"}] * 4
        + [{"component": "backend", "endpoint": "generate"}] * 8
        + [{"component": "backend", "endpoint": "clear_kv_blocks"}],
    }
    assert readiness.missing_instances(expected, readiness.count_instances(health)) == {"backend": 1}


def test_probe_expectations():
    probe = Probe("http", "http://x/health", {"health": "true"})
    assert readiness.probe_passes(probe, 200, {"health": "true"})
    assert not readiness.probe_passes(probe, 200, {"health": "false"})
    assert not readiness.probe_passes(probe, 503, {"health": "true"})
    assert readiness.model_listed({"data": [{"id": "tiny"}]}, "tiny")
    assert not readiness.model_listed({"data": []}, "tiny")


def test_curl_is_pasteable():
    import shlex

    cmd = plan_views.curl_command("http://10.0.0.1:8000", "it's-a-model")
    argv = shlex.split(cmd)
    assert argv[0] == "curl" and json.loads(argv[-1])["model"] == "it's-a-model"


def test_live_progress_shows_engine_text_as_text_not_markup():
    """A log line like "[/models/x]" is not rich markup: it must neither raise nor vanish."""
    import io

    from rich.console import Console

    from launcher.output.progress import Progress, Row

    sink = io.StringIO()
    progress = Progress(Console(file=sink, force_terminal=True, width=160), live=True)
    progress.start()
    try:
        progress.update([Row("tb0", "decode", "running, probe: HTTP 503 [x]", 3.0, "loading [/models/x] [bold]")])
    finally:
        progress.stop()
    assert "[/models/x] [bold]" in sink.getvalue()


def test_ctrl_c_gives_what_was_already_sent_time_to_finish():
    """`up` interrupted while start scripts run: those already sent finish and are reported; the
    ones still queued are never sent."""
    import signal
    import threading
    import time

    import pytest

    from launcher.config.schema import SSHSettings
    from launcher.plan.types import Node
    from launcher.transport.fleet import Fleet, MapInterrupted
    from launcher.transport.host import Options

    nodes = [Node(i, f"n{i}", "127.0.0.1", SSHSettings(), 0) for i in range(3)]
    sent: list[int] = []

    def slow(host):
        sent.append(host.node.index)
        time.sleep(1.0)
        return host.node.index

    with Fleet(nodes, Options(parallel=2)) as fleet:  # node 2 waits for a free worker
        ctrl_c = threading.Timer(0.3, signal.pthread_kill, (threading.main_thread().ident, signal.SIGINT))
        ctrl_c.start()
        with pytest.raises(MapInterrupted) as stopped:
            fleet.map(slow, finish_on_interrupt=10)
    assert stopped.value.results == {0: 0, 1: 1} and stopped.value.pending == [2]
    assert sorted(sent) == [0, 1]
