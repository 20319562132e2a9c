"""`-i slurm`: the nodes of the current Slurm allocation (inside `salloc` or an `sbatch` script), asked
of `scontrol`. Outside an allocation it is bad input, said in one line."""

from __future__ import annotations

import os
import shutil
import subprocess

from launcher.config import slurm
from launcher.config.schema import InventorySpec
from launcher.errors import ConfigError

NAME = "slurm"  # `-i slurm`
KEY = "-i slurm"


def requested(inventory: object) -> bool:
    return inventory is not None and str(inventory) == NAME


def scontrol(*args: str) -> str:
    program = shutil.which("scontrol")
    if program is None:
        raise ConfigError("scontrol is not on PATH: Slurm's client commands are needed to read the allocation", key=KEY)
    try:
        done = subprocess.run([program, *args], capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        raise ConfigError(f"`scontrol {' '.join(args)}` did not answer in 60 s", key=KEY) from None
    if done.returncode != 0:
        why = (done.stderr or done.stdout).strip().splitlines()
        raise ConfigError(f"`scontrol {' '.join(args)}` failed: {why[-1] if why else done.returncode}", key=KEY)
    return done.stdout


def inventory(environ: dict[str, str] | None = None) -> InventorySpec:
    env = dict(os.environ if environ is None else environ)
    nodelist = env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST")
    if not nodelist:
        raise ConfigError(
            "not inside a Slurm allocation (SLURM_JOB_NODELIST is not set): run it in `salloc -N N` or an sbatch"
            " script, or pass an inventory file",
            key=KEY,
        )
    names = slurm.hostnames(scontrol("show", "hostnames", nodelist))
    if not names:
        raise ConfigError(f"the allocation {nodelist!r} has no nodes", key=KEY)
    nodes = slurm.node_fields(scontrol("show", "node", "-o", ",".join(names)))
    job = env.get("SLURM_JOB_ID")
    gpus = slurm.job_gpus(env, scontrol("show", "job", job) if job and not env.get("SLURM_GPUS_ON_NODE") else "")
    return slurm.inventory(names, nodes, gpus)
