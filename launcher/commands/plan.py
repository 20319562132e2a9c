"""`launcher plan`: what would run on every node, touching no node: text for people, JSON for
machines, or one bash script per node."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from launcher.errors import ConfigError, one_line
from launcher.operations.context import load_plan
from launcher.output import plan_views
from launcher.output.console import say


def run(
    config: Path, inventory: Path | None, fmt: str, out_dir: Path | None, verbose: bool, profile: str | None = None
) -> None:
    plan = load_plan(config, inventory, profile)
    if fmt == "json":
        sys.stdout.write(json.dumps(plan_views.to_json(plan), indent=2) + "\n")
    elif fmt == "script" and out_dir is None:
        for node in plan.nodes:
            sys.stdout.write(plan_views.node_script(plan, node.index) + "\n")
    elif fmt == "script":
        write_scripts(plan, out_dir)
        say(f"wrote {len(plan.nodes)} scripts to {out_dir}")
    else:
        say(plan_views.to_text(plan, verbose=verbose))


def write_scripts(plan, out_dir: Path) -> None:
    """One executable script per node in out_dir; a directory that cannot be written is bad input."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        for node in plan.nodes:
            path = out_dir / f"{plan.deployment}-node{node.index}-{node.name}.sh"
            path.write_text(plan_views.node_script(plan, node.index))
            path.chmod(0o755)
    except OSError as exc:
        where = one_line(str(exc.filename or out_dir))
        raise ConfigError(f"cannot write {where}: {exc.strerror}", key="--out") from None
