"""`watch` moving a lost node's ranks, against this machine (the process runtime: bash, no SSH) and a
spare that refuses SSH (a loopback port nothing listens on): what watch supervises afterwards."""

from __future__ import annotations

import json
import os

import pytest
import yaml

from launcher.commands import watch
from launcher.operations import lost
from launcher.operations.context import Connection, connected, target
from launcher.plan import spares
from tests.helpers import free_port, fresh_env, launcher

pytestmark = pytest.mark.slow


class Said:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def log(self, line: str) -> None:
        self.lines.append(line)


def test_a_move_whose_start_fails_leaves_watch_restarting_the_group_on_the_spare(tmp_path):
    """node 0 (this machine, the head) runs group g; its GPUs drain, g moves to node 1, whose start fails
    (SSH refused). The plan is the spare's from then on, and so are the units watch restarts: a restart
    must never recreate g on the drained node (the next round would remove it there as stale)."""
    data = {
        "deployment": "spares-local",
        "runtime": "process",
        "state_dir": str(tmp_path / "state"),
        "gpus_per_node": 0,
        "watch": {"lost_after": 5},
        "nodes": [
            {"name": "here", "address": "127.0.0.1"},
            {"name": "spare", "address": "127.0.0.2", "ssh": {"port": free_port(), "connect_timeout": 2}},
        ],
        "services": {"etcd": {"enabled": False}, "nats": {"enabled": False}, "frontend": {"enabled": False}},
        "groups": {"g": {"engine": "command", "nodes": ["here"], "args": ["sleep", "30"]}},
    }
    path = tmp_path / "spares.yaml"
    path.write_text(yaml.safe_dump(data))
    t = target(path)
    with connected(t, Connection(connect_timeout=2)):
        said = Said()
        w = watch.Watcher(t, said, watch.units(t.plan))
        new = spares.substitute(t.loaded, t.plan, 0, 1)
        outcome = lost.moved(w, 0, t.plan.nodes[1], new, ["g"])
    who = "node 1 (spare 127.0.0.2) replaces node 0 (here 127.0.0.1) for g"
    assert outcome.startswith(f"watch: {who}: failed: "), outcome
    assert t.plan.substitutes == {0: 1}
    (unit,) = [u for u in w.watched if u.name == "group g"]
    assert [s.node.index for s in unit.services] == [1]
    audit = (tmp_path / "state" / "spares-local" / "audit.log").read_text()
    assert f"{who}: recreating them there" in audit


def test_a_node_listing_labels_of_the_wrong_shape_is_one_line_not_a_traceback(tmp_path):
    """The process runtime lists what the node's run directory holds: a node that answers a substitution
    label that is a number (or labels that are a list) is a node whose listing is unreadable, said in one
    line by `status` (exit 1), never a traceback; the same directory well-formed reads."""
    data = {
        "deployment": "hostile-labels",
        "runtime": "process",
        "state_dir": str(tmp_path / "state"),
        "gpus_per_node": 0,
        "nodes": [{"name": "here", "address": "127.0.0.1"}],
        "services": {"etcd": {"enabled": False}, "nats": {"enabled": False}, "frontend": {"enabled": False}},
        "groups": {"g": {"engine": "command", "nodes": ["here"], "args": ["sleep", "30"]}},
    }
    config = tmp_path / "hostile.yaml"
    config.write_text(yaml.safe_dump(data))
    run = tmp_path / "state" / "hostile-labels" / "run" / os.uname().nodename  # the runtime's run directory
    (run / "hostile-labels-g-r0").mkdir(parents=True, mode=0o700)
    (tmp_path / "state").chmod(0o700)
    plain = launcher("status", str(config), env=fresh_env(), cwd=tmp_path, timeout=60)
    assert plain.returncode == 1 and "Traceback" not in plain.stderr, plain.stderr
    assert "g" in plain.stdout and "missing" in plain.stdout, plain.stdout  # nothing listed: read fine
    for labels, says in [
        ({"launcher.deployment": "hostile-labels", "launcher.replaces": 5}, "label launcher.replaces is not text"),
        (["launcher.replaces"], "its labels are not a JSON object"),
    ]:
        (run / "hostile-labels-g-r0" / "labels.json").write_text(json.dumps(labels))
        status = launcher("status", str(config), env=fresh_env(), cwd=tmp_path, timeout=60)
        assert status.returncode == 1 and "Traceback" not in status.stderr, status.stderr
        (line,) = [x for x in (status.stdout + status.stderr).splitlines() if "unreadable service list" in x]
        assert says in line and len(line) < 300, line
