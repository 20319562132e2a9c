"""Command line: `launcher plan|up|status|logs|exec|down ...`."""

from __future__ import annotations

import json
import os
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from launcher import __version__
from launcher.errors import LauncherError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Bring up disaggregated wide-EP LLM deployments on bare-metal nodes over SSH.",
)
err = Console(stderr=True, highlight=False, soft_wrap=True)
out = Console(highlight=False, soft_wrap=True)

InventoryOpt = Annotated[
    Path | None,
    typer.Option("-i", "--inventory", help="Inventory file with the nodes and SSH settings (like Ansible's)."),
]


class Format(str, Enum):
    text = "text"
    json = "json"
    script = "script"


def load_plan(config: Path, inventory: Path | None):
    from launcher import config as cfg
    from launcher import plan as planner

    loaded = cfg.load(config, inventory or _env_inventory())
    return planner.build(loaded)


def _env_inventory() -> Path | None:
    value = os.environ.get("LAUNCHER_INVENTORY")
    return Path(value) if value else None


@app.command()
def plan(
    config: Annotated[Path, typer.Argument(help="Deployment file (YAML).")],
    inventory: InventoryOpt = None,
    format: Annotated[Format, typer.Option("--format", "-f", help="text, json or script.")] = Format.text,
    out_dir: Annotated[
        Path | None, typer.Option("--out", help="With --format script: write one script per node here.")
    ] = None,
    verbose: Annotated[bool, typer.Option("-v", "--verbose", help="Show the full docker run lines.")] = False,
) -> None:
    """Show what would run on every node, without touching any node."""
    from launcher import render

    p = load_plan(config, inventory)
    if format is Format.json:
        sys.stdout.write(json.dumps(render.to_json(p), indent=2) + "\n")
    elif format is Format.script:
        if out_dir is None:
            for node in p.nodes:
                sys.stdout.write(render.node_script(p, node.index) + "\n")
        else:
            out_dir.mkdir(parents=True, exist_ok=True)
            for node in p.nodes:
                path = out_dir / f"{p.deployment}-node{node.index}-{node.name}.sh"
                path.write_text(render.node_script(p, node.index))
                path.chmod(0o755)
            out.print(f"wrote {len(p.nodes)} scripts to {out_dir}")
    else:
        out.print(render.to_text(p, verbose=verbose), markup=False)


@app.command()
def version() -> None:
    """Print the launcher's version."""
    out.print(__version__)


def main() -> None:
    try:
        app(standalone_mode=False)
    except LauncherError as exc:
        for line in str(exc).splitlines():
            err.print(f"error: {line}", markup=False)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        err.print("interrupted", markup=False)
        sys.exit(130)
    except SystemExit:
        raise
    except Exception as exc:  # click's usage errors and aborts
        import click

        if isinstance(exc, click.exceptions.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        if isinstance(exc, click.exceptions.Abort):
            err.print("aborted", markup=False)
            sys.exit(130)
        raise
