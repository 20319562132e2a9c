"""Slurm without a cluster: `-i slurm` read from scontrol's output, the batch script `export --to slurm`
writes (bash's own syntax check, every node address from the job, pyxis options, GPUs), and the step
wrapper on real local processes: a signal ends its service's whole session, orphans included.
The cluster itself is in tests/testbed/test_slurm_testbed.py."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from launcher.config import slurm
from launcher.plan.kube.exporter import placeholder
from launcher.runtime.shell import q
from launcher.runtime.slurm import WRAPPER, word
from tests.helpers import CONFIGS, alive, fresh_env, run_cli, session_members, wait_for, write

SHOW_NODE = """\
NodeName=gpu-a01 Arch=x86_64 CoresPerSocket=56 CPUAlloc=0 Gres=gpu:h100:8(S:0-1) NodeAddr=10.1.0.11 NodeHostName=gpu-a01 State=IDLE
NodeName=gpu-a02 Arch=x86_64 CoresPerSocket=56 CPUAlloc=0 Gres=gpu:h100:8(S:0-1) NodeAddr=10.1.0.12 NodeHostName=gpu-a02 State=IDLE
"""  # noqa: E501


def test_allocation_nodes_addresses_and_gpus():
    names = slurm.hostnames("gpu-a01\ngpu-a02\n")
    nodes = slurm.node_fields(SHOW_NODE)
    inv = slurm.inventory(names, nodes, gpus=None)  # no GPUs asked of the job: the nodes' GRES
    assert [(n.name, n.address, n.gpus) for n in inv.nodes] == [
        ("gpu-a01", "10.1.0.11", 8),
        ("gpu-a02", "10.1.0.12", 8),
    ]
    assert [n.gpus for n in slurm.inventory(names, nodes, gpus=4).nodes] == [4, 4]  # the job's share wins
    no_gres = slurm.node_fields("NodeName=tb0 NodeAddr=10.213.0.10 Gres=(null)\n")
    assert slurm.inventory(["tb0"], no_gres, None).nodes[0].gpus is None  # then the file's gpus_per_node


@pytest.mark.parametrize(
    "environ, job, gpus",
    [
        ({"SLURM_GPUS_ON_NODE": "8"}, "", 8),
        ({"SLURM_GPUS_PER_NODE": "h100:4"}, "", 4),
        ({}, "JobId=7 NumNodes=2 TresPerNode=gres:gpu:8", 8),
        ({}, "JobId=7 NumNodes=2 AllocTRES=cpu=224,mem=2T,node=2,billing=224,gres/gpu=16", 8),
        ({}, "JobId=7 NumNodes=13 AllocTRES=cpu=26,node=13", None),
    ],
)
def test_gpus_of_the_job(environ, job, gpus):
    assert slurm.job_gpus(environ, job) == gpus


def test_i_slurm_outside_an_allocation_is_one_line_exit_2(tmp_path, capsys):
    env = {k: v for k, v in fresh_env().items() if not k.startswith("SLURM_")}
    for command in (["plan", str(CONFIGS / "testbed-small.yaml")], ["status", "-c", str(CONFIGS / "local.yaml")]):
        run = subprocess.run(
            [sys.executable, "-m", "launcher", *command, "-i", "slurm"],
            capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path,
        )  # fmt: skip
        lines = run.stderr.strip().splitlines()
        assert run.returncode == 2 and len(lines) == 1, run.stderr
        assert lines[0].startswith("error: -i slurm: not inside a Slurm allocation (SLURM_JOB_NODELIST")


# -- the batch script -----------------------------------------------------------------------------------


def script_for(tmp_path: Path, capsys, text: str) -> str:
    path = write(tmp_path, text)
    out = tmp_path / "job.sbatch"
    code, _, err = run_cli(["export", str(path), "--to", "slurm", "-o", str(out)], capsys)
    assert code == 0, err
    check = subprocess.run(["bash", "-n", str(out)], capture_output=True, text=True, timeout=30)
    assert check.returncode == 0, check.stderr  # bash's own syntax check of the whole script
    return out.read_text()


def launches(script: str) -> dict[str, str]:
    """Each service's `launch` line (joined with its continuation)."""
    out = {}
    for block in script.split("\nlaunch ")[1:]:
        line = block.replace("\\\n  ", "").split("\n", 1)[0]
        out[line.split(" ", 1)[0]] = line
    return out


def test_every_node_address_comes_from_the_job(tmp_path, capsys):
    script = script_for(tmp_path, capsys, (CONFIGS / "dsr1-104gpu.yaml").read_text())
    assert "#SBATCH --nodes=13" in script and "#SBATCH --gpus-per-node=8" in script
    steps = launches(script)
    assert "192.0.2." not in script and not [s for s in steps.values() if "launcher-node-" in s]
    assert len(steps) == 1 + 1 + 1 + 4 + 9  # etcd, NATS, the frontend, 4 prefill and 9 decode ranks
    assert '--dist-init-addr "${ADDR[4]}":29500' in steps["decode-r3"]  # decode's leader is the job's 5th node
    assert "--node-rank 3 " in steps["decode-r3"] and steps["decode-r3"].startswith("decode-r3 7 ")
    assert 'ETCD_ENDPOINTS=http://"${ADDR[0]}":2379' in steps["decode-r3"]
    assert 'DYN_TCP_RPC_HOST="${ADDR[7]}"' in steps["decode-r3"]  # each rank's own address
    # docker runtime: the image through pyxis, the file's mounts and devices; no GPU for etcd
    assert "--container-image=dynamo-wideep:sglang-0.5.21-dynamo-1.6.1" in steps["decode-r3"]
    assert "--container-mounts=/models/DeepSeek-R1:/model:ro," in steps["decode-r3"]
    assert "--gres=none" in steps["etcd"] and "--gres=none" not in steps["decode-r3"]
    assert "grep -q -- --container-image" in script  # refuses to start without pyxis, in one line


def test_process_runtime_and_a_groups_gpus(tmp_path, capsys):
    text = """\
deployment: p
runtime: process
python_env: /opt/env
model: {path: /m}
nodes: [{address: 10.0.0.1}, {address: 10.0.0.2}]
groups:
  decode: {engine: dynamo-sglang, nodes: [1], gpus: [4, 5, 6, 7]}
  prefill: {engine: mocker, nodes: [0]}
"""
    script = script_for(tmp_path, capsys, text)
    steps = launches(script)
    assert "--container-image" not in script.split("WAITER=", 1)[0] + "".join(steps.values())
    assert "PATH=/opt/env/bin:/usr/local/bin:/usr/bin:/bin" in steps["decode-r0"]
    assert "CUDA_VISIBLE_DEVICES=4,5,6,7" in steps["decode-r0"] and "CUDA_VISIBLE_DEVICES" not in steps["prefill-r0"]
    assert "--gres=none" in steps["prefill-r0"]  # the mocker needs no GPU of the job


def test_a_placeholder_becomes_the_nodes_address_word():
    assert word(f"http://{placeholder(3)}:2379/x") == 'http://"${ADDR[3]}":2379/x'
    assert word(f"{placeholder(0)}") == '"${ADDR[0]}"' and word("a b") == "'a b'"
    env = {"ADDR": "", "PATH": os.environ["PATH"]}
    shown = subprocess.run(["bash", "-c", f"ADDR=(10.0.0.1 h2); echo {word('x=' + placeholder(1) + ':1')}"],
                           capture_output=True, text=True, env=env, timeout=10)  # fmt: skip
    assert shown.stdout.strip() == "x=h2:1"


# -- the step wrapper, on this machine ----------------------------------------------------------------------

# Two children that outlive their parent, each in a process group of its own (job control, `set -m`), as
# children that call setpgid do: only the session finds them.
ORPHANS = "set -m; (sleep 3600 &); (sleep 3601 &); exec sleep 3602"


def test_the_wrapper_ends_its_whole_session_on_a_signal_orphans_included(tmp_path):
    env = {**os.environ, "TMPDIR": str(tmp_path), "SLURM_JOB_ID": "77"}
    wrapper = subprocess.Popen(["bash", "-c", WRAPPER, "svc", "bash", "-c", ORPHANS], env=env, start_new_session=True)
    wait_for(lambda: len(_service_sessions(wrapper.pid)) == 3, 20, what="the service and its two orphans")
    members = _service_sessions(wrapper.pid)
    [scratch] = tmp_path.glob("launcher-77-svc.*")
    started = time.monotonic()
    os.kill(wrapper.pid, signal.SIGTERM)  # what slurmstepd sends the step's task when the job ends
    assert wrapper.wait(timeout=30) == 143
    print(f"\nwrapper: session of {len(members)} processes ended in {time.monotonic() - started:.2f}s")
    wait_for(lambda: not [p for p in members if alive(p)], 15, what="every process of the session to end")
    assert not scratch.exists()


def test_the_wrapper_passes_on_the_services_exit_code_and_cleans_up(tmp_path):
    env = {**os.environ, "TMPDIR": str(tmp_path), "SLURM_JOB_ID": "78"}
    orphan = tmp_path / "orphan.pid"
    service = f"set -m; (sleep 3613 & echo $! > {orphan}); exit 7"  # an orphan in a process group of its own
    run = subprocess.run(["bash", "-c", WRAPPER, "svc", "bash", "-c", service],
                         env=env, capture_output=True, text=True, timeout=60)  # fmt: skip
    assert run.returncode == 7 and "launcher: svc exited with 7" in run.stderr
    assert not list(tmp_path.glob("launcher-78-*"))
    assert not alive(int(orphan.read_text())), "the orphan outlived the service"


# What another user of the node plants where the step would work: a `dynamo` package that `python3 -m
# dynamo...` imports first when it is run from that directory.
PLANTED = "import os\nopen(os.environ['PLANT_MARK'], 'a').write(os.getcwd() + '\\n')\n"


def plant_dynamo(directory: Path, mode: int = 0o777) -> Path:
    (directory / "dynamo").mkdir(parents=True)
    (directory / "dynamo" / "__init__.py").write_text(PLANTED)
    directory.chmod(mode)
    return directory / "dynamo" / "__init__.py"


def test_the_wrapper_works_in_a_fresh_private_directory_never_a_planted_one(tmp_path):
    """The directory the step used to work in (predictable: TMPDIR/launcher-JOB-NAME) exists already,
    with a planted `dynamo` package: the step neither imports it nor works there, and leaves it alone."""
    mark, planted = tmp_path / "planted-ran", tmp_path / "launcher-79-svc"
    planted_init = plant_dynamo(planted)
    env = {**os.environ, "TMPDIR": str(tmp_path), "SLURM_JOB_ID": "79", "PLANT_MARK": str(mark)}
    where = tmp_path / "where"
    # The service as a step runs one: `python3 -m dynamo...`, after noting where it works and that place's mode.
    service = f'stat -c "%n %a %u" "$PWD" > {where}; exec {sys.executable} -m dynamo.frontend --help'
    run = subprocess.run(["bash", "-c", WRAPPER, "svc", "bash", "-c", service],
                         env=env, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert not mark.exists(), f"the planted package ran, from {mark.read_text()}"
    assert run.returncode == 0 and "--http-port" in run.stdout, run.stderr  # the real dynamo's frontend answered
    workdir, mode, owner = where.read_text().split()
    assert workdir.startswith(f"{tmp_path}/launcher-79-svc.") and Path(workdir) != planted
    assert mode == "700" and owner == str(os.getuid())
    assert not Path(workdir).exists()  # removed when the service ended
    assert planted_init.read_text() == PLANTED and sorted(p.name for p in planted.iterdir()) == ["dynamo"]


def test_the_batch_script_gives_every_step_a_private_working_directory(tmp_path, capsys):
    script = script_for(tmp_path, capsys, (CONFIGS / "dsr1-104gpu.yaml").read_text())
    assert f"WRAPPER={q(WRAPPER)}\n" in script and 'bash -c "$WRAPPER"' in script  # what every step runs
    first = WRAPPER.splitlines()[1]
    assert first.startswith('dir=$(mktemp -d "${TMPDIR:-/tmp}/launcher-${SLURM_JOB_ID:-0}-$name.XXXXXXXXXX")')
    assert first.endswith('&& cd "$dir" || {') and "mkdir" not in WRAPPER  # created fresh, unguessable, or no step


def _service_sessions(wrapper: int) -> list[int]:
    """The wrapper's service session: the session led by the wrapper's child."""
    children = Path(f"/proc/{wrapper}/task/{wrapper}/children")
    leaders = [int(p) for p in children.read_text().split()] if children.exists() else []
    return [p for leader in leaders for p in session_members(leader)]


# -- hostile values reach the script as data, never as code -------------------------------------------------

HOSTILE = "x'\"$(touch {mark})`touch {mark}`;touch {mark}"


def test_hostile_values_are_literal_words_in_the_batch_script(tmp_path, capsys):
    """A model name, a group's env value, a python_env path and a mount with command substitutions in them:
    bash's syntax check passes, and the lines that reach a shell (each step's `launch`, the endpoint lines)
    print every value literally and run nothing."""
    mark = tmp_path / "ran"
    bad = HOSTILE.format(mark=mark)
    text = f"""\
deployment: p
runtime: process
python_env: {json.dumps("/opt/e" + bad)}
model: {{path: /m, name: {json.dumps("tiny$(id -u)" + bad)}}}
nodes: [{{address: 10.0.0.1}}, {{address: 10.0.0.2}}]
groups:
  decode: {{engine: mocker, nodes: [1], env: {{HOSTILE: {json.dumps(bad)}}}}}
"""
    script = script_for(tmp_path, capsys, text)
    steps = launches(script)
    endpoint = [line for line in script.splitlines() if line.startswith(("ENDPOINT=", "CHAT=", 'echo "endpoint'))]
    assert len(endpoint) == 3, endpoint
    # `launch` stubbed to print its words, one a line; ADDR as the job would set it
    body = "launch() { printf '%s\\n' \"$@\"; }\nADDR=(10.1.0.1 10.1.0.2)\n"
    body += "\n".join("launch " + line for line in steps.values()) + "\n" + "\n".join(endpoint) + "\n"
    run = subprocess.run(["bash", "-c", body], capture_output=True, text=True, timeout=30)
    assert run.returncode == 0, run.stderr
    assert not mark.exists(), "a value of the file ran as a command in the batch script"
    words = run.stdout.splitlines()
    assert f"HOSTILE={bad}" in words and f"PATH=/opt/e{bad}/bin:/usr/local/bin:/usr/bin:/bin" in words
    assert f"endpoint: http://10.1.0.1:8000  model: tiny$(id -u){bad}" in words, run.stdout
