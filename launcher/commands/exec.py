"""`launcher exec`: a command on the nodes' hosts in parallel; output grouped per node; the exit code
is the worst one (a signal death counts as 128+signal, or 255 over SSH; an unreachable node 255)."""

from __future__ import annotations

from launcher.errors import ConfigError, Exit
from launcher.operations.context import Connection, connected, target
from launcher.output import console
from launcher.output.console import say
from launcher.runtime.shell import join

UNREACHABLE = 255


def run(command: list[str], config_opt, inventory, connection: Connection, *, node, role, all_nodes: bool) -> None:
    if sum(x is not None and x is not False for x in (node, role, all_nodes or None)) != 1:
        raise ConfigError("choose exactly one of --node I, --role R or --all", key="exec")
    t = target(None, config_opt, inventory)
    plan = t.plan
    if node is not None:
        indices = [t.node(node).index]
    elif role is not None:
        t.check_selection(None, role, None)
        indices = sorted({s.node.index for s in plan.services if role in (s.role, s.group, s.service)})
    else:
        indices = [n.index for n in plan.nodes]
    # One word is a script (`exec -- 'a | b'`); several are an argv, quoted.
    script = join(command) if len(command) > 1 else command[0]
    with connected(t, connection):
        results = t.fleet.run(script, indices, timeout=600)
    worst = 0
    for i in indices:
        r = results[i]
        console.stdout().print(f"[bold]== {plan.nodes[i].label}[/]", highlight=False)
        if isinstance(r, Exception):
            say(str(r), style="red")
            worst = max(worst, UNREACHABLE)
            continue
        if r.stdout:
            say(r.stdout.rstrip("\n"))
        if r.stderr:
            say(r.stderr.rstrip("\n"), to_stderr=True)
        code, shown = exit_status(r.exit_code)
        if code:
            say(f"({shown})", style="red")
        worst = max(worst, code)
    raise Exit(worst)


def exit_status(code: int) -> tuple[int, str]:
    """A command killed by a signal has no exit code (SSH: -1; locally: -SIGNAL): as a shell reports it."""
    if code == -1:
        return 255, "killed by a signal (no exit status)"
    if code < 0:
        return 128 - code, f"killed by signal {-code}, exit {128 - code}"
    return code, f"exit {code}"
