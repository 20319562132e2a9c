"""spawn_session: a Ctrl-C (or the CLI's SIGTERM) that lands while a process in its own session is being
started ends that process and is then raised; without it the process runs on, known to nobody (CI saw
AIPerf outlive an interrupted `bench` so). Each case runs in a fresh Python whose Popen sends the signal to
its own process after the fork and before Popen returns: the window itself, hit every time."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

SCRIPT = textwrap.dedent(
    """
    import os, signal, subprocess, sys
    from launcher.transport import spawn

    def terminate(signum, frame):  # as the CLI does
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, terminate)
    if len(sys.argv) > 3:  # as under nohup
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    real_popen = subprocess.Popen

    def popen_then_signal(*args, **kwargs):
        proc = real_popen(*args, **kwargs)
        print(proc.pid, flush=True)
        if sys.argv[2] != "none":
            os.kill(os.getpid(), getattr(signal, sys.argv[2]))
        return proc

    subprocess.Popen = popen_then_signal
    try:
        if sys.argv[1] == "spawn_session":
            spawn.spawn_session(["sleep", "60"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        else:
            out = dict(stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            subprocess.Popen(["sleep", "60"], start_new_session=True, **out)
        print("returned", flush=True)
    except KeyboardInterrupt:
        print("interrupted", flush=True)
    """
)


def run(how: str, signame: str, *ignored: str) -> tuple[int, str]:
    done = subprocess.run([sys.executable, "-c", SCRIPT, how, signame, *ignored], cwd=REPO, capture_output=True,
                          text=True, timeout=60)  # fmt: skip
    pid, outcome = done.stdout.split()
    return int(pid), outcome


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state != "Z"


def end(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def test_a_ctrl_c_inside_popen_ends_the_new_session_and_is_raised():
    pid, outcome = run("spawn_session", "SIGINT")
    try:
        assert outcome == "interrupted"
        deadline = time.monotonic() + 10
        while alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not alive(pid)
    finally:
        end(pid)


def test_the_clis_sigterm_inside_popen_is_handled_the_same_way():
    pid, outcome = run("spawn_session", "SIGTERM")
    try:
        assert outcome == "interrupted" and not alive(pid)
    finally:
        end(pid)


@pytest.mark.parametrize(
    "ignored",
    [(), ("ignore",)],
    ids=["no signal: handed back running", "SIGINT ignored (nohup): it stays ignored, the process is kept"],
)
def test_the_process_is_handed_back_running_when_nothing_ends_it(ignored):
    pid, outcome = run("spawn_session", "SIGINT" if ignored else "none", *ignored)
    try:
        assert outcome == "returned" and alive(pid)
        assert os.getpgid(pid) == pid  # a session (and process group) of its own
    finally:
        end(pid)


def test_plain_popen_leaves_the_process_running_unknown_to_anyone():
    """What spawn_session prevents: the same signal in the same place, and the child outlives its parent."""
    pid, outcome = run("Popen", "SIGINT")
    try:
        assert outcome == "interrupted" and alive(pid)
    finally:
        end(pid)
