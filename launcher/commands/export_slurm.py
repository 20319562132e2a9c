"""`launcher export CONFIG --to slurm`: the batch script (runtime/slurm.py), with the readiness waiter
that runs inside the job (remote/slurm_wait.py) embedded, so the file alone is what sbatch needs."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

from launcher.errors import ConfigError, one_line
from launcher.output.console import say
from launcher.plan.types import Plan
from launcher.remote import program as remote_program
from launcher.runtime.slurm import batch_script


def run(plan: Plan, config: Path, out: Path | None) -> None:
    waiter = remote_program("slurm_wait")
    command = f"launcher export {shlex.quote(str(config))} --to slurm"
    script = batch_script(plan, waiter, command)
    nodes = max(s.node.index for s in plan.services) + 1
    steps = len(plan.services)
    if out is None:
        sys.stdout.write(script + "\n")
    else:
        try:
            out.write_text(script + "\n")
            out.chmod(0o755)
        except OSError as exc:
            raise ConfigError(f"cannot write: {exc.strerror}", file=one_line(str(out)), key="-o") from None
    where = f"wrote {out}" if out else "the script above"
    runtime = "pyxis containers" if plan.runtime == "docker" else "the process runtime"
    say(f"{where}: {steps} srun step(s) on {nodes} node(s), {runtime}; submit it with `sbatch {out or 'FILE'}`",
        to_stderr=True)  # fmt: skip
