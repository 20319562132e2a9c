"""`launcher doctor`: find, before anything starts, what would make a start hang or fail: every node's
checks (`preflight`), then each role's exact argv through its engine's own parser inside the image on
one node, and the router's pinned version in its image (operations/checks.py, which `up` runs first); with
--fabric, the fabric check; GPU health always."""

from __future__ import annotations

from launcher.errors import Exit
from launcher.operations import fabric, gpu_health, locking
from launcher.operations.checks import check
from launcher.operations.context import Connection, connected, target
from launcher.operations.preflight import Check
from launcher.output import console
from launcher.output.fabric_view import show
from launcher.output.tables import checks_table


def run(
    config,
    config_opt,
    inventory,
    connection: Connection,
    *,
    as_json: bool,
    with_args: bool,
    with_fabric: bool = False,
    gpu_diag: bool = False,
) -> None:
    t = target(config, config_opt, inventory)
    report = None
    with connected(t, connection):
        found = check(t, with_args)
        checks = list(found.checks)  # its own list: what follows adds to it
        reachable = [c.node for c in checks if c.name == "ssh" and c.status == "ok"]
        checks += gpu_health.doctor_checks(t, reachable, gpu_diag)
        if with_fabric:
            report = fabric.check(t, running=found.running)
            checks += [Check(x.node, x.name, x.status, x.detail, x.fix) for x in report.lines()]
            try:
                locking.audit(locking.Site.of(t), fabric.audit_line(t, report, "doctor --fabric"))
            except Exception as exc:  # an unreachable head node is reported by its own checks already
                checks.append(Check(t.plan.head.index, "audit", "warn", f"figures not logged: {exc}"))
    checks_table(t.plan, checks, as_json, extra={"fabric": report.to_json()} if report else None)
    if report is not None and not as_json:
        show(t.plan, report, console.stdout())
    if any(c.status == "fail" for c in checks):
        raise Exit(1)
