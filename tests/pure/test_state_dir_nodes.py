"""The state_dir check on every node, not only the head (issue 24, review): each node keeps its own
state_dir (/var/tmp is per machine), holding the services' secret env files and the process runtime's
run directories, whose pid files `down` signals. Another user who creates a node's state_dir first must
not get to plant a service there (whose "pid" is one of the user's processes) or receive the secrets.
The node scripts are run here with real bash against a directory another user owns."""

from __future__ import annotations

import dataclasses
import os
import socket
import subprocess
from pathlib import Path

from launcher.runtime.docker import Docker
from launcher.runtime.lock import STATE_DIR_REFUSED
from launcher.runtime.process import Process
from tests.pure.test_orchestration_pure import make_plan

OTHER_UID = 65534  # nobody: another local user


def foreign_state_dir(tmp_path: Path) -> Path:
    state = tmp_path / "state"
    state.mkdir(mode=0o777)
    state.chmod(0o777)
    os.chown(state, OTHER_UID, OTHER_UID)
    return state


def test_down_on_a_node_does_not_signal_what_another_user_planted_in_its_state_dir(tmp_path):
    state = foreign_state_dir(tmp_path)
    plan = dataclasses.replace(make_plan(), state_dir=str(state))
    victim = subprocess.Popen(["sleep", "60"], start_new_session=True)  # the user's own session
    try:
        starttime = Path(f"/proc/{victim.pid}/stat").read_text().split(")")[-1].split()[19]
        planted = state / plan.deployment / "run" / socket.gethostname() / "planted"
        planted.mkdir(parents=True)
        (planted / "pid").write_text(f"{victim.pid}\n")
        (planted / "starttime").write_text(f"{starttime}\n")
        (planted / "labels.json").write_text("{}")
        done = subprocess.run(
            ["bash", "-c", Process().remove_all_script(plan)], capture_output=True, text=True, timeout=60
        )
        assert victim.poll() is None, "down signalled a process another user named in a planted pid file"
        assert done.returncode != 0 and f"{STATE_DIR_REFUSED} owned by nobody" in done.stdout, done
    finally:
        victim.kill()
        victim.wait()


def test_every_node_script_that_writes_or_signals_checks_the_state_dir_first():
    plan = make_plan()
    services = [dataclasses.replace(plan.services[0], secret_env={"HF_TOKEN": "hf_secret_value"})]
    for runtime in (Docker(), Process()):
        assert runtime.start_script(plan, services)[0].startswith("s="), runtime.name
    assert Process().remove_all_script(plan).lstrip().startswith("s=")
    assert Process().remove_script(plan, ["x"]).lstrip().startswith("s=")
    for runtime in (Docker(), Process()):  # a roll's hold and restore move the secrets or the run directory
        assert runtime.hold_script(plan, ["x"]).startswith("s="), runtime.name
        assert runtime.restore_script(plan, ["x"]).startswith("s="), runtime.name
    listing = Process().list_script(plan)
    assert listing.index(STATE_DIR_REFUSED) < listing.index('list_svcs "$RUN"')
