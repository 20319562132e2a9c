"""Lost nodes and spares as data (launcher.plan.spares): which nodes are spares, the plan with a spare in
a lost node's place, the refusals, and the substitution labels read back from the nodes (not trusted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from launcher.config.load import load as load_config
from launcher.operations import gpu_health, lost
from launcher.plan import spares
from launcher.plan.build import build
from launcher.plan.state import Container
from launcher.plan.types import REPLACES_LABEL
from launcher.runtime.base import ListingError, parse_list
from tests.gpu_replay import FALLEN, NO_TOOL, ReplayFleet, one_gpu
from tests.helpers import REPO, fresh_env, write

# node0: services; decode on node1+node2 (one group of two ranks); prefill on node3; node4, node5: spares
FILE = """\
deployment: sp
image: example/image:1
gpus_per_node: 2
model: {path: /models/x, name: x}
watch: {lost_after: 20}
nodes:
  - {address: 10.9.0.1}
  - {address: 10.9.0.2}
  - {address: 10.9.0.3}
  - {address: 10.9.0.4}
  - {address: 10.9.0.5}
  - {address: 10.9.0.6}
services:
  etcd: {node: 0}
  nats: {node: 0}
  frontend: {node: 0}
groups:
  decode: {engine: dynamo-sglang, nodes: [1, 2], mode: decode}
  prefill: {engine: dynamo-sglang, nodes: [3], mode: prefill}
"""


@pytest.fixture
def loaded(tmp_path):
    # the state_dir under tmp_path: the GPU look at a spare (a replay, run here) checks it exists
    return load_config(write(tmp_path, FILE + f"state_dir: {tmp_path / 'state'}\n"))


def nodes_of(plan, group: str) -> list[int]:
    return sorted({s.node.index for s in plan.services if s.group == group})


def test_spares_are_the_inventory_nodes_the_plan_leaves_free(loaded):
    plan = build(loaded)
    assert plan.lost_after == 20
    assert [n.index for n in spares.spare_nodes(plan)] == [4, 5]
    assert spares.choose(plan, 2).index == 4


def test_the_plan_with_the_spare_in_place_and_its_labels(loaded):
    plan = build(loaded)
    new = spares.substitute(loaded, plan, 2, 4)
    assert nodes_of(new, "decode") == [1, 4] and nodes_of(new, "prefill") == [3]
    assert new.substitutes == {2: 4}
    assert [g.node_indices for g in new.groups if g.name == "decode"] == [[1, 4]]
    moved = [s for s in new.services if s.node.index == 4]
    assert {s.rank for s in moved} == {1}  # node 2's rank, rank for rank
    assert all(new.labels(s)[REPLACES_LABEL] == "2:10.9.0.3" for s in moved)
    # the rank that stayed carries no record; the other services are unchanged
    assert all(REPLACES_LABEL not in new.labels(s) for s in new.services if s.node.index != 4)
    same = {s.name: s.spec_hash() for s in plan.services if s.group != "decode"}
    assert same == {s.name: s.spec_hash() for s in new.services if s.group != "decode"}
    # the next spare is the one after: node 4 is the plan's now
    assert [n.index for n in spares.spare_nodes(new)] == [5]
    assert spares.choose(new, 3).index == 5


@pytest.mark.parametrize(
    ("lost", "spare", "expected"),
    [
        (2, 1, "already runs a rank of decode: two ranks of one group on one node"),
        (2, 3, "is not a spare: it runs services of sp"),
        (2, 0, "is not a spare"),
        (2, 2, "cannot replace itself"),
        (2, 9, "no node 9 in the inventory to be a spare"),
        (0, 4, "runs etcd, frontend, nats: only group ranks move to a spare"),
        (4, 5, "runs no group rank: nothing to move"),
    ],
)
def test_substitutions_refused(loaded, lost, spare, expected):
    with pytest.raises(spares.Refused, match=expected):
        spares.substitute(loaded, build(loaded), lost, spare)


def test_a_spare_already_used_and_no_spare_left(loaded):
    once = spares.substitute(loaded, build(loaded), 2, 4)
    with pytest.raises(spares.Refused, match="is not a spare"):
        spares.substitute(loaded, once, 3, 4)  # node 4 took node 2's place already
    with pytest.raises(spares.Refused, match="was already replaced"):
        spares.substitute(loaded, once, 2, 5)
    twice = spares.substitute(loaded, once, 3, 5)
    assert nodes_of(twice, "prefill") == [5] and nodes_of(twice, "decode") == [1, 4]
    with pytest.raises(spares.Refused, match="no spare node: every inventory node runs a service of sp"):
        spares.choose(twice, 1)


def test_a_replica_on_the_lost_node_moves_alone(tmp_path):
    """decode with `replicas: 2` of one node each (a count: nodes 0 and 1, in inventory order), nodes 2-5
    spares: losing node 1 moves replica decode.1 to node 2, and leaves replica 0 as it was."""
    groups = "groups:\n  decode: {engine: dynamo-sglang, nodes: 1, replicas: 2, mode: decode}\n"
    loaded = load_config(write(tmp_path, FILE[: FILE.index("groups:")] + groups))
    plan = build(loaded)
    assert [(g.name, g.node_indices) for g in plan.groups] == [("decode", [0]), ("decode.1", [1])]
    assert spares.groups_on(plan, 1) == ["decode.1"] and spares.choose(plan, 1).index == 2
    new = spares.substitute(loaded, plan, 1, 2)
    assert [(g.name, g.node_indices) for g in new.groups] == [("decode", [0]), ("decode.1", [2])]
    before = [s.spec_hash() for s in plan.services if s.group != "decode.1"]
    assert before == [s.spec_hash() for s in new.services if s.group != "decode.1"]
    assert {new.labels(s)[REPLACES_LABEL] for s in new.services if s.group == "decode.1"} == {"1:10.9.0.2"}


def labelled(plan, node: int, value: str | None = None) -> list[Container]:
    """The containers a node would list for the plan's services on it (labels as `start` puts them)."""
    out = []
    for s in plan.by_node(node):
        labels = plan.labels(s)
        if value is not None:
            labels[REPLACES_LABEL] = value
        out.append(Container(node, "id", s.name, labels, "running", 0))
    return out


def test_the_substitution_is_read_back_from_the_labels(loaded):
    base = build(loaded)
    moved = spares.substitute(loaded, base, 2, 4)
    listing = [c for i in range(6) for c in labelled(moved, i)]
    plan, lines = spares.apply_recorded(loaded, base, listing)
    assert lines == [] and plan.substitutes == {2: 4}
    assert [s.spec_hash() for s in plan.services] == [s.spec_hash() for s in moved.services]


@pytest.mark.parametrize(
    ("node", "value", "says"),
    [
        (4, "7:10.9.0.8", "names no inventory node: ignored"),  # forged: a node not in the inventory
        (4, "2:10.9.0.99", "names no inventory node: ignored"),  # the index of one, another's address
        (4, "2" * 5000, "names no inventory node: ignored"),
        (4, "0:10.9.0.1", "which the plan does not allow"),  # node 0 has no group rank: nothing to replace
        (3, "2:10.9.0.3", "which the plan does not allow"),  # node 3 is the plan's, not a spare
    ],
)
def test_forged_substitution_labels_are_ignored_in_one_line(loaded, node, value, says):
    base = build(loaded)
    moved = spares.substitute(loaded, base, 2, 4)
    forged = labelled(moved, node, value)[:1]
    plan, lines = spares.apply_recorded(loaded, base, forged)
    assert plan.substitutes == {}
    assert [s.spec_hash() for s in plan.services] == [s.spec_hash() for s in base.services]
    assert len(lines) == 1 and says in lines[0] and "\n" not in lines[0] and len(lines[0]) < 300


def test_a_label_counts_only_where_the_head_nodes_record_of_watchs_moves_says_the_same(loaded):
    """A well-formed label on a real spare naming a real group node (what anyone who can run a container
    on the spare can write) moves nothing unless the record watch wrote on the head node (under the lock)
    has that move; the record as runtime.lock writes it reads back to the same substitutions."""
    base = build(loaded)
    moved = spares.substitute(loaded, base, 2, 4)
    listing = [c for i in range(6) for c in labelled(moved, i)]
    record = json.dumps(spares.moves_record(moved, moved.substitutes))
    assert spares.parse_moves(base, record, 65536) == {2: 4}
    plan, lines = spares.apply_recorded(loaded, base, listing, spares.parse_moves(base, record, 65536))
    assert lines == [] and plan.substitutes == {2: 4}
    for moves in ({}, {2: 5}, {1: 4}):  # no record, another spare's move, another node's
        plan, lines = spares.apply_recorded(loaded, base, listing, moves)
        assert plan.substitutes == {} and [s.spec_hash() for s in plan.services] == [
            s.spec_hash() for s in base.services
        ]
        assert lines and all("the head node's record of watch's moves has no such move" in x for x in lines)


@pytest.mark.parametrize(
    "text",
    [
        "", "not json", "[]", '{"2": 4}', '{"2": {"spare": "4"}}', '{"2": {"spare": 4}}',
        '{"2": {"spare": 4, "lost_address": "10.9.0.3", "spare_address": "10.9.0.99"}}',
        '{"2": {"spare": 99, "lost_address": "10.9.0.3", "spare_address": "10.9.0.5"}}',
        '{"-1": {"spare": 4, "lost_address": "10.9.0.3", "spare_address": "10.9.0.5"}}',
        '{"2": {"spare": true, "lost_address": "10.9.0.3", "spare_address": "10.9.0.5"}}',
        '{"2": {"spare": 4, "lost_address": "10.9.0.3", "spare_address": "10.9.0.5"}}' + " " * 70000,
    ],
)  # fmt: skip
def test_a_record_not_of_the_launchers_making_confirms_nothing(loaded, text):
    assert spares.parse_moves(build(loaded), text, 65536) == {}


def test_two_spares_claiming_one_lost_node_keep_the_first(loaded):
    base = build(loaded)
    a = labelled(spares.substitute(loaded, base, 2, 4), 4)
    b = labelled(spares.substitute(loaded, base, 2, 5), 5)
    plan, lines = spares.apply_recorded(loaded, base, a + b)
    assert plan.substitutes == {2: 4}
    assert len(lines) == 1 and "another spare has it" in lines[0]


@pytest.mark.parametrize("value", ["0", "soon"])
def test_bad_lost_after_is_one_line_exit_2(tmp_path, value):
    path = write(tmp_path, FILE.replace("lost_after: 20", f"lost_after: {value}"))
    argv = [sys.executable, "-m", "launcher", "plan", str(path)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, env=fresh_env(), cwd=REPO)
    assert done.returncode == 2, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "lost_after" in done.stderr


def test_a_node_is_lost_after_the_window_and_two_failed_rounds_judged_once():
    unseen = lost.Unseen()
    unseen.update({2: "timed out"}, 100.0)
    assert unseen.lost(20, 130.0) == []  # one failed round: a slow listing, not yet a lost node
    unseen.update({2: "timed out"}, 131.0)
    assert unseen.lost(20, 119.0) == []  # within the window
    assert unseen.lost(20, 131.0) == [(2, 31.0)]
    assert unseen.lost(20, 140.0) == []  # judged once while it stays unseen
    assert unseen.lost(None, 500.0) == []  # no watch.lost_after: never lost
    unseen.update({}, 150.0)  # seen again: judged afresh if it goes again
    unseen.update({2: "refused"}, 160.0)
    unseen.update({2: "refused"}, 161.0)
    assert unseen.lost(20, 181.0) == [(2, 21.0)]


class Said:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def log(self, line: str) -> None:
        self.lines.append(line)


def watcher(plan, loaded, fleet: ReplayFleet, said: Said, dry_run: bool = True) -> SimpleNamespace:
    """What lost.py reads of watch's Watcher: its target (the plan, the file, a fleet of replayed nodes, the
    head node where the audit log is), what it says, and the nodes it has seen fail."""
    t = SimpleNamespace(plan=plan, loaded=loaded, fleet=fleet, head=fleet.host(plan.head.index))
    return SimpleNamespace(t=t, progress=said, dry_run=dry_run, unseen=lost.Unseen())


def test_watch_dry_run_says_the_move_or_the_missing_spare(loaded):
    """`watch --dry-run` with a lost node: one line, what it would do; nothing reaches a node (no fleet)."""
    plan = build(loaded)
    said = Said()
    w = watcher(plan, loaded, ReplayFleet(plan.nodes, Path(loaded.file).parent), said)
    lost.judge(w, 2, "node 2 (node2 10.9.0.3): saw it fail SSH for 25s (watch.lost_after 20s): lost")
    assert said.lines == [
        "node 2 (node2 10.9.0.3): saw it fail SSH for 25s (watch.lost_after 20s): lost;"
        " would move decode to node 4 (node4 10.9.0.5); dry run: nothing done"
    ]
    w.t.plan = spares.substitute(loaded, spares.substitute(loaded, plan, 2, 4), 3, 5)
    lost.judge(w, 1, "node 1: lost")
    assert said.lines[1:] == [
        "node 1: lost; cannot move it (no spare node: every inventory node runs a service of sp); would alert;"
        " dry run: nothing done"
    ]


def test_a_gpu_verdict_of_drain_excludes_the_node_like_a_lost_one():
    """A recorded Xid 79 (fallen off the bus) on node 2 is a node to move; a warning, a healthy node, or
    one whose tool could not be read is not."""
    data = REPO / "tests" / "data" / "gpu"
    query = (data / "query-h100-nccl-1264.csv").read_text()

    def answer(lines: list[str]) -> str:
        klog = {"source": "journalctl", "lines": [{"line": x, "new": True} for x in lines], "error": None}
        return json.dumps({"v": 1, "tool": "nvidia-smi", "query": {"rc": 0, "out": query}, "klog": klog})

    fallen = (data / "klog" / "akash-support-209-xid79.dmesg").read_text().splitlines()
    seen = {
        1: gpu_health.parse(answer([]), expected=2),
        2: gpu_health.parse(answer(fallen), expected=2),
        3: "timed out after 20s",
    }
    found = lost.drained(seen)
    assert [i for i, _ in found] == [2] and "Xid 79" in found[0][1], found


def test_a_spare_lost_in_turn_passes_the_ranks_on_to_the_next_spare(loaded):
    """node 4 replaced node 2, then node 4 is lost too: decode's rank moves on to node 5 (not left on the
    dead node 4), its label still names node 2 (whose place it holds), and neither 2 nor 4 is a spare."""
    once = spares.substitute(loaded, build(loaded), 2, 4)
    assert spares.choose(once, 4).index == 5
    twice = spares.substitute(loaded, once, 4, 5)
    assert nodes_of(twice, "decode") == [1, 5] and nodes_of(twice, "prefill") == [3]
    assert twice.by_node(4) == [] and twice.by_node(2) == []
    assert {twice.labels(s)[REPLACES_LABEL] for s in twice.by_node(5)} == {"2:10.9.0.3"}
    assert spares.spare_nodes(twice) == []
    with pytest.raises(spares.Refused, match="was already replaced"):
        spares.choose(twice, 4)
    # read back from the labels, it is node 2 -> node 5 (node 4 is a free node again for a fresh watch)
    listing = [c for i in range(6) for c in labelled(twice, i)]
    plan, lines = spares.apply_recorded(loaded, build(loaded), listing)
    assert lines == [] and plan.substitutes == {2: 5} and nodes_of(plan, "decode") == [1, 5]


def test_watch_never_moves_ranks_to_a_spare_it_cannot_see(loaded):
    """The first spare (node 4) fails SSH too: node 2's ranks go to node 5; with every spare unseen, the
    loss is reported (no spare reachable), not moved onto a dead node."""
    plan = build(loaded)
    said = Said()
    unseen = lost.Unseen()
    unseen.update({2: "timed out", 4: "timed out"}, 100.0)
    w = watcher(plan, loaded, ReplayFleet(plan.nodes, Path(loaded.file).parent), said)
    w.unseen = unseen
    lost.judge(w, 2, "node 2: lost")
    assert said.lines == ["node 2: lost; would move decode to node 5 (node5 10.9.0.6); dry run: nothing done"]
    unseen.update({2: "timed out", 4: "timed out", 5: "refused"}, 110.0)
    lost.judge(w, 2, "node 2: lost")
    assert said.lines[1] == (
        "node 2: lost; cannot move it (no spare node reachable: node 4 (node4 10.9.0.5), node 5 (node5 10.9.0.6)"
        " fail SSH); would alert; dry run: nothing done"
    )


@pytest.mark.parametrize(
    ("listing", "says"),
    [
        ('{"a": 1}', "not a JSON list"),
        ("[1]", "an entry is not a JSON object"),
        ('[{"Name": 5}]', "an entry has an Id, Name, Status or time that is not text"),
        ('[{"State": {"ExitCode": "zz"}}]', "an entry has an ExitCode or RestartCount that is not a whole number"),
        ('[{"Config": {"Labels": ["launcher.replaces"]}}]', "an entry its labels are not a JSON object"),
        ('[{"Config": {"Labels": {"launcher.replaces": 5}}}]', "an entry label launcher.replaces is not text"),
        ('[{"Config": {"Labels": {"launcher.\\u001b[2J": {}}}}]', "an entry label launcher.?[2J is not text"),
        ('[{"Config": 7}]', "not a JSON object"),
        ('[{"Name": "/x\\u001b[2J"}]', "an entry has a Name docker would refuse"),
    ],
)
def test_a_listing_not_of_docker_inspects_shape_is_one_line(listing, says):
    """A node's listing is its word: labels and fields of the wrong type (where a substitution label is
    read from) make the node's listing unreadable, in one line, never an AttributeError later."""
    with pytest.raises(ListingError) as caught:
        parse_list(3, listing)
    assert str(caught.value).startswith("node 3: unreadable service list (") and says in str(caught.value)
    assert "\n" not in str(caught.value) and "\x1b" not in str(caught.value)
    good = '[{"Id": "abc", "Name": "/sp-decode-r1", "State": {"Status": "running", "ExitCode": 0},'
    good += ' "Config": {"Labels": {"launcher.replaces": "2:10.9.0.3"}}, "HostConfig": null}]'
    (c,) = parse_list(4, good)
    assert (c.node_index, c.name, c.running, c.labels[REPLACES_LABEL]) == (4, "sp-decode-r1", True, "2:10.9.0.3")


def test_after_a_spare_was_lost_in_turn_its_stale_ranks_lose_to_the_newer_move(loaded):
    """node 4 replaced node 2, then node 4 was lost and node 5 took the ranks on; node 4 comes back still
    running its (now stale) ranks, labelled as replacing node 2, with no watch running to remove them. The
    newer move (its ranks started later) is the record: read back, it is node 2 -> node 5, whatever the
    listing order; the stale claim is said in one line."""
    base = build(loaded)
    once = spares.substitute(loaded, base, 2, 4)
    twice = spares.substitute(loaded, once, 4, 5)

    def at(containers: list[Container], when: str) -> list[Container]:
        for c in containers:
            c.started_at = when
        return containers

    stale = at(labelled(once, 4), "2026-12-07T10:00:01.5Z")
    newer = at(labelled(twice, 5), "2026-12-07T10:20:00.123456789Z")
    for listing in (stale + newer, newer + stale):
        plan, lines = spares.apply_recorded(loaded, base, listing)
        assert plan.substitutes == {2: 5} and nodes_of(plan, "decode") == [1, 5]
        assert len(lines) == 1 and "node 4 (node4 10.9.0.5)" in lines[0] and "another spare has it" in lines[0]


def test_watch_removes_ranks_only_from_a_replaced_node_it_saw_lost(loaded):
    """A label is a spare's word: one on node 4 claiming node 2 (which this watch never saw fail) is no
    ground to remove node 2's running ranks, which would take a healthy group down. Ranks on a replaced
    node this watch saw unreachable are stale, and are removed (said, in a dry run)."""
    base = build(loaded)
    claimed = spares.substitute(loaded, base, 2, 4)
    found = {(c.node_index, c.name): c for c in labelled(base, 2)}  # node 2 runs its decode rank
    said = Said()
    w = SimpleNamespace(t=SimpleNamespace(plan=claimed, loaded=loaded), progress=said, dry_run=True)
    w.unseen = lost.Unseen()
    lost.remove_stale(w, found)
    assert said.lines == [
        "node 2 (node2 10.9.0.3) is replaced by a spare, as its labels say, but this watch never saw it lost:"
        " its ranks (sp-decode-r1) are left running; `launcher up` decides"
    ]
    lost.remove_stale(w, found)
    assert len(said.lines) == 1  # said once
    w.unseen.update({2: "timed out"}, 100.0)
    w.unseen.update({}, 130.0)  # seen again
    lost.remove_stale(w, found)
    assert said.lines[1:] == [
        "saw sp-decode-r1 on node 2 (node2 10.9.0.3) back, replaced on a spare; would remove them;"
        " dry run: nothing done"
    ]


# -- a spare's GPUs, looked at before ranks move onto it (recorded output replayed: tests/gpu_replay.py) -----


def test_a_healthy_spare_is_taken_once_its_gpus_are_looked_at(loaded):
    """The plan gives node 2 two GPUs; the first spare's replayed H100 query lists two, no Xid: taken. Every
    free spare is looked at in one go (one wait, however many turn out unfit), none of the nodes in use."""
    plan = build(loaded)
    fleet = ReplayFleet(plan.nodes, Path(loaded.file).parent)
    said = Said()
    lost.judge(watcher(plan, loaded, fleet, said), 2, "node 2: lost")
    assert said.lines == ["node 2: lost; would move decode to node 4 (node4 10.9.0.5); dry run: nothing done"]
    assert fleet.looked_at() == [4, 5]


@pytest.mark.parametrize(
    ("replay", "refused"),
    [
        (FALLEN, "GPUs drain: 2 GPU(s): Xid 79 on PCI 0000:a1:00: GPU has fallen off the bus"),
        ("one gpu", "1 GPU(s), 2 needed"),
        (NO_TOOL, "no nvidia-smi there: its GPUs cannot be checked (2 needed)"),
        ("garbage", "GPU health unreadable: nvidia-smi's columns are not the ones asked for: "),
    ],
)
def test_a_spare_to_drain_short_of_gpus_or_unchecked_is_skipped_for_the_next(loaded, tmp_path, replay, refused):
    """A spare is the node's word as much as any: an answer that is not the program's (4 KiB of every byte
    as nvidia-smi's output) refuses it in one line, as a spare to drain, short of GPUs or without a tool."""
    plan = build(loaded)
    garbage = tmp_path / "garbage.bin"
    garbage.write_bytes(bytes(range(256)) * 16)
    if isinstance(replay, str):
        replay = {"one gpu": one_gpu(tmp_path), "garbage": {"GPU_REPLAY_QUERY": str(garbage)}}[replay]
    fleet = ReplayFleet(plan.nodes, tmp_path, {4: replay})
    said = Said()
    lost.judge(watcher(plan, loaded, fleet, said), 2, "node 2: lost")
    assert said.lines == ["node 2: lost; would move decode to node 5 (node5 10.9.0.6); dry run: nothing done"]
    assert fleet.looked_at() == [4, 5]
    why = gpu_health.spare_unfit(SimpleNamespace(plan=plan, fleet=fleet), 4, 2, 20.0)
    assert why.startswith(refused) and "\n" not in why, why


def test_no_spare_fit_is_one_line_and_an_alert_naming_each_refusal(loaded, tmp_path):
    """Node 4's GPUs fell off the bus (a recorded Xid 79), node 5 lists one GPU of the two needed: the
    no-spare path, one line and an alert (the head node's audit log, a replayed node too), each spare's
    reason named; the dry run says it too, and alerts nothing."""
    plan = build(loaded)
    fleet = ReplayFleet(plan.nodes, tmp_path, {4: FALLEN, 5: one_gpu(tmp_path)})
    why = ("no spare node fit to take its ranks: node 4 (node4 10.9.0.5): GPUs drain: 2 GPU(s): Xid 79 on PCI"
           " 0000:a1:00: GPU has fallen off the bus (RESTART_BM: reboot the node); a GPU has fallen off the bus"
           " (logged without an Xid); node 5 (node5 10.9.0.6): 1 GPU(s), 2 needed")  # fmt: skip
    dry = Said()
    lost.judge(watcher(plan, loaded, fleet, dry), 2, "node 2: lost")
    assert dry.lines == [f"node 2: lost; cannot move it ({why}); would alert; dry run: nothing done"]
    said = Said()
    lost.judge(watcher(plan, loaded, fleet, said, dry_run=False), 2, "node 2: lost")
    assert said.lines == [
        f"node 2: lost; not replaced: {why}; decode stay down there, the rest keep serving; alerted: audit log"
    ]
    audit = (tmp_path / "state" / "sp" / "audit.log").read_text()
    assert f"watch: node 2 (node2 10.9.0.3) lost, not replaced: {why}" in audit, audit
    assert "\n" not in said.lines[0]


@pytest.mark.parametrize("gpus_per_node", [0, 2])
def test_a_deployment_without_gpus_never_looks_at_a_spares_gpus(tmp_path, gpus_per_node):
    """Mocker groups, with gpus_per_node 0 or left at a GPU count (the mocker is given the node's GPU indices
    and uses none): the plan needs no GPU on the lost node, so a spare without nvidia-smi is fit, nothing
    runs on it to find out, and watch looks at no node's GPUs."""
    text = FILE.replace("gpus_per_node: 2", f"gpus_per_node: {gpus_per_node}")
    text = text.replace("engine: dynamo-sglang", "engine: mocker")
    loaded = load_config(write(tmp_path, text))
    plan = build(loaded)
    fleet = ReplayFleet(plan.nodes, tmp_path, dict.fromkeys(range(6), NO_TOOL))
    said = Said()
    lost.judge(watcher(plan, loaded, fleet, said), 2, "node 2: lost")
    assert said.lines == ["node 2: lost; would move decode to node 4 (node4 10.9.0.5); dry run: nothing done"]
    assert fleet.looked_at() == [] and gpu_health.gpu_nodes(plan) == []


# -- a `restart` verdict: the groups on that GPU restarted, once per kernel log line ---------------------

# node 0: services; node 1: prefill on GPU 0 and decode on GPU 1 (groups sharing a node on GPUs of their own)
SHARED = """\
deployment: rs
image: example/image:1
gpus_per_node: 2
model: {path: /models/x, name: x}
nodes:
  - {address: 10.9.0.1}
  - {address: 10.9.0.2}
services:
  etcd: {node: 0}
  nats: {node: 0}
  frontend: {node: 0}
groups:
  prefill: {engine: dynamo-sglang, nodes: [1], gpus: [0], mode: prefill}
  decode: {engine: dynamo-sglang, nodes: [1], gpus: [1], mode: decode}
"""


def shared_gpus(tmp_path, klog_lines: list[str]):
    """The SHARED plan, its listing (every service running), and a fleet whose node 1 replays the recorded
    H100 query (GPU 0 on bus 18:00, GPU 1 on 2a:00) and KLOG_LINES as its kernel log."""
    loaded = load_config(write(tmp_path, SHARED + f"state_dir: {tmp_path / 'state'}\n"))
    plan = build(loaded)
    klog = tmp_path / "klog.dmesg"
    klog.write_text("\n".join(klog_lines) + "\n")
    replay = {"GPU_REPLAY_QUERY": str(REPO / "tests/data/gpu/query-h100-nccl-1264.csv"), "GPU_REPLAY_KLOG": str(klog)}
    fleet = ReplayFleet(plan.nodes, tmp_path, {1: replay})
    listing = {(c.node_index, c.name): c for i in range(2) for c in labelled(plan, i)}
    return loaded, plan, fleet, listing


def xid43_lines() -> list[str]:
    return (REPO / "tests/data/gpu/klog/akash-support-244.dmesg").read_text().splitlines()


def test_a_restart_verdict_restarts_the_group_on_that_gpu_once(tmp_path, monkeypatch):
    """The recorded Xid 43 line (akash-support-244), its bus written as GPU 1's (2a:00, not a recording),
    logged after watch's first look: its round (dry run) says it would restart decode, whose rank uses GPU 1,
    not prefill on GPU 0. The look peeks, so the line comes back: the next rounds neither say it again nor,
    once decode's container is a new one, ask for another restart. The first look only takes note: a line
    already there when a watch begins may be older than the containers (a watch started again)."""
    from launcher.commands import watch

    line = next(x for x in xid43_lines() if "): 43," in x).replace("PCI:0000:00:05", "PCI:0000:2a:00")
    loaded, plan, fleet, listing = shared_gpus(tmp_path, [line])
    monkeypatch.setattr(watch, "list_services", lambda t, indices=None, timeout=None: (listing, {}))
    said = Said()
    t = SimpleNamespace(plan=plan, loaded=loaded, fleet=fleet, head=fleet.host(0))
    w = watch.Watcher(t, said, watch.units(plan), dry_run=True)
    w.round()  # the line was there before this watch: noted, not acted on
    assert said.lines == ["first look: 5/5 unit(s) running as planned, 0/0 rank health probe(s) passing"]
    later = line.replace("[", "[1", 1)  # the same Xid logged again later (its kernel timestamp 10x on)
    (tmp_path / "klog.dmesg").write_text(later + "\n")
    w.unseen.gpus_next = 0.0  # the next look is due now
    w.round()
    assert said.lines[1:] == [
        "group decode: saw node1 decode r0 GPU verdict restart (Xid 43 on GPU 1 (PCI 0000:2a:00): GPU stopped"
        " processing, a channel reset after an application fault (RESTART_APP)); would restart it (1/5);"
        " dry run: nothing done"
    ]
    assert fleet.looked_at() == [1]  # the node with GPU groups only, not node 0's services
    w.unseen.gpus_next = 0.0  # the same line again (peek)
    w.round()
    assert len(said.lines) == 2  # said once while its restart waits
    decode = next(k for k in listing if k[1] == "rs-decode-r0")
    listing[decode] = Container(1, "new-id", "rs-decode-r0", listing[decode].labels, "running", 0)  # restarted
    w.unseen.gpus_next = 0.0
    assert lost.gpu_restarts(w, listing) == {}
    w.round()
    assert len(said.lines) == 2 and w.unseen.gpus.pending == {}
    assert sum(1 for s in fleet.host(1).scripts if '"$PY" -' in s) == 4  # looked at four times, acted once


def test_a_restart_verdict_spares_a_container_started_since_the_last_look(tmp_path):
    """An Xid that killed decode: `dead()` restarted it before the next GPU look, which then finds the line.
    The container is younger than that look's predecessor, so the Xid may predate it: not restarted again."""
    line = next(x for x in xid43_lines() if "): 43," in x).replace("PCI:0000:00:05", "PCI:0000:2a:00")
    loaded, plan, fleet, listing = shared_gpus(tmp_path, [])
    w = watcher(plan, loaded, fleet, Said())
    lost.check(w, {}, 0.0, listing)  # the first look: nothing logged
    (tmp_path / "klog.dmesg").write_text(line + "\n")
    decode = next(k for k in listing if k[1] == "rs-decode-r0")
    listing[decode] = Container(1, "new-id", "rs-decode-r0", listing[decode].labels, "running", 0)  # restarted
    w.unseen.gpus_next = 0.0
    lost.check(w, {}, 0.0, listing)
    assert lost.gpu_restarts(w, listing) == {}
    w.unseen.gpus_next = 0.0
    lost.check(w, {}, 0.0, listing)  # acted on (by dead()): not asked later either
    assert lost.gpu_restarts(w, listing) == {}


def test_an_xid_on_a_bus_the_query_does_not_list_restarts_every_gpu_group_on_the_node(tmp_path):
    """The recorded akash-support-244 kernel log: Xid 43, 31 and 94 on buses 00:05, 00:07, 00:08, which the
    recorded query (18:00, 2a:00) does not list, logged after watch's first look: both groups on the node are
    asked to restart, one reason each; a look that finds them again adds nothing."""
    loaded, plan, fleet, listing = shared_gpus(tmp_path, [])
    w = watcher(plan, loaded, fleet, Said())
    lost.check(w, {}, 0.0, listing)  # the first look: nothing logged yet
    (tmp_path / "klog.dmesg").write_text("\n".join(xid43_lines()) + "\n")
    w.unseen.gpus_next = 0.0
    lost.check(w, {}, 0.0, listing)
    asked = lost.gpu_restarts(w, listing)
    assert sorted(asked) == ["rs-decode-r0", "rs-prefill-r0"], asked
    assert all(" GPU verdict restart (Xid " in why and "on PCI 0000:00:0" in why for why in asked.values()), asked
    w.unseen.gpus.pending.clear()
    w.unseen.gpus_next = 0.0
    lost.check(w, {}, 0.0, listing)
    assert lost.gpu_restarts(w, listing) == {}  # every line acted on already
