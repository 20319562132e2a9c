"""The process runtime's shell scripts, run for real with bash on this machine (no SSH, no servers).

What must hold whatever the timing: a service that dies at once does not stop the others from
starting; a recorded pid that now belongs to someone else is never signalled; a half-removed service
directory never breaks the listing; odd paths are quoted.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml

from launcher.config.load import load as load_config
from launcher.plan.build import build as build_plan
from launcher.plan.state import Container
from launcher.runtime import base
from launcher.runtime.process import Process
from tests.helpers import wait_for

pytestmark = pytest.mark.slow

RT = Process()


def two_group_plan(tmp_path: Path, first: list[str], second: list[str]):
    data = {
        "deployment": "rt-local",
        "runtime": "process",
        "state_dir": str(tmp_path / "state"),
        "gpus_per_node": 0,
        "nodes": [{"name": "local", "address": "127.0.0.1"}],
        "services": {"etcd": {"enabled": False}, "nats": {"enabled": False}, "frontend": {"enabled": False}},
        "groups": {
            "first": {"engine": "command", "nodes": ["local"], "args": first},
            "second": {"engine": "command", "nodes": ["local"], "args": second},
        },
    }
    path = tmp_path / "rt.yaml"
    path.write_text(yaml.safe_dump(data))
    return build_plan(load_config(path, environ={}))


def bash(script: str, stdin: str = "", timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", script], input=stdin, capture_output=True, text=True, timeout=timeout)


def listed(p) -> dict[str, Container]:
    r = bash(RT.list_script(p))
    assert r.returncode == 0, r.stderr
    return {c.name: c for c in base.parse_list(0, r.stdout)}


def test_a_service_that_dies_at_once_does_not_stop_the_next(tmp_path):
    p = two_group_plan(tmp_path, ["no-such-command-here"], ["sleep", "30"])
    script, stdin = RT.start_script(p, p.services)
    try:
        r = bash(script, stdin)
        assert r.returncode == 0, r.stderr
        # the first one's exit is recorded (its wrapper writes the code) while the second keeps running
        state = wait_for(lambda: (st := listed(p)) and not st[p.services[0].name].running and st, 10, what="exit seen")
        first, second = (state[s.name] for s in p.services)
        assert not first.running and first.exit_code == 127, first
        assert second.running, second
    finally:
        bash(RT.remove_all_script(p))
    assert listed(p) == {}


def test_a_reused_pid_is_never_signalled(tmp_path):
    p = two_group_plan(tmp_path, ["sleep", "30"], ["sleep", "30"])
    script, stdin = RT.start_script(p, p.services[:1])
    assert bash(script, stdin).returncode == 0
    (service,) = [s for s in p.services[:1]]
    run_dir = next((tmp_path / "state").glob(f"rt-local/run/*/{service.name}"))
    bash(RT.remove_script(p, [service.name]))
    # Someone else's session leader now has the pid the service had: a process of ours in a new
    # session, with another start time than the one recorded.
    bystander = subprocess.Popen(["setsid", "sleep", "30"])
    try:
        run_dir.mkdir(parents=True)
        (run_dir / "pid").write_text(f"{bystander.pid}\n")
        (run_dir / "starttime").write_text("1\n")  # not the bystander's
        (run_dir / "labels.json").write_text("{}")
        assert listed(p)[service.name].running is False
        removed = bash(RT.remove_all_script(p))
        assert removed.returncode == 0, removed.stderr
        # a signal sent would end it at once: it must still be running a moment later
        with pytest.raises(subprocess.TimeoutExpired):
            bystander.wait(timeout=1)
    finally:
        bystander.kill()
        bystander.wait(timeout=10)


def test_a_service_that_exited_but_is_not_reaped_yet_is_listed_as_exited(tmp_path):
    """A zombie keeps its pid and start time readable until it is reaped (this machine's init reaps orphans
    about every 1.3 s, later under load): it has exited, and must be listed so, with its exit code."""
    p = two_group_plan(tmp_path, ["sleep", "30"], ["sleep", "30"])
    script, stdin = RT.start_script(p, p.services[:1])
    assert bash(script, stdin).returncode == 0
    (service,) = p.services[:1]
    run_dir = next((tmp_path / "state").glob(f"rt-local/run/*/{service.name}"))
    bash(RT.remove_script(p, [service.name]))
    exited = subprocess.Popen(["sh", "-c", "exit 3"])  # never waited for until the end: a zombie
    try:
        stat = Path(f"/proc/{exited.pid}/stat")
        wait_for(lambda: stat.read_text().rsplit(") ", 1)[1].startswith("Z"), 10, 0.05, "the zombie")
        run_dir.mkdir(parents=True)
        (run_dir / "pid").write_text(f"{exited.pid}\n")
        (run_dir / "starttime").write_text(stat.read_text().rsplit(") ", 1)[1].split()[19] + "\n")
        (run_dir / "exit").write_text("3\n")
        (run_dir / "labels.json").write_text("{}")
        listing = listed(p)[service.name]
        assert (listing.running, listing.state, listing.exit_code) == (False, "exited", 3), listing
    finally:
        exited.wait(timeout=10)
        bash(RT.remove_all_script(p))


def test_a_half_removed_service_directory_is_skipped(tmp_path):
    p = two_group_plan(tmp_path, ["sleep", "30"], ["sleep", "30"])
    script, stdin = RT.start_script(p, p.services)
    assert bash(script, stdin).returncode == 0
    try:
        # What a concurrent `down` leaves for an instant: the directory, its labels file emptied or gone.
        dirs = sorted((tmp_path / "state").glob("rt-local/run/*/*"))
        (dirs[0] / "labels.json").write_text("")
        (dirs[1] / "labels.json").unlink()
        r = bash(RT.list_script(p))
        assert r.returncode == 0 and json.loads(r.stdout) == [], r.stdout
    finally:
        for d in dirs:
            (d / "labels.json").write_text("{}")
        bash(RT.remove_all_script(p))


def test_a_pid_or_exit_file_holding_garbage_is_listed_as_exited_and_never_signals_the_caller(tmp_path):
    """Files of a run directory that a crash or a hand left odd: each service is listed (exited), the
    listing stays JSON, and stopping them signals nothing (pid 0 would be `pkill -s 0`: the script's own
    session, over SSH the session of the command that runs it)."""
    p = two_group_plan(tmp_path, ["sleep", "30"], ["sleep", "30"])
    script, stdin = RT.start_script(p, p.services[:1])
    assert bash(script, stdin).returncode == 0
    run = next((tmp_path / "state").glob(f"rt-local/run/*/{p.services[0].name}")).parent
    odd = {"zero": ("0", "0"), "two": ("1 2", "3"), "quote": ('12"', 'x"'), "subst": ("$(touch PWNED)", "")}
    for name, (pid, code) in odd.items():
        (run / name).mkdir()
        (run / name / "pid").write_text(pid + "\n")
        (run / name / "exit").write_text(code + "\n")
        (run / name / "labels.json").write_text("{}")
    try:
        seen = listed(p)
        assert {n: (seen[n].state, seen[n].exit_code) for n in odd} == {
            "zero": ("exited", 0), "two": ("exited", 3), "quote": ("exited", 137), "subst": ("exited", 137)
        }  # fmt: skip
        assert seen[p.services[0].name].running
    finally:
        stop = subprocess.run(["setsid", "bash", "-c", RT.remove_all_script(p)], capture_output=True, text=True,
                              timeout=60, cwd=tmp_path)  # fmt: skip
    assert (stop.returncode, stop.stdout) == (0, "5\n"), stop
    assert listed(p) == {} and not (tmp_path / "PWNED").exists()


def test_python_env_with_a_quote_gets_a_clear_message(tmp_path):
    p = two_group_plan(tmp_path, ["true"], ["true"])
    p.python_env = str(tmp_path / "it's env")
    r = bash(RT.check_script(p))
    assert r.returncode == 1 and r.stderr.strip() == f"python environment {p.python_env} not found (python_env)"


def test_env_values_reach_the_service_verbatim(tmp_path):
    odd = "a 'b' \"c\" $(id) `id` \\ %s\nline"
    p = two_group_plan(tmp_path, ["sh", "-c", 'printf %s "$ODD" > ../../out'], ["true"])
    p.services[0].env["ODD"] = odd
    script, stdin = RT.start_script(p, p.services[:1])
    try:
        assert bash(script, stdin).returncode == 0
        out = next((tmp_path / "state").glob("rt-local/run/*")) / "out"
        wait_for(lambda: out.exists() and out.read_text() == odd, 10, interval=0.1, what=f"{odd!r} in {out}")
        env_file = next((tmp_path / "state").glob(f"rt-local/run/*/{p.services[0].name}/env"))
        assert os.stat(env_file).st_mode & 0o777 == 0o600
    finally:
        bash(RT.remove_all_script(p))
