"""`launcher status`: every service of the deployment on every node, read from the nodes' labels, its
health probe, and whether the endpoint serves (operations/service_status.py). Exit 1 (with a `not ok:`
line) unless it does."""

from __future__ import annotations

from launcher.errors import Exit
from launcher.operations import gpu_health
from launcher.operations.context import Connection, Target, connected, read_routes, target
from launcher.operations.service_status import (
    endpoint_line,
    problems_of,
    replica_line,
    replicas_of,
    rolls_of,
    status,
    status_json,
)
from launcher.output import console
from launcher.output.console import say
from launcher.output.tables import print_json, status_table


def run(config, config_opt, inventory, connection: Connection, *, as_json: bool) -> None:
    t = target(config, config_opt, inventory)
    with connected(t, connection):
        read_routes(t)  # network.interface: auto names each rank's interface in its spec
        rows, unreachable, endpoint = status(t)
        gpu_lines, gpus = gpu_health.status_lines(t, unreachable)
    plan = t.plan
    problems = problems_of(t, rows, unreachable, endpoint) + gpu_problems(gpu_lines)
    if as_json:
        print_json(with_gpus(status_json(t, rows, unreachable, endpoint), gpus, problems))
    else:
        console.stdout().print(status_table(rows))
        for replica in replicas_of(t, rows):
            say(replica_line(replica))
        for roll in rolls_of(t, rows):
            say(roll["says"])
        for line in replaced_lines(t):
            say(line)
        for i, why in sorted(unreachable.items()):
            say(f"{plan.nodes[i].label}: unreachable: {why}", style="red")
        for line in gpu_lines:
            say(line, style="red")
        if plan.endpoint:
            say(endpoint_line(t, endpoint))
        if problems:
            say(f"not ok: {'; '.join(problems)}", style="red")
    if problems:
        raise Exit(1)


def replaced_lines(t: Target) -> list[str]:
    """The substitutions `watch` made (read back from the replacement ranks' labels), and labels refused."""
    plan = t.plan
    moved = [
        f"{plan.nodes[spare].label} replaces {plan.nodes[lost].label} (lost; its group ranks moved by watch)"
        for lost, spare in sorted(plan.substitutes.items())
    ]
    return moved + t.notes


def gpu_problems(gpu_lines: list[str]) -> list[str]:
    """Each sick node's GPU line (gpu_health.status_lines) is a problem (`status` exits 1 while it
    lasts), but a warning (throttling, an Xid outside the table)."""
    problems = []
    for line in gpu_lines:
        node, _, rest = line.partition(": GPUs")
        verdict = rest.split(":")[0].strip() or "unreadable"
        if verdict != "warn":
            problems.append(f"{node}: GPUs {verdict}")
    return problems


def with_gpus(data: dict, gpus: dict, problems: list[str]) -> dict:
    """`status --json` with each node's GPU verdict (`gpus`) and the GPU problems counted."""
    return {**data, "ok": not problems, "problems": problems, "gpus": gpus}
