"""Slurm for real on the testbed: Debian's slurm-wlm (slurmctld on the host side, one slurmd per node in
its network namespace, munge), brought up by scripts/testbed-slurm.

* `launcher export --to slurm` of the testbed topology (mockers, the process runtime), submitted with
  sbatch: the job's output says ready, the curl it printed gets an answer with text that a prefill and a
  decode mocker both logged; `scancel` ends the job and leaves no process of it on any node.
* `salloc -N N` then `launcher up CONFIG -i slurm`: the nodes come from the allocation; up, its curl,
  status and down all work inside it.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.helpers import REPO, STATE_DIR, answer_text, fresh_env, printed_curl_reply, wait_for

pytestmark = pytest.mark.testbed

SLURM_SCRIPT = REPO / "scripts" / "testbed-slurm"
# What runs in a testbed node's namespace when no job does.
NODE_DAEMONS = {"sshd", "dockerd", "containerd", "slurmd", "sh", "unshare"}


@pytest.fixture(scope="module")
def slurm(testbed):
    """The testbed's Slurm cluster: the environment salloc/sbatch/scontrol need."""
    started = time.monotonic()
    up = subprocess.run([sys.executable, str(SLURM_SCRIPT), "up"], env=testbed.env, capture_output=True, text=True,
                        timeout=1200)  # fmt: skip
    assert up.returncode == 0, up.stdout + up.stderr
    print(f"\nslurm: {len(testbed.nodes)} slurmd + slurmctld + munged up in {time.monotonic() - started:.1f}s")
    env = {**fresh_env(), **testbed.vars, "SLURM_CONF": str(testbed.dir / "slurm" / "slurm.conf")}
    env["TESTBED_STATE_DIR"] = STATE_DIR  # the checkout's own (tests.helpers), never /var/tmp/launcher
    try:
        yield env
    finally:
        down = subprocess.run([sys.executable, str(SLURM_SCRIPT), "down"], env=testbed.env, capture_output=True,
                              text=True, timeout=600)  # fmt: skip
        assert down.returncode == 0, down.stdout + down.stderr


def topology(testbed, tmp_path: Path) -> tuple[Path, int]:
    """The testbed topology (testbed-104: 13 nodes, else testbed-small: 4) with mockers and the process
    runtime, reaching the nodes with the testbed's key (an allocation brings no SSH settings)."""
    name = "testbed-104.yaml" if len(testbed.nodes) >= 13 else "testbed-small.yaml"
    data = yaml.safe_load((REPO / "configs" / name).read_text())
    data.update(runtime="process", python_env="${TESTBED_VENV}", state_dir=str(tmp_path / "state"))
    data.pop("image")
    data["model"]["path"] = "${TESTBED_REPO}/models/tiny"
    data["container"] = {"env": {"HF_HUB_OFFLINE": "1"}}
    data["ssh"] = {"user": "root", "key": str(testbed.key), "known_hosts": str(testbed.known_hosts)}
    path = tmp_path / f"slurm-{name}"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path, 13 if name == "testbed-104.yaml" else 4


def launcher(env: dict, cwd: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "launcher", *args], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=timeout)  # fmt: skip


def slurm_run(env: dict, cwd: Path, *argv: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(list(argv), capture_output=True, text=True, env=env, cwd=cwd, timeout=timeout)


def leftovers(testbed) -> dict[str, list[str]]:
    """Per node, every live process in its network namespace that is not one of the node's own daemons."""
    out: dict[str, list[str]] = {}
    for name, _ in testbed.nodes:
        pids = subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True, timeout=30).stdout.split()
        for pid in pids:
            try:
                stat = Path(f"/proc/{pid}/stat").read_text()
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
            except OSError:
                continue  # gone meanwhile
            comm, state = stat[stat.index("(") + 1 : stat.rindex(")")], stat[stat.rindex(")") + 2]
            if state not in "ZX" and comm not in NODE_DAEMONS:
                out.setdefault(name, []).append(f"{pid} {cmdline[:120]}")
    return out


def new_processes(testbed, before: dict[str, list[str]]) -> dict[str, list[str]]:
    now = leftovers(testbed)
    added = {node: [p for p in procs if p not in before.get(node, [])] for node, procs in now.items()}
    return {node: procs for node, procs in added.items() if procs}


def wait_until_ready(slurm, tmp_path: Path, config: Path, job: str) -> Path:
    """The job's output file, once it says `ready:` (fails at once if the job left the queue before that)."""
    out = tmp_path / f"{yaml.safe_load(config.read_text())['deployment']}-{job}.out"

    def ready() -> bool:
        text = out.read_text() if out.exists() else ""
        queued = slurm_run(slurm, tmp_path, "squeue", "-h", "-j", job).stdout.strip()
        assert queued or "ready:" in text, f"the job ended before it was ready:\n{text}"
        return "ready:" in text

    wait_for(ready, 600, interval=1.0, what="the job to say ready")
    return out


def test_sbatch_of_the_exported_script_serves_and_scancel_leaves_nothing(testbed, slurm, tmp_path):
    config, nodes = topology(testbed, tmp_path)
    script = tmp_path / "job.sbatch"
    export = launcher(slurm, tmp_path, "export", str(config), "--to", "slurm", "-o", str(script))
    assert export.returncode == 0 and f"on {nodes} node(s), the process runtime" in export.stderr, export.stderr
    before = leftovers(testbed)  # what other tests' leftovers may run there: the job must add to it and take back

    started = time.monotonic()
    job = slurm_run(slurm, tmp_path, "sbatch", "--parsable", str(script)).stdout.strip()
    assert job.isdigit(), job
    out = wait_until_ready(slurm, tmp_path, config, job)
    print(f"\nslurm: sbatch to ready on {nodes} nodes: {time.monotonic() - started:.1f}s")
    text = out.read_text()
    assert "ready: " in text and f"on {nodes} node(s), job {job}" in text and "smoke test: 200 OK" in text, text
    running = new_processes(testbed, before)
    assert len(running) == nodes, running  # every node of the job runs its services

    reply = printed_curl_reply(text)  # the curl line the job printed, as printed: 200 with text
    answer_text(reply)
    request = reply["id"].removeprefix("chatcmpl-")
    job_dir = tmp_path / f"{yaml.safe_load(config.read_text())['deployment']}-{job}"

    def logged(role: str) -> bool:
        return any(request in p.read_text(errors="replace") for p in job_dir.glob(f"{role}-r*.log"))

    wait_for(lambda: logged("prefill") and logged("decode"), 30, what="a prefill and a decode mocker to log it")

    cancelled = time.monotonic()
    assert slurm_run(slurm, tmp_path, "scancel", job).returncode == 0
    wait_for(lambda: not slurm_run(slurm, tmp_path, "squeue", "-h", "-j", job).stdout.strip(), 120, interval=0.5,
             what="the job to leave the queue")  # fmt: skip
    gone = time.monotonic() - cancelled
    wait_for(lambda: new_processes(testbed, before) == {}, 30, what="no process of the job on any node")
    left = time.monotonic() - cancelled
    print(f"slurm: scancel to job gone {gone:.1f}s, to no process left on {nodes} nodes {left:.1f}s")
    assert not list(Path("/tmp").glob(f"launcher-{job}-*")), "a step left its scratch directory"
    assert "all steps ended" in out.read_text()


def test_salloc_then_up_with_the_allocations_nodes(testbed, slurm, tmp_path):
    config, nodes = topology(testbed, tmp_path)
    before = leftovers(testbed)
    session = tmp_path / "session.sh"
    # What a person types inside `salloc -N N`: up from the allocation, the curl up printed, status, down.
    session.write_text(f"""set -e
{sys.executable} -m launcher up {config} -i slurm > up.out 2> up.err
grep '^curl ' up.out | head -n 1 > curl.sh
bash curl.sh > answer.json
{sys.executable} -m launcher status --json > status.json
{sys.executable} -m launcher down > down.out 2>&1
""")
    run = slurm_run(slurm, tmp_path, "salloc", "-N", str(nodes), "bash", str(session), timeout=900)
    assert run.returncode == 0, run.stderr + _read(tmp_path / "up.err") + _read(tmp_path / "down.out")
    up = (tmp_path / "up.out").read_text()
    assert f"ready: {yaml.safe_load(config.read_text())['deployment']} on {nodes} node(s)" in up, up
    answer_text(json.loads((tmp_path / "answer.json").read_text()))
    status = json.loads((tmp_path / "status.json").read_text())
    # the nodes are the allocation's, by their Slurm names, at their NodeAddr
    assert {(s["node"], s["address"]) for s in status["services"]} <= set(testbed.nodes)
    assert {s["node"] for s in status["services"]} == {name for name, _ in testbed.nodes[:nodes]}
    assert json.loads((tmp_path / ".launcher" / "last.json").read_text())["inventory"] == "slurm"
    services = len(status["services"])
    assert f"down: removed {services} container(s) of" in _read(tmp_path / "down.out")
    wait_for(lambda: new_processes(testbed, before) == {}, 30, what="down to leave no service on any node")


def _read(path: Path) -> str:
    return path.read_text() if path.exists() else ""


def slurm_script(testbed, verb: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SLURM_SCRIPT), verb], env=testbed.env, capture_output=True, text=True,
                          timeout=300)  # fmt: skip


def daemon_pids(status: str) -> dict[str, str]:
    """`scripts/testbed-slurm status`'s daemon lines: {daemon: its pid} of those up."""
    return {m.group(1): m.group(2) for m in re.finditer(r"^(\S+)\s+up (\d+)$", status, re.M)}


def test_the_script_brings_slurm_up_idempotently_and_says_so(testbed, slurm):
    before = slurm_script(testbed, "status")
    assert before.returncode == 0, before.stdout + before.stderr
    pids = daemon_pids(before.stdout)
    assert len(pids) == len(testbed.nodes) + 2, before.stdout  # a slurmd per node, slurmctld, munged
    # `up` again, on a cluster that is up: it says so, and every daemon is the same process as before.
    up = slurm_script(testbed, "up")
    assert up.returncode == 0, up.stdout + up.stderr
    assert f"{len(testbed.nodes)} slurmd + slurmctld + munged up in " in up.stdout, up.stdout
    assert "restarting" not in up.stdout, up.stdout
    again = slurm_script(testbed, "status")
    assert again.returncode == 0, again.stdout + again.stderr
    assert daemon_pids(again.stdout) == pids, f"a daemon was restarted:\n{before.stdout}\n{again.stdout}"
    lines = again.stdout.splitlines()
    assert sum(1 for ln in lines if re.match(r"slurmd-\S+\s+up ", ln)) == len(testbed.nodes)
    assert sum(1 for ln in lines if re.match(r"\S+\s+idle", ln)) == len(testbed.nodes), again.stdout
    assert os.environ.get("SLURM_CONF") != slurm["SLURM_CONF"]  # the tests never touch the caller's Slurm


# What another user of the nodes plants where a step used to work (/tmp/launcher-JOB-SERVICE, predictable):
# a `dynamo` package that `python3 -m dynamo.frontend` / `dynamo.mocker` would import first from there.
PLANTED = "import os\nopen('MARK', 'a').write(os.getcwd() + '\\n')\n"
OTHER_UID = 65534  # nobody: not the job's user


def test_a_planted_package_in_the_old_predictable_directory_is_never_run(testbed, slurm, tmp_path):
    """The job is held while every step's old directory is pre-created by another uid (mode 0777, a
    planted dynamo/ in it); released, it serves, no planted code ran, no step works in (or removes) those
    directories: each works in a fresh 0700 directory of its own."""
    config, nodes = topology(testbed, tmp_path)
    script = tmp_path / "job.sbatch"
    assert launcher(slurm, tmp_path, "export", str(config), "--to", "slurm", "-o", str(script)).returncode == 0
    names = re.findall(r"^launch (\S+) \d+ ", script.read_text(), flags=re.M)
    assert "frontend" in names and any(n.startswith("prefill-r") for n in names), names
    before = leftovers(testbed)
    mark = tmp_path / "planted-ran"  # where planted code would write (the job runs as this test's user)
    job = slurm_run(slurm, tmp_path, "sbatch", "--hold", "--parsable", str(script)).stdout.strip()
    assert job.isdigit(), job
    planted = [Path(f"/tmp/launcher-{job}-{name}") for name in names]
    try:
        for d in planted:
            (d / "dynamo").mkdir(parents=True)
            (d / "dynamo" / "__init__.py").write_text(PLANTED.replace("MARK", str(mark)))
            for p in (d, d / "dynamo", d / "dynamo" / "__init__.py"):
                os.chown(p, OTHER_UID, OTHER_UID)
            d.chmod(0o777)
        assert slurm_run(slurm, tmp_path, "scontrol", "release", job).returncode == 0
        out = wait_until_ready(slurm, tmp_path, config, job)
        assert "smoke test: 200 OK" in out.read_text()
        assert not mark.exists(), f"planted code ran as the job's user, in {mark.read_text()}"
        workdirs = {}
        for procs in new_processes(testbed, before).values():
            for line in procs:
                try:
                    workdirs[os.readlink(f"/proc/{line.split()[0]}/cwd")] = line
                except OSError:
                    continue
        assert not set(map(str, planted)) & set(workdirs), workdirs
        for name in names:  # every step works in a fresh private directory of its own
            [own] = [d for d in workdirs if d.startswith(f"/tmp/launcher-{job}-{name}.")]
            st = os.stat(own)
            assert (st.st_mode & 0o777, st.st_uid) == (0o700, os.getuid()), own
    finally:
        slurm_run(slurm, tmp_path, "scancel", job)
        wait_for(lambda: not slurm_run(slurm, tmp_path, "squeue", "-h", "-j", job).stdout.strip(), 120,
                 interval=0.5, what="the job to leave the queue")  # fmt: skip
        untouched = [d for d in planted if (d / "dynamo" / "__init__.py").exists() and d.stat().st_uid == OTHER_UID]
        for d in planted:
            subprocess.run(["rm", "-rf", str(d)], timeout=30)
        wait_for(lambda: new_processes(testbed, before) == {}, 30, what="no process of the job on any node")
    assert untouched == planted, "a step removed or changed a directory that is not its own"
    assert not list(Path("/tmp").glob(f"launcher-{job}-*.*")), "a step left its private directory"
