"""Where `launcher bench`'s client (AIPerf) comes from and where it runs.

AIPerf lives in its own environment, never in the launcher's install: scripts/bench-env builds it once
under .cache/bench-env/aiperf-VERSION/ (or LAUNCHER_BENCH_ENV names the bin/ directory of one). It runs
on this machine, talking to the endpoint through a port forwarded over the head node's SSH connection, or
(`--on-head`) on the head node itself, from an AIPerf environment there, its artifacts copied back.
"""

from __future__ import annotations

import base64
import contextlib
import io
import os
import signal
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path

from launcher.config.yamlfile import load_json
from launcher.errors import ConfigError
from launcher.operations.bench_recipe import BenchError
from launcher.output.console import say
from launcher.runtime.shell import join, q
from launcher.transport.errors import NodeError
from launcher.transport.host import Host
from launcher.transport.spawn import held_signals, spawn_session

AIPERF_VERSION = "0.13.0"
REPO = Path(__file__).resolve().parent.parent.parent
BENCH_ENV_SCRIPT = REPO / "scripts" / "bench-env"
POLL_SECONDS = 2.0


def local_env() -> Path:
    """The bin/ directory of this machine's AIPerf environment, built on first use (said on stderr)."""
    override = os.environ.get("LAUNCHER_BENCH_ENV")
    if override:
        path = Path(override)
        if not (path / "aiperf").exists():
            raise BenchError(f"LAUNCHER_BENCH_ENV={override}: no aiperf there (expected an env's bin/ directory)")
        return path
    env = REPO / ".cache" / "bench-env" / f"aiperf-{AIPERF_VERSION}"
    if not BENCH_ENV_SCRIPT.exists():
        raise BenchError(f"no AIPerf env: set LAUNCHER_BENCH_ENV to the bin/ of one with aiperf=={AIPERF_VERSION}")
    if not (env / ".bench-env.json").exists():
        say(
            f"building the AIPerf environment `bench` runs its client in (first use: aiperf=={AIPERF_VERSION} and"
            f" matplotlib from PyPI, about 820 MB, 15 s to a few minutes) in {env}",
            to_stderr=True,
        )
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, str(BENCH_ENV_SCRIPT), "--aiperf", AIPERF_VERSION], capture_output=True, text=True
    )
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise BenchError(f"building the AIPerf environment failed ({BENCH_ENV_SCRIPT}): {last}")
    if "built in" in done.stderr:
        say(f"built the AIPerf environment in {time.monotonic() - started:.0f} s", to_stderr=True)
    return Path(done.stdout.strip().splitlines()[-1])


def env_writing_bytecode() -> dict[str, str]:
    """This environment for AIPerf's processes, bytecode kept even where PYTHONDONTWRITEBYTECODE is set (CI
    images set it): the bench env is the launcher's own cache, and its first run compiles what AIPerf
    imports (about 6 CPU-s) where compiling all 14,700 files of the env ahead took minutes of CI."""
    return {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


@dataclass
class Outcome:
    code: int
    seconds: float


def run_local(argv: list[str], log: Path, timeout: float) -> Outcome:
    """AIPerf on this machine, its output in `log`; Ctrl-C or the timeout ends its whole process group."""
    started = time.monotonic()
    # No HF_HUB_OFFLINE: AIPerf 0.13 then looks a local tokenizer directory up in the hub's cache as a repo
    # id and fails (HFValidationError, seen here); a local path is loaded as such without it.
    env = env_writing_bytecode()
    with log.open("w") as out:
        proc = spawn_session(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
        try:
            code = proc.wait(timeout=timeout)
        except (KeyboardInterrupt, subprocess.TimeoutExpired) as exc:
            _end(proc)
            if isinstance(exc, KeyboardInterrupt):
                raise
            raise BenchError(f"AIPerf did not finish within {timeout:.0f} s (its log: {log})") from None
    return Outcome(code, time.monotonic() - started)


def _end(proc: subprocess.Popen) -> None:
    """Ctrl-C to AIPerf's whole process group, then SIGKILL, until none of the group is left (bounded):
    none of it may write into the run's directory once that is renamed DIR.incomplete."""
    for sig, wait in ((signal.SIGINT, 10.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        if _group_ended(proc, wait):
            return


def _group_ended(proc: subprocess.Popen, seconds: float) -> bool:
    """Whether AIPerf's process group is empty within `seconds` (its main process reaped first: a zombie
    still counts as a member)."""
    deadline = time.monotonic() + seconds
    try:
        proc.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        return False
    while time.monotonic() < deadline:
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


# -- on the head node -----------------------------------------------------------------------------------


def head_env_check(host: Host, bin_dir: str) -> str:
    """The AIPerf version of the environment on the head node; exit 1 saying how to make one if none."""
    done = host.run(f"{q(bin_dir + '/aiperf')} --version 2>/dev/null | tail -1", timeout=120)
    version = done.stdout.strip()
    if not done.ok or not version:
        raise BenchError(
            f"no AIPerf at {bin_dir}/aiperf on {host.node.label}: make one there (python3 -m venv ENV &&"
            f" ENV/bin/pip install aiperf=={AIPERF_VERSION}) and pass --head-env ENV/bin"
        )
    return version


def run_on_head(host: Host, argv: list[str], remote_dir: str, local_dir: Path, timeout: float) -> Outcome:
    """AIPerf on the head node in its own session; polled until it ends (Ctrl-C ends it there too), then
    its artifact directory is copied back into local_dir."""
    started = time.monotonic()
    inner = f"echo $$ > pid; {join(argv)}; echo $? > exit-code"
    launch = (
        f"mkdir -p {q(remote_dir)} && cd {q(remote_dir)} && setsid sh -c {q(inner)} > aiperf.log 2>&1 < /dev/null &"
    )
    try:
        if not (launched := host.run(launch, timeout=60)).ok:
            raise BenchError(f"AIPerf could not be started on {host.node.label}: {launched.why()}")
        while not host.run(f"test -f {q(remote_dir)}/exit-code", timeout=60).ok:
            if time.monotonic() - started > timeout:
                raise BenchError(f"AIPerf on {host.node.label} did not finish within {timeout:.0f} s")
            time.sleep(POLL_SECONDS)
    except BaseException:  # Ctrl-C or the timeout: end its process group there (setsid made it the leader)
        # A second Ctrl-C does not cut this short (it would leave AIPerf running there); what went wrong is
        # the error raised, not this clean-up's.
        with held_signals(), contextlib.suppress(NodeError):
            host.run(end_remote_group(f"{remote_dir}/pid"), timeout=30)
        raise
    code = int(host.run(f"cat {q(remote_dir)}/exit-code", timeout=30).stdout.strip() or 1)
    copied = host.run(f"tar -C {q(remote_dir)} -czf - . | base64 | tr -d '\\n'", timeout=600)
    local_dir.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(base64.b64decode(copied.stdout.strip())), mode="r:gz") as tar:
        tar.extractall(local_dir, filter="data")
    # AIPerf's service processes may outlive its main one for a moment and write into the directory while
    # it is removed (a leftover `*-cN` directory on the head was seen so): its process group goes first.
    host.run(f"kill -KILL -- -$(cat {q(remote_dir)}/pid) 2>/dev/null; rm -rf {q(remote_dir)}", timeout=60)
    return Outcome(code, time.monotonic() - started)


def end_remote_group(pid_file: str) -> str:
    """Ctrl-C to the process group its pid file names, then SIGKILL after 5 s. A Ctrl-C during the launch
    may come before the file is written: that is waited for (5 s at most); what it holds must be a number."""
    pid = q(pid_file)
    return (
        f"for i in $(seq 50); do test -s {pid} && break; sleep 0.1; done; p=$(cat {pid} 2>/dev/null); "
        'case "$p" in ""|*[!0-9]*) exit 0;; esac; kill -INT -- "-$p" 2>/dev/null || exit 0; '
        'for i in $(seq 50); do kill -0 -- "-$p" 2>/dev/null || exit 0; sleep 0.1; done; '
        'kill -KILL -- "-$p" 2>/dev/null; true'
    )


def read_export(artifacts: Path) -> dict:
    """AIPerf's summary export (profile_export_aiperf.json), or why there is none (from its log)."""
    export = artifacts / "profile_export_aiperf.json"
    if export.exists():
        try:
            data = load_json(export)  # written on a node and copied here: read within the file limits
        except ConfigError as exc:
            raise BenchError(f"AIPerf's export is unreadable: {exc}") from None
        if not isinstance(data, dict):
            raise BenchError(f"{export}: expected AIPerf's summary, a JSON object")
        return data
    log = artifacts.parent / f"{artifacts.name}.log"
    if not log.exists():
        log = artifacts / "aiperf.log"
    reason = ""
    if log.exists():
        lines = [ln.strip() for ln in log.read_text(errors="replace").splitlines() if "Reason:" in ln or "ERROR" in ln]
        reason = lines[-1][:300] if lines else ""
    raise BenchError(f"AIPerf wrote no results in {artifacts}" + (f": {reason}" if reason else ""))
