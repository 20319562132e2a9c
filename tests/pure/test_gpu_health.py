"""GPU health without a GPU: real recorded `nvidia-smi` and kernel-log output (tests/data/gpu/README.md
names where each sample comes from) replayed through the parser, through the node program (a stand-in
nvidia-smi and journalctl first in PATH, a test-only directory), and through `launcher doctor`, `status`
and `collect` run as a user runs them. Hostile answers (huge, binary, lying) are refused with one line."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from launcher.operations import gpu_health
from launcher.operations.gpu_health import GpuAnswerError, parse, xid_finding
from launcher.remote import program
from tests.helpers import REPO, fresh_env, local_command_deployment

DATA = REPO / "tests" / "data" / "gpu"
KLOG = DATA / "klog"
REPLAY_BIN = DATA / "bin"
QUERY = (DATA / "query-h100-nccl-1264.csv").read_text()


def answer(query: str = QUERY, lines: list[str] = (), new: bool = True, rc: int | None = 0, **extra) -> str:
    klog = {"source": "journalctl", "lines": [{"line": x, "new": new} for x in lines], "error": None}
    return json.dumps({"v": 1, "tool": "nvidia-smi", "query": {"rc": rc, "out": query}, "klog": klog, **extra})


def recorded(name: str) -> list[str]:
    return (KLOG / name).read_text().splitlines()


def verdicts(lines: list[str]) -> list[tuple[int | str, str]]:
    """(Xid, verdict) per line that is one; 'off-bus' for a fall off the bus logged without an Xid."""
    out = []
    for line in lines:
        found = xid_finding(line)
        if found:
            xid = found.text.split()[1] if found.text.startswith("Xid ") else "off-bus"
            out.append((int(xid) if xid != "off-bus" else xid, found.verdict))
    return out


RECORDED = {
    "akash-support-244.dmesg": [(43, "restart"), (43, "restart"), (31, "restart"), (94, "restart")],
    "akash-support-209-xid79.dmesg": [(79, "drain"), ("off-bus", "drain")],
    "gpu-operator-1146-xid48-64.syslog": [(48, "drain"), (64, "drain")],
    "gpud-46-xid13-109.dmesg": [(13, "restart")] * 3 + [(109, "restart")],
    "nvsentinel-155-off-bus.dmesg": [("off-bus", "drain")],
    "open-gpu-kernel-modules-1150-xid45.journal": [(45, "ignore"), (45, "ignore")],
    "ml-engineering-xid63.log": [(63, "drain")],
    "gpud-1174-xid94.kmsg": [(94, "restart")],
}


@pytest.mark.parametrize("name", sorted(RECORDED))
def test_each_recorded_kernel_log_reaches_its_verdicts(name):
    assert verdicts(recorded(name)) == RECORDED[name]


def test_the_table_covers_the_catalogue_classes_and_names_an_unknown_xid():
    # Lines in the recorded format (gpud-1174's) for the classes no public recording was found for.
    wanted = {13: "restart", 31: "restart", 43: "restart", 48: "drain", 63: "drain", 64: "drain", 74: "drain",
              79: "drain", 92: "ignore", 94: "restart", 95: "drain", 119: "drain", 120: "drain"}  # fmt: skip
    for xid, verdict in wanted.items():
        found = xid_finding(f"NVRM: Xid (PCI:0000:9b:00): {xid}, pid=1234, name=python3, detail")
        assert (found.verdict, found.text.split(":")[0]) == (verdict, f"Xid {xid} on PCI 0000"), xid
    unknown = xid_finding("NVRM: Xid (PCI:0000:9b:00): 999, pid=1, name=x, what")
    assert unknown.verdict == "warn" and gpu_health.CATALOG in unknown.text
    assert xid_finding("NVRM: loading NVIDIA UNIX x86_64 Kernel Module  535.183.01") is None


def test_a_recorded_healthy_node_and_a_missing_gpu():
    healthy = parse(answer(), expected=2)
    assert (healthy.verdict, healthy.summary()) == ("ok", "2 GPU(s) of 2 planned, healthy")
    short = parse(answer(), expected=8)
    assert short.verdict == "drain" and "GPU missing: 2 of the 8 planned" in short.summary()
    failing = parse(answer(query="No devices were found\n", rc=6), expected=8)
    assert failing.verdict == "drain" and "nvidia-smi fails: No devices were found" in failing.summary()
    with pytest.raises(GpuAnswerError, match="no python3 on the node"):
        parse(gpu_health.NO_PYTHON + "\n", expected=8)
    none = parse(json.dumps({"v": 1, "tool": None}), expected=8)
    assert (none.verdict, none.summary()) == ("ok", "no NVIDIA GPU tool (nvidia-smi) on the node")


def test_counters_reach_their_verdicts():
    head = QUERY.splitlines()[0]
    row = "0, [N/A], NVIDIA H100 80GB HBM3, 00000000:18:00.0, {}, {}, {}, {}, {}"
    cases = [
        (("3", "[N/A]", "No", "No", "0x0"), "drain", "3 uncorrected ECC error(s)"),
        (("0", "[N/A]", "Yes", "No", "0x0"), "drain", "a row remapping is pending"),
        (("0", "[N/A]", "No", "Yes", "0x0"), "drain", "a row remapping failed"),
        (("0", "Yes", "No", "No", "0x0"), "drain", "a page retirement is pending"),
        (("0", "[N/A]", "No", "No", "0x0000000000000040"), "warn", "hardware thermal slowdown"),
        (("0", "[N/A]", "No", "No", "0x0000000000000001"), "ok", "healthy"),  # idle is not a fault
        (("[N/A]", "[N/A]", "[N/A]", "[N/A]", "[N/A]"), "ok", "healthy"),
    ]
    for values, verdict, says in cases:
        node = parse(answer(query=f"{head}\n{row.format(*values)}\n"), expected=1)
        assert node.verdict == verdict and says in node.summary(), values


def test_a_fatal_xid_holds_until_reboot_an_application_one_only_when_new():
    old_79 = parse(answer(lines=recorded("akash-support-209-xid79.dmesg"), new=False), expected=2)
    assert old_79.verdict == "drain" and "Xid 79 on PCI 0000:a1:00" in old_79.summary()
    old_13 = parse(answer(lines=recorded("gpud-46-xid13-109.dmesg"), new=False), expected=2)
    assert old_13.verdict == "ok"
    new_13 = parse(answer(lines=recorded("gpud-46-xid13-109.dmesg")), expected=2)
    assert new_13.verdict == "restart" and "Xid 13 on PCI 0000:cb:00" in new_13.summary()
    # an Xid on a GPU the query lists is named by its index
    on_gpu1 = parse(answer(lines=["NVRM: Xid (PCI:0000:2a:00): 95, pid=7, name=python3, Uncontained"]), expected=2)
    assert "Xid 95 on GPU 1 (PCI 0000:2a:00)" in on_gpu1.summary()


HOSTILE = {
    "huge": "x" * (gpu_health.ANSWER_BYTES + 1),
    "binary": "\x00\xff\x1b[2J\x7f" * 100,
    "two lines": answer() + "\n" + answer(),
    "not json": "{not json",
    "deep": "[" * 100000,
    "other version": json.dumps({"v": 2, "tool": "nvidia-smi"}),
    "other tool": json.dumps({"v": 1, "tool": "rm -rf /"}),
    "query missing": json.dumps({"v": 1, "tool": "nvidia-smi", "klog": {}}),
    "wrong columns": answer(query="index, name\n0, x\n"),
    "short row": answer(query=QUERY.splitlines()[0] + "\n0, a, b\n"),
    "index twice": answer(query=QUERY + QUERY.splitlines()[1] + "\n"),
    "index not a number": answer(query=QUERY.splitlines()[0] + "\n²" + QUERY.splitlines()[1][1:] + "\n"),
    "lying count": answer(query=QUERY.splitlines()[0] + "\n" + "".join(
        f"{i}, u, n, 00000000:{i:02x}:00.0, 0, No, No, No, 0x0\n" for i in range(65))),
    "nul in csv": answer(query=QUERY.splitlines()[0] + "\n0, \x00, \"unclosed\n"),
    "too many lines": answer(lines=["NVRM: Xid (PCI:0000:9b:00): 13, x"] * 65),
    "entry shape": json.dumps({"v": 1, "tool": "nvidia-smi", "query": {"rc": 0, "out": QUERY},
                               "klog": {"source": "j", "lines": [["x"]], "error": None}}),
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_a_hostile_answer_is_refused_with_one_line(name):
    with pytest.raises(GpuAnswerError) as refused:
        parse(HOSTILE[name], expected=8)
    assert "\n" not in str(refused.value) and 0 < len(str(refused.value)) < 200


def test_fuzzed_answers_give_a_verdict_or_one_line():
    rng = random.Random(29)
    base = answer(lines=recorded("akash-support-244.dmesg") + recorded("gpu-operator-1146-xid48-64.syslog"))
    outcomes = {"parsed": 0, "refused": 0}
    for _ in range(400):
        text = list(base)
        for _ in range(rng.randint(1, 8)):
            at = rng.randrange(len(text))
            text[at : at + rng.randint(0, 3)] = rng.choice(['"', ",", "}", "0", "\n", "é", "\x00", "9" * 30, ""])
        try:
            node = parse("".join(text), expected=2)
        except GpuAnswerError as exc:
            assert "\n" not in str(exc)
            outcomes["refused"] += 1
        else:
            assert node.verdict in gpu_health.RANK and all(c.isprintable() for c in node.summary())
            outcomes["parsed"] += 1
    assert outcomes["parsed"] > 0 and outcomes["refused"] > 0, outcomes


# -- the node program, run here with the stand-ins first in PATH ----------------------------------


def run_program(tmp_path: Path, *args: str, replay: bool = True, **env: str) -> str:
    path = f"{REPLAY_BIN}:/usr/bin:/bin" if replay else "/usr/sbin:/usr/bin:/bin"
    state = str(tmp_path / "state" / "gpu-health.json")
    done = subprocess.run(
        [sys.executable, "-", state, *args], input=program("gpu_health"), capture_output=True, text=True,
        env={"PATH": path, "HOME": str(tmp_path), **env}, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_the_node_program_reads_the_replayed_tools_and_remembers_its_place(tmp_path):
    env = {"GPU_REPLAY_QUERY": str(DATA / "query-h100-nccl-1264.csv"),
           "GPU_REPLAY_KLOG": str(KLOG / "akash-support-244.dmesg")}  # fmt: skip
    first = parse(run_program(tmp_path, **env), expected=2)
    assert first.verdict == "restart" and "Xid 43 on PCI 0000:00:05" in first.summary()
    assert json.loads((tmp_path / "state" / "gpu-health.json").read_text())["cursor"] == "s=replay;i=1"
    again = parse(run_program(tmp_path, **env), expected=2)  # nothing new since the last look
    assert (again.verdict, again.summary()) == ("ok", "2 GPU(s) of 2 planned, healthy")
    denied = parse(run_program(tmp_path / "denied", GPU_REPLAY_KLOG_DENIED="1", **env), expected=2)
    assert denied.verdict == "warn" and "may not read the kernel log" in denied.summary()
    none = json.loads(run_program(tmp_path, "--diag", replay=False))
    assert none == {"v": 1, "tool": None, "dcgmi": None}
    assert parse(json.dumps(none), expected=8).diag == "dcgmi is not installed on the node"


def test_the_node_program_bounds_a_flood_and_the_parser_refuses_it(tmp_path):
    flood = tmp_path / "flood.csv"
    rows = "".join(f"{i % 1000}, u, n, 00000000:18:00.0, 0, No, No, No, 0x0\n" for i in range(200000))
    flood.write_text(QUERY.splitlines()[0] + "\n" + rows)
    garbage = tmp_path / "garbage.bin"
    garbage.write_bytes(bytes(range(256)) * 16)  # 4 KiB: under the bound, read whole
    for source, says in ((flood, "past its bounds"), (garbage, "columns are not the ones asked for")):
        out = run_program(tmp_path, GPU_REPLAY_QUERY=str(source))
        assert len(out) < gpu_health.ANSWER_BYTES
        with pytest.raises(GpuAnswerError, match=says):
            parse(out, expected=8)


def test_a_tool_that_floods_or_hangs_is_stopped_at_its_bounds():
    from launcher.remote import gpu_health as node_side

    started = time.monotonic()
    flood = node_side.bounded([sys.executable, "-c", "while True: print('0' * 100)"], 4096, 10.0)
    # closes its output, then never exits (a tool stuck in the driver can)
    hang = node_side.bounded([sys.executable, "-c", "import os, time; print('x', flush=True); os.close(1); "
                              "time.sleep(60)"], 4096, 1.0)  # fmt: skip
    assert flood[0] is None and len(flood[1]) == 4096
    assert hang == (None, "x\n") and time.monotonic() - started < 10


# -- as a user runs it --------------------------------------------------------------------------------


def launcher(args: list[str], cwd: Path, replay: dict[str, str] | None) -> subprocess.CompletedProcess:
    env = fresh_env()
    if replay is not None:
        env = {**env, "PATH": f"{REPLAY_BIN}:{env['PATH']}", **replay}
    return subprocess.run([sys.executable, "-m", "launcher", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120)  # fmt: skip


def test_doctor_status_and_collect_show_a_replayed_fallen_gpu(tmp_path):
    config = str(local_command_deployment(tmp_path, "gpuh", "worker", "sleep 1"))
    plain = launcher(["doctor", config, "--no-args"], tmp_path, replay=None)
    assert "no NVIDIA GPU tool" in plain.stdout and "gpu-health" in plain.stdout, plain.stdout + plain.stderr
    assert "Traceback" not in plain.stderr
    replay = {"GPU_REPLAY_QUERY": str(DATA / "query-h100-nccl-1264.csv"),
              "GPU_REPLAY_KLOG": str(KLOG / "akash-support-209-xid79.dmesg")}  # fmt: skip
    doctor = launcher(["doctor", config, "--no-args", "--gpu-diag"], tmp_path, replay)
    assert doctor.returncode == 1, doctor.stdout + doctor.stderr
    row = next(line for line in doctor.stdout.splitlines() if "gpu-health" in line)
    assert "fail" in row and "Xid 79" in doctor.stdout and "fallen off the bus" in doctor.stdout
    assert "dcgmi is not installed" in doctor.stdout
    status = launcher(["status", config], tmp_path, replay)  # a later look: the fatal Xid still counts
    assert status.returncode == 1
    assert "GPUs drain: 2 GPU(s): Xid 79 on PCI 0000:a1:00" in " ".join(status.stdout.split()), status.stdout
    bundle = launcher(["collect", config, "--out", str(tmp_path) + "/"], tmp_path, replay)
    with tarfile.open(next(tmp_path.glob("launcher-collect-*.tar.gz"))) as tar:
        raw = next(m for m in tar.getmembers() if m.name.endswith("/gpu-health.json"))
        assert "Xid (PCI:0000:a1:00): 79" in tar.extractfile(raw).read().decode(), bundle.stderr
    assert os.environ.get("GPU_REPLAY_KLOG") is None  # the stand-ins never reach this process's PATH


# -- the kernel log position kept on the node: another user of the node may not steer it ------------------


def test_the_state_file_is_never_written_or_read_through_a_planted_link(tmp_path):
    from launcher.remote import gpu_health as node_side

    victim = tmp_path / "victim"
    victim.write_text("the SSH user's file\n")
    path = tmp_path / "gpu-health.json"
    (tmp_path / f"gpu-health.json.{os.getpid()}.tmp").symlink_to(victim)  # the name save() writes first
    node_side.save(str(path), {"cursor": "c", "boot": node_side.boot_id(), "seen": []})
    assert victim.read_text() == "the SSH user's file\n"
    assert json.loads(path.read_text())["cursor"] == "c" and oct(path.stat().st_mode & 0o777) == "0o600"
    forged = tmp_path / "forged.json"
    line = "NVRM: Xid (PCI:0000:a1:00): 79, pid=0, GPU has fallen off the bus."
    forged.write_text(json.dumps({"cursor": "x", "boot": node_side.boot_id(), "seen": [line]}))
    path.unlink()
    path.symlink_to(forged)
    assert node_side.load(str(path)) == {}


def state_dir_answer(tmp_path: Path, state_dir: Path) -> str:
    """The node script `status` and `doctor` send, run here under bash with the stand-in tools."""
    from launcher.config.load import load
    from launcher.plan.build import build

    config = local_command_deployment(tmp_path, "gpust", "worker", "sleep 1")
    config.write_text(config.read_text().replace(str(tmp_path / "state"), str(state_dir)))
    plan = build(load(config, environ={}))
    env = {"PATH": f"{REPLAY_BIN}:/usr/bin:/bin", "HOME": str(tmp_path),
           "GPU_REPLAY_QUERY": str(DATA / "query-h100-nccl-1264.csv"),
           "GPU_REPLAY_KLOG": str(KLOG / "akash-support-244.dmesg")}  # fmt: skip
    done = subprocess.run(["bash", "-c", gpu_health.node_script(plan)], input=program("gpu_health"),
                          capture_output=True, text=True, env=env, timeout=60)  # fmt: skip
    return done.stdout


def test_a_state_dir_of_another_user_is_refused_not_written_to(tmp_path):
    shared = tmp_path / "shared"  # another user made the shared state_dir first, writable by all
    shared.mkdir()
    (shared / "gpust").mkdir()
    for d in (shared, shared / "gpust"):
        os.chown(d, 65534, 65534)
        d.chmod(0o777)
    node = parse(state_dir_answer(tmp_path, shared), expected=2)
    assert list((shared / "gpust").iterdir()) == []  # nothing written where that user can swap files
    assert node.verdict == "restart" and "Xid 43" in node.summary()  # the kernel log is still read
    warned = [f.text for f in node.findings if f.verdict == "warn"]
    assert any("position not kept" in w and "owned by nobody" in w for w in warned), warned
    mine = tmp_path / "mine"  # missing: created for this user alone, the position kept there
    assert parse(state_dir_answer(tmp_path, mine), expected=2).verdict == "restart"
    assert oct(mine.stat().st_mode & 0o777) == "0o700" and (mine / "gpust" / "gpu-health.json").is_file()
    assert parse(state_dir_answer(tmp_path, mine), expected=2).verdict == "ok"  # nothing new since


def test_a_node_shared_by_two_groups_expects_every_gpu_the_plan_gives_it(tmp_path):
    """Prefill on GPUs 0-3 and decode on 4-7 of one node: the plan needs 8 there, so a node whose query lists
    6 (two vanished without an Xid) is short of GPUs, though each group alone uses 4."""
    from launcher.config.load import load
    from launcher.plan.build import build
    from tests.helpers import write

    text = """\
    deployment: demo
    image: example/image:1
    gpus_per_node: 8
    nodes:
      - {name: a, address: 10.9.0.1}
    groups:
      prefill: {engine: dynamo-sglang, nodes: [a], gpus: [0, 1, 2, 3], args: {tp-size: 4}}
      decode: {engine: dynamo-sglang, nodes: [a], gpus: [4, 5, 6, 7], args: {tp-size: 4}}
    """
    plan = build(load(write(tmp_path, text), environ={}))
    assert gpu_health.expected_gpus(plan, 0) == 8
    header, row = QUERY.splitlines()[:2]
    six = "\n".join([header, *(row.replace("0,", f"{i},", 1) for i in range(6))]) + "\n"
    node = parse(answer(query=six), expected=gpu_health.expected_gpus(plan, 0))
    assert node.verdict == "drain" and "GPU missing: 6 of the 8 planned" in node.summary(), node.summary()


def test_a_kernel_log_past_its_byte_bound_is_read_again_shorter_never_taken_as_whole(tmp_path):
    """20,000 kernel lines of 330 bytes (a busy node: firewall logging) are 6.6 MB, past the 4 MiB the node
    program reads: the newest lines, the Xids and journalctl's cursor, are the ones a cut drops. The program
    reads the newest lines again, fewer, rather than judge the oldest part and keep no position."""
    env = {"GPU_REPLAY_QUERY": str(DATA / "query-h100-nccl-1264.csv"), "GPU_REPLAY_KLOG_FLOOD": "20000",
           "GPU_REPLAY_KLOG": str(KLOG / "akash-support-209-xid79.dmesg")}  # fmt: skip
    node = parse(run_program(tmp_path, **env), expected=2)
    assert node.verdict == "drain" and "Xid 79" in node.summary(), node.summary()
    assert json.loads((tmp_path / "state" / "gpu-health.json").read_text())["cursor"] == "s=replay;i=1"


def test_a_burst_of_cleanup_xids_after_a_fatal_one_never_pushes_it_out(tmp_path):
    """Xid 79, then Xid 45 for each channel of each process it killed (lines built in the format of the
    recorded open-gpu-kernel-modules-1150 journal, not a recording): the program keeps 64 lines, and the
    burst must not leave only the cleanup lines, which the table ignores."""
    burst = [f"kernel: NVRM: Xid (PCI:0000:a1:00): 45, pid={1000 + i}, name=python3, Ch {i:08x}" for i in range(100)]
    klog = tmp_path / "xid79-then-45s.journal"
    klog.write_text((KLOG / "akash-support-209-xid79.dmesg").read_text() + "\n".join(burst) + "\n")
    env = {"GPU_REPLAY_QUERY": str(DATA / "query-h100-nccl-1264.csv"), "GPU_REPLAY_KLOG": str(klog)}
    node = parse(run_program(tmp_path, **env), expected=2)
    assert node.verdict == "drain" and "Xid 79 on PCI 0000:a1:00" in node.summary(), node.summary()
    later = parse(run_program(tmp_path, **env), expected=2)  # the next look: still flagged until a reboot
    assert later.verdict == "drain" and "Xid 79" in later.summary(), later.summary()


# -- top: a `gpu` column with each node's verdict --------------------------------------------------------


def top_rows(tmp_path: Path, gpus_per_node: int, replays: dict) -> tuple[list, object]:
    """Two rounds of top's sampler over two nodes each running one `command` group (nothing started: the
    process runtime lists no service) whose GPU looks replay recorded output (tests/gpu_replay.py)."""
    import yaml

    from launcher.commands.top import Sampler
    from launcher.config.load import load
    from launcher.operations.context import Target
    from launcher.plan.build import build
    from launcher.runtime import for_plan
    from tests.gpu_replay import ReplayFleet

    data = {
        "deployment": "gtop", "runtime": "process", "state_dir": str(tmp_path / "state"),
        "gpus_per_node": gpus_per_node,
        "nodes": [{"name": "a", "address": "10.9.0.1"}, {"name": "b", "address": "10.9.0.2"}],
        "services": {"etcd": {"enabled": False}, "nats": {"enabled": False}, "frontend": {"enabled": False}},
        "groups": {g: {"engine": "command", "nodes": [g], "args": ["sleep", "1"]} for g in ("a", "b")},
    }  # fmt: skip
    tmp_path.mkdir(exist_ok=True)
    config = tmp_path / "gtop.yaml"
    config.write_text(yaml.safe_dump(data))
    plan = build(load(config, environ={}))
    t = Target(config, None, plan, for_plan(plan))
    t.fleet = ReplayFleet(plan.nodes, tmp_path, replays)
    sampler = Sampler(t)
    try:
        sampler.round(30.0, patience=30.0)
        return sampler.round(30.0, patience=30.0), t.fleet
    finally:
        sampler.close()


def test_top_shows_each_gpu_nodes_verdict_in_a_gpu_column(tmp_path):
    """Node a replays the recorded healthy H100 query, node b the recorded Xid 79 (fallen off the bus):
    each row carries its node's verdict, looked at once over two rounds (every 30 s), in the table's `gpu`
    column and in --json; a deployment without GPUs has no such column and looks at nothing."""
    from rich.console import Console

    from launcher.output.top_view import table
    from tests.gpu_replay import FALLEN

    rows, fleet = top_rows(tmp_path, 2, {1: FALLEN})
    marks = {r.node: r.gpu_health for r in rows}
    assert marks["a"] == "ok"
    assert marks["b"] == ("drain: Xid 79 on PCI 0000:a1:00: GPU has fallen off the bus (RESTART_BM: reboot the node)"
                          " (+1 more)"), marks  # fmt: skip
    assert [sum('"$PY" -' in s for s in fleet.host(i).scripts) for i in (0, 1)] == [1, 1]
    console = Console(width=400, record=True)
    console.print(table(rows, "top"))
    text = console.export_text()
    header = next(line for line in text.splitlines() if line.lstrip().startswith("node"))
    assert header.rstrip().endswith("gpu") and "drain: Xid 79 on PCI 0000:a1:00" in text, text
    assert rows[1].to_json()["gpu_health"] == marks["b"]
    plain, fleet = top_rows(tmp_path / "none", 0, {})
    assert {r.gpu_health for r in plain} == {None} and fleet.looked_at() == []
    console = Console(width=400, record=True)
    console.print(table(plain, "top"))
    assert " gpu" not in console.export_text()


def test_a_gpu_fallen_off_the_bus_is_gone_and_an_ecc_count_is_not(tmp_path):
    """watch drains a node's groups before it moves them off a node its GPUs exclude, unless a GPU there no
    longer serves at all (then its ranks cannot finish what they hold): the recorded Xid 79 log says so; a
    drain for memory errors alone, or a healthy node, does not."""
    from launcher.operations import gpu_health
    from tests.gpu_replay import FALLEN, HEALTHY

    fallen = gpu_health.parse(run_program(tmp_path / "fallen", **FALLEN), expected=2)
    assert fallen.verdict == "drain" and gpu_health.gpu_gone(fallen)
    assert not gpu_health.gpu_gone(gpu_health.parse(run_program(tmp_path / "ok", **HEALTHY), expected=2))
    ecc = gpu_health.Finding("drain", "GPU 0: 2 uncorrected ECC error(s) since the driver loaded")
    assert not gpu_health.gpu_gone(gpu_health.NodeGpus(tool=True, findings=[ecc]))
    assert not gpu_health.gpu_gone("no answer")
