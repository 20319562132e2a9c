"""Command line: `launcher plan|up|status|logs|exec|down ...`."""

from __future__ import annotations

import json
import os
import re
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from launcher import __version__
from launcher.errors import ConfigError, ConfigErrors, LauncherError, one_line

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Bring up disaggregated wide-EP LLM deployments on bare-metal nodes over SSH.",
)
# Piped output (logs, CI) keeps whole lines: tables are not squeezed to 80 columns.
err = Console(stderr=True, highlight=False, soft_wrap=True, width=None if sys.stderr.isatty() else 200)
out = Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 200)

InventoryOpt = Annotated[
    Path | None,
    typer.Option("-i", "--inventory", help="Inventory file with the nodes and SSH settings (like Ansible's)."),
]


class HostKeyPolicy(str, Enum):
    strict = "strict"
    accept_new = "accept-new"


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
            try:
                out_dir.mkdir(parents=True, exist_ok=True)
                for node in p.nodes:
                    path = out_dir / f"{p.deployment}-node{node.index}-{node.name}.sh"
                    path.write_text(render.node_script(p, node.index))
                    path.chmod(0o755)
            except OSError as exc:
                where = one_line(str(exc.filename or out_dir))
                raise ConfigError(f"cannot write {where}: {exc.strerror}", key="--out") from None
            out.print(f"wrote {len(p.nodes)} scripts to {out_dir}")
    else:
        out.print(render.to_text(p, verbose=verbose), markup=False)


ConfigArg = Annotated[
    Path | None,
    typer.Argument(help="Deployment file. Default: -c, $LAUNCHER_CONFIG, or the last `up` in this directory."),
]
ConfigOpt = Annotated[Path | None, typer.Option("-c", "--config", help="Deployment file (same as the argument).")]
# Seconds given on the command line are at most a day: `inf` or 1e300 would overflow every sleep and
# socket timeout (OverflowError) after the nodes were already being contacted.
DAY = 86400
ParallelOpt = Annotated[int, typer.Option("--parallel", min=1, max=512, help="How many nodes to work on at once.")]
TimeoutOpt = Annotated[
    float | None,
    typer.Option(
        "--connect-timeout",
        min=0.5,
        max=DAY,
        help="SSH connect timeout, seconds (overrides the files; default 10).",
    ),
]
HostKeyOpt = Annotated[
    HostKeyPolicy | None,
    typer.Option(
        "--host-key-policy",
        help="strict: known_hosts only; accept-new: remember new hosts (overrides the files; default strict).",
    ),
]
LAST = Path(".launcher") / "last.json"


def resolve(config: Path | None, config_opt: Path | None, inventory: Path | None) -> tuple[Path, Path | None]:
    """The deployment a command acts on: argument, -c, $LAUNCHER_CONFIG, then the last `up` here."""
    chosen = (
        config or config_opt or (Path(os.environ["LAUNCHER_CONFIG"]) if os.environ.get("LAUNCHER_CONFIG") else None)
    )
    inv = inventory or _env_inventory()
    if chosen is None and LAST.exists():
        last = json.loads(LAST.read_text())
        chosen = Path(last["config"])
        if inv is None and last.get("inventory"):
            inv = Path(last["inventory"])
    if chosen is None:
        raise ConfigError("no deployment given: pass CONFIG, -c FILE or set LAUNCHER_CONFIG (or run `up` here first)")
    return chosen, inv


def resolve_plan(config: Path | None, config_opt: Path | None, inventory: Path | None):
    """(deployment file, inventory, plan) of the deployment a command acts on."""
    path, inv = resolve(config, config_opt, inventory)
    return path, inv, load_plan(path, inv)


def remember(config: Path, inventory: Path | None) -> None:
    LAST.parent.mkdir(exist_ok=True)
    LAST.write_text(
        json.dumps({"config": str(config.resolve()), "inventory": str(inventory.resolve()) if inventory else None})
    )


def fleet_for(p, parallel: int, connect_timeout: float | None, host_key_policy: HostKeyPolicy | None):
    """A flag given on the command line wins over the files (node, then inventory `ssh:`), then the default."""
    from launcher.transport import Fleet, Options

    policy = host_key_policy.value if host_key_policy else None
    return Fleet(p.nodes, Options(parallel=parallel, connect_timeout=connect_timeout, host_key_policy=policy))


@app.command()
def up(
    config: ConfigArg = None,
    config_opt: ConfigOpt = None,
    inventory: InventoryOpt = None,
    parallel: ParallelOpt = 32,
    connect_timeout: TimeoutOpt = None,
    host_key_policy: HostKeyOpt = None,
    skip_doctor: Annotated[bool, typer.Option("--skip-doctor", help="Start without the preflight checks.")] = False,
    then_watch: Annotated[
        bool, typer.Option("--watch", help="Once ready, supervise like `launcher watch` until Ctrl-C.")
    ] = False,
    wait: Annotated[
        bool,
        typer.Option(
            "--wait/--no-wait", help="Wait until the service answers (default), or only until every container runs."
        ),
    ] = True,
) -> None:
    """Start the deployment on every node, wait until it answers, and print the endpoint.

    Re-running converges: unchanged services are kept, a changed group is recreated whole, services no
    longer in the file are removed."""
    from launcher import readiness
    from launcher import up as upmod
    from launcher.progress import Progress

    path, inv, p = resolve_plan(config, config_opt, inventory)
    if p.flag_errors:
        raise ConfigError(
            "engine flags that the declared version rejects (nothing was started):\n  "
            + "\n  ".join(p.flag_errors)
            + f"\n`launcher migrate {path} --sglang VERSION` rewrites them",
            file=str(path),
        )
    remember(path, inv)
    progress = Progress(err)
    command = "launcher up " + " ".join(sys.argv[2:])
    with fleet_for(p, parallel, connect_timeout, host_key_policy) as fleet:
        if not skip_doctor:
            progress.log("doctor: checking every node and the engine flags")
            checks = run_doctor(p, fleet, with_args=True, stop_early=True)
            bad = [c for c in checks if c.status == "fail"]
            if bad:
                print_checks(p, bad, as_json=False, console=err)
                err.print("nothing was started; fix the above, or `launcher up --skip-doctor`", markup=False)
                raise typer.Exit(1)
        try:
            changes = upmod.up(p, fleet, progress, command=command, wait=wait)
        except KeyboardInterrupt:
            err.print(
                f"interrupted: containers already started stay up. See them with `launcher status`; remove them all"
                f" with `launcher down -c {path}`.",
                markup=False,
            )
            raise typer.Exit(130) from None
    state = "unchanged" if changes.unchanged else f"{len(changes.create)} service(s) (re)created"
    out.print(f"{'ready' if wait else 'running'}: {p.deployment} on {len(p.nodes)} node(s), {state}", markup=False)
    if p.endpoint and wait:
        out.print(f"endpoint: {p.endpoint}  model: {p.model_name}", markup=False)
        out.print(readiness.curl_command(p.endpoint, p.model_name), markup=False, soft_wrap=True)
    if then_watch:
        watch(
            path,
            None,
            inv,
            interval=2.0,
            max_restarts=5,
            backoff=5.0,
            reset_after=600.0,
            parallel=parallel,
            connect_timeout=connect_timeout,
            host_key_policy=host_key_policy,
        )


@app.command()
def status(
    config: ConfigArg = None,
    config_opt: ConfigOpt = None,
    inventory: InventoryOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
    parallel: ParallelOpt = 32,
    connect_timeout: TimeoutOpt = None,
    host_key_policy: HostKeyOpt = None,
) -> None:
    """Every service on every node, read from the nodes' labels. Exit 1 unless everything runs, every
    health probe passes and the endpoint is ready (all workers registered, or the router ready)."""
    from rich.table import Table

    from launcher import ops

    path, inv, p = resolve_plan(config, config_opt, inventory)
    with fleet_for(p, parallel, connect_timeout, host_key_policy) as fleet:
        rows, unreachable, frontend = ops.status(p, fleet)
    problems = [f"{r.service} on node {r.node.index}: {r.state}" for r in rows if r.state != "running"]
    problems += [f"{p.nodes[i].label}: unreachable" for i in unreachable]
    problems += [
        f"{r.service} on node {r.node.index}: {r.health}"
        for r in rows
        if r.state == "running" and r.health.startswith(("unhealthy", "not answering"))
    ]
    if p.endpoint and frontend.get("ready") is False:
        problems.append(f"endpoint {p.endpoint} not ready")
    if as_json:
        data = {
            "deployment": p.deployment,
            "endpoint": p.endpoint,
            "frontend": frontend,
            "ok": not problems,
            "problems": problems,
            "unreachable": {str(i): why for i, why in unreachable.items()},
            "services": [r.to_json() for r in rows],
        }
        sys.stdout.write(json.dumps(data, indent=2) + "\n")
    else:
        table = Table(box=None, pad_edge=False)
        for col in ("node", "address", "service", "role", "rank", "state", "uptime", "restarts", "health"):
            table.add_column(col)
        for r in rows:
            style = "green" if r.state == "running" else "red"
            table.add_row(
                f"{r.node.index} {r.node.name}",
                r.node.address,
                r.service,
                r.role,
                "-" if r.rank is None else str(r.rank),
                f"[{style}]{r.state}[/]",
                ops.format_uptime(r.uptime),
                str(r.restarts),
                r.health,
            )
        out.print(table)
        for i, why in sorted(unreachable.items()):
            out.print(f"{p.nodes[i].label}: unreachable: {why}", style="red", markup=False, highlight=False)
        if p.endpoint and "answer" in frontend:  # the SGLang router
            state = "ready" if frontend["ready"] else "not ready"
            out.print(f"endpoint {p.endpoint}  router {state}: {frontend['answer']}", markup=False)
        elif p.endpoint:
            inst = frontend.get("instances", {})
            exp = frontend.get("expected_instances", {})
            seen = ", ".join(f"{c} {inst.get(c, 0)}/{n}" for c, n in exp.items())
            out.print(f"endpoint {p.endpoint}  model {p.model_name}  workers registered: {seen}", markup=False)
        if problems:
            out.print(f"not ok: {'; '.join(problems)}", style="red", markup=False, highlight=False)
    if problems:
        raise typer.Exit(1)


# What `docker logs --since` takes: a Go duration, a date with an optional time and zone, a Unix timestamp.
SINCE = re.compile(
    r"[-+]?((\d+(\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h))+"
    r"|\d{4}-\d{2}-\d{2}([T ]\d{2}(:\d{2}(:\d{2}(\.\d+)?)?)?)?(Z|[+-]\d{2}:\d{2})?"
    r"|\d+(\.\d+)?"
)


@app.command()
def logs(
    config: ConfigArg = None,
    config_opt: ConfigOpt = None,
    inventory: InventoryOpt = None,
    node: Annotated[str | None, typer.Option("--node", "-n", help="Node index, name or address.")] = None,
    role: Annotated[str | None, typer.Option("--role", "-r", help="Role or group (etcd, frontend, decode...).")] = None,
    rank: Annotated[int | None, typer.Option("--rank", min=0, help="With --role: one rank of the group.")] = None,
    follow: Annotated[bool, typer.Option("-f", "--follow", help="Keep streaming until Ctrl-C.")] = False,
    tail: Annotated[int | None, typer.Option("--tail", min=0, help="Only the last N lines of each container.")] = None,
    since: Annotated[
        str | None,
        typer.Option("--since", help="Since a time or duration (10m, 2026-11-24T10:00); docker runtime only."),
    ] = None,
    grep: Annotated[str | None, typer.Option("--grep", help="Only lines matching this regular expression.")] = None,
    parallel: ParallelOpt = 32,
    connect_timeout: TimeoutOpt = None,
    host_key_policy: HostKeyOpt = None,
) -> None:
    """Logs of the selected containers, each line prefixed with node, role and rank."""
    import re as _re

    from launcher import ops

    if node is None and role is None:
        raise ConfigError("choose what to show: --node I, or --role R [--rank K]", key="logs")
    if grep:
        try:
            _re.compile(grep)
        except _re.error as exc:
            raise ConfigError(f"not a regular expression: {exc}", key="--grep") from None
    if since is not None and not SINCE.fullmatch(since):
        raise ConfigError(
            "expected a duration (10m, 1h30m), a date or time (2026-11-24, 2026-11-24T10:00:00Z) or a Unix"
            f" timestamp, got {since!r}",
            key="--since",
        )
    path, inv, p = resolve_plan(config, config_opt, inventory)
    check_selection(p, node, role, rank)
    if since and p.runtime == "process":
        # Its logs are plain files without timestamps: showing everything would pretend to filter.
        raise ConfigError(
            "--since needs the docker runtime (process logs carry no timestamps); use --tail N", key="--since"
        )
    with fleet_for(p, parallel, connect_timeout, host_key_policy) as fleet:
        chosen, failed = ops.select_containers(p, fleet, node, role, rank)
        for i, why in failed.items():
            err.print(f"{p.nodes[i].label}: {why}", markup=False)
        if not chosen:
            err.print("no container matches", markup=False)
            raise typer.Exit(1)
        try:
            failed.update(
                ops.stream_logs(
                    p, fleet, chosen, out, follow=follow, tail=tail, since=since, grep=grep, with_prefix=True
                )
            )
        except KeyboardInterrupt:
            raise typer.Exit(0) from None
    if failed:
        raise typer.Exit(1)


def check_selection(p, node: str | None, role: str | None, rank: int | None) -> None:
    """--node, --role and --rank name something in the deployment file: else exit 2 before any node is asked."""
    from launcher import ops

    if node is not None:
        ops.select_nodes(p, node)
    services = [s for s in p.services if role is None or role in (s.role, s.group, s.service)]
    if not services:
        roles = sorted({x for s in p.services for x in (s.role, s.group, s.service) if x})
        raise ConfigError(f"no service has role or group {role!r}: expected one of {', '.join(roles)}", key="--role")
    ranks = sorted({s.rank for s in services if s.rank is not None})
    if rank is not None and rank not in ranks:
        expected = (
            "none has ranks" if not ranks else f"expected {ranks[0]}" + (f"..{ranks[-1]}" if len(ranks) > 1 else "")
        )
        raise ConfigError(f"no rank {rank}" + (f" of {role}" if role else "") + f": {expected}", key="--rank")


@app.command("exec")
def exec_(
    command: Annotated[list[str], typer.Argument(help="Command to run on the hosts (after --).")],
    config_opt: ConfigOpt = None,
    inventory: InventoryOpt = None,
    node: Annotated[str | None, typer.Option("--node", "-n", help="Node index, name or address.")] = None,
    role: Annotated[str | None, typer.Option("--role", "-r", help="Every node running this role or group.")] = None,
    all_nodes: Annotated[bool, typer.Option("--all", help="Every node of the deployment.")] = False,
    parallel: ParallelOpt = 32,
    connect_timeout: TimeoutOpt = None,
    host_key_policy: HostKeyOpt = None,
) -> None:
    """Run a command on the nodes' hosts in parallel; output grouped per node; exit code the worst one."""
    from launcher import ops

    if sum(x is not None and x is not False for x in (node, role, all_nodes or None)) != 1:
        raise ConfigError("choose exactly one of --node I, --role R or --all", key="exec")
    path, inv, p = resolve_plan(None, config_opt, inventory)
    if node is not None:
        indices = [ops.select_nodes(p, node).index]
    elif role is not None:
        indices = sorted({s.node.index for s in p.services if role in (s.role, s.group, s.service)})
        if not indices:
            check_selection(p, None, role, None)
    else:
        indices = [n.index for n in p.nodes]
    worst = 0
    with fleet_for(p, parallel, connect_timeout, host_key_policy) as fleet:
        results = ops.run_everywhere(p, fleet, indices, command)
    for i in indices:
        r = results[i]
        out.print(f"[bold]== {p.nodes[i].label}[/]", highlight=False)
        if isinstance(r, Exception):
            out.print(str(r), style="red", markup=False, highlight=False)
            worst = max(worst, 255)
            continue
        if r.stdout:
            out.print(r.stdout.rstrip("\n"), markup=False, highlight=False)
        if r.stderr:
            err.print(r.stderr.rstrip("\n"), markup=False, highlight=False)
        code, shown = exit_status(r.exit_code)
        if code:
            out.print(f"({shown})", style="red", markup=False, highlight=False)
        worst = max(worst, code)
    raise typer.Exit(worst)


def exit_status(code: int) -> tuple[int, str]:
    """A command killed by a signal has no exit code (SSH: -1; locally: -SIGNAL): as a shell reports it."""
    if code == -1:
        return 255, "killed by a signal (no exit status)"
    if code < 0:
        return 128 - code, f"killed by signal {-code}, exit {128 - code}"
    return code, f"exit {code}"


@app.command()
def down(
    config: ConfigArg = None,
    config_opt: ConfigOpt = None,
    inventory: InventoryOpt = None,
    parallel: ParallelOpt = 32,
    connect_timeout: TimeoutOpt = None,
    host_key_policy: HostKeyOpt = None,
) -> None:
    """Remove every container of the deployment on every node (found by label). Idempotent."""
    from launcher import ops

    path, inv, p = resolve_plan(config, config_opt, inventory)
    with fleet_for(p, parallel, connect_timeout, host_key_policy) as fleet:
        removed = ops.down(p, fleet, command="launcher down " + " ".join(sys.argv[2:]))
    out.print(
        f"down: removed {sum(removed.values())} container(s) of {p.deployment} on {len(removed)} node(s)", markup=False
    )


lock_app = typer.Typer(help="The deployment lock on the head node.", no_args_is_help=True)
app.add_typer(lock_app, name="lock")


@lock_app.command("status")
def lock_status(config: ConfigArg = None, config_opt: ConfigOpt = None, inventory: InventoryOpt = None) -> None:
    """Who holds the lock, if anyone."""
    from launcher import lock as lockmod
    from launcher.up import head_index

    path, inv, p = resolve_plan(config, config_opt, inventory)
    with fleet_for(p, 4, None, None) as fleet:  # the files' ssh settings apply, as everywhere
        held = lockmod.status(fleet.host(head_index(p)), p.state_dir, p.deployment)
    if held is None:
        out.print("not locked", markup=False)
        return
    stale = held.dead() and "its process on this machine is gone" or held.stale()
    hint = f" — stale: {stale}; `launcher lock break` removes it (the next command takes it over)" if stale else ""
    out.print(f"locked by {held.describe()}{hint}", markup=False)


@lock_app.command("break")
def lock_break(config: ConfigArg = None, config_opt: ConfigOpt = None, inventory: InventoryOpt = None) -> None:
    """Remove the lock, whoever holds it (after making sure nobody is running up or down)."""
    from launcher import lock as lockmod
    from launcher.up import head_index

    path, inv, p = resolve_plan(config, config_opt, inventory)
    with fleet_for(p, 4, None, None) as fleet:
        host = fleet.host(head_index(p))
        held = lockmod.break_lock(host, p.state_dir, p.deployment)
        lockmod.audit(host, p.state_dir, p.deployment, "lock broken" + (f" (was {held.describe()})" if held else ""))
    out.print(f"lock removed (was held by {held.describe()})" if held else "no lock was held", markup=False)


def print_checks(p, checks, as_json: bool, console: Console | None = None) -> None:
    console = console or out
    if as_json:
        sys.stdout.write(
            json.dumps(
                {
                    "deployment": p.deployment,
                    "ok": not any(c.status == "fail" for c in checks),
                    "checks": [c.to_json() for c in checks],
                },
                indent=2,
            )
            + "\n"
        )
        return
    from rich.table import Table

    table = Table(box=None, pad_edge=False)
    for col in ("node", "check", "status", "detail", "fix"):
        table.add_column(col, overflow="fold")
    colour = {"ok": "green", "warn": "yellow", "fail": "red", "skip": "dim"}
    for c in sorted(checks, key=lambda c: (c.node is None, c.node or 0, c.name)):
        node = "-" if c.node is None else f"{c.node} {p.nodes[c.node].name} {p.nodes[c.node].address}"
        table.add_row(node, c.name, f"[{colour.get(c.status, '')}]{c.status}[/]", escape(c.detail), escape(c.fix))
    console.print(table)
    bad = [c for c in checks if c.status == "fail"]
    console.print(f"{len(bad)} problem(s) found" if bad else "all checks passed", markup=False)


def run_doctor(p, fleet, with_args: bool, stop_early: bool = False) -> list:
    """Node checks, then (with_args) the engines' parsers; stop_early skips the parsers once a node failed."""
    from launcher import doctor as doc

    checks = doc.run(p, fleet)
    reachable = {c.node for c in checks if c.name == "ssh" and c.status == "ok"}
    if stop_early and any(c.status == "fail" for c in checks):
        return checks
    if with_args and reachable:
        checks += doc.check_args(p, fleet)
    return checks


@app.command()
def watch(
    config: ConfigArg = None,
    config_opt: ConfigOpt = None,
    inventory: InventoryOpt = None,
    interval: Annotated[float, typer.Option("--interval", min=0.5, max=DAY, help="Seconds between checks.")] = 2.0,
    max_restarts: Annotated[int, typer.Option("--max-restarts", min=0, help="Per group or service.")] = 5,
    backoff: Annotated[
        float, typer.Option("--backoff", min=0, max=DAY, help="First wait between restarts (doubles).")
    ] = 5.0,
    reset_after: Annotated[
        float,
        typer.Option("--reset-after", min=0, max=DAY, help="Healthy seconds after which a restart count starts over."),
    ] = 600.0,
    parallel: ParallelOpt = 32,
    connect_timeout: TimeoutOpt = None,
    host_key_policy: HostKeyOpt = None,
) -> None:
    """Supervise the deployment: a dead rank gets its whole group recreated; etcd/NATS/frontend are
    restarted alone; with back-off and a maximum, then exit 1. Runs until Ctrl-C, or until a
    `launcher down` from anywhere ends it (exit 0)."""
    from launcher import watch as watchmod
    from launcher.progress import Progress

    path, inv, p = resolve_plan(config, config_opt, inventory)
    with fleet_for(p, parallel, connect_timeout, host_key_policy) as fleet:
        try:
            watchmod.watch(
                p,
                fleet,
                Progress(err, live=False),
                interval=interval,
                max_restarts=max_restarts,
                backoff=backoff,
                reset_after=reset_after,
            )
        except KeyboardInterrupt:
            err.print("watch stopped", markup=False)
        except watchmod.Stopped as exc:
            err.print(str(exc), markup=False)  # not an error: someone ran `launcher down`


@app.command()
def doctor(
    config: ConfigArg = None,
    config_opt: ConfigOpt = None,
    inventory: InventoryOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
    check_args: Annotated[
        bool, typer.Option("--args/--no-args", help="Also run each role's argv through its engine's own parser.")
    ] = True,
    parallel: ParallelOpt = 32,
    connect_timeout: TimeoutOpt = None,
    host_key_policy: HostKeyOpt = None,
) -> None:
    """Preflight on every node (SSH, engine, GPUs, IB, shm, disk, model, image, ports, clock) and the
    engine flags, before anything starts. Exit 1 if any check fails."""
    path, inv, p = resolve_plan(config, config_opt, inventory)
    with fleet_for(p, parallel, connect_timeout, host_key_policy) as fleet:
        checks = run_doctor(p, fleet, check_args)
    print_checks(p, checks, as_json)
    if any(c.status == "fail" for c in checks):
        raise typer.Exit(1)


@app.command()
def migrate(
    config: Annotated[Path, typer.Argument(help="Deployment file to rewrite.")],
    sglang: Annotated[str, typer.Option("--sglang", help="The SGLang version to port the engine flags to.")],
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the diff only.")] = False,
) -> None:
    """Rewrite SGLang flags that VERSION renamed or removed (each with a comment), and print the diff."""
    import difflib
    import re as _re

    from launcher import flagdrift

    if not _re.fullmatch(r"\d+\.\d+\.\d+(\.post\d+)?", sglang):
        raise ConfigError(f"--sglang expects a version like 0.5.21, got {sglang!r}", key="--sglang")
    try:
        text = config.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror}", file=str(config)) from None
    new = flagdrift.migrate_text(text, sglang)
    new = _re.sub(
        r'^(\s*sglang:\s*)"?[0-9][0-9a-z.]*"?', lambda m: f'{m.group(1)}"{sglang}"', new, count=1, flags=_re.M
    )
    diff = "".join(difflib.unified_diff(text.splitlines(True), new.splitlines(True), str(config), str(config)))
    if not diff:
        out.print(f"{config}: nothing to change for SGLang {sglang}", markup=False)
        return
    sys.stdout.write(diff)
    if not dry_run:
        config.write_text(new)
        err.print(f"rewrote {config}", markup=False)


@app.command()
def version() -> None:
    """Print the launcher's version."""
    out.print(__version__)


def _terminate(signum, frame):  # SIGTERM behaves like Ctrl-C: clean up, release the lock, explain
    raise KeyboardInterrupt


def main() -> None:
    import signal

    signal.signal(signal.SIGTERM, _terminate)
    try:
        # Without standalone mode click returns typer.Exit codes instead of exiting: pass them on.
        code = app(standalone_mode=False)
        if isinstance(code, int) and code:
            sys.exit(code)
    except LauncherError as exc:
        # ConfigErrors: one line per problem, each prefixed; otherwise one headline and its details.
        lines = str(exc).splitlines() or [type(exc).__name__]
        if isinstance(exc, ConfigErrors):
            for line in lines:
                err.print(f"error: {line}", markup=False)
        else:
            err.print(f"error: {lines[0]}", markup=False)
            for line in lines[1:]:
                err.print(line, markup=False)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        err.print("interrupted", markup=False)
        sys.exit(130)
    except typer.Abort:
        err.print("aborted", markup=False)
        sys.exit(130)
    except typer.TyperException as exc:  # typer's own click: usage errors, and help for a bare group
        if type(exc).__name__ == "NoArgsIsHelpError":
            # `launcher` or `launcher lock` alone asks what there is: the help (rich has already
            # printed it to stdout while building the exception), exit 0 as with --help.
            message = exc.format_message()
            if message.strip():
                out.print(message, markup=False, highlight=False)
            sys.exit(0)
        err.print(f"error: {usage_line(exc)}", markup=False)
        sys.exit(getattr(exc, "exit_code", 2))


def usage_line(exc: Exception) -> str:
    """A command-line mistake in one line: the option, what was wrong, where to read more.

    Typer bundles its own click (`typer._click`), whose exceptions are not `click`'s: they are told
    apart by what they carry (a param, a pydantic cause), not by importing private classes."""
    param = getattr(exc, "param", None)
    message = getattr(exc, "message", None) or str(exc)
    cause = exc.__cause__
    if cause is not None and hasattr(cause, "errors"):  # pydantic: say what was given, not only the rule
        first = cause.errors()[0]
        if first["type"] == "value_error":  # a choice: "'nope' is not one of 'text', 'json', 'script'"
            message = str((first.get("ctx") or {}).get("error", message))
        else:
            message = f"{first['msg'][0].lower()}{first['msg'][1:]}, got {first['input']!r}"
    if param is not None and type(exc).__name__ != "MissingParameter":
        names = [o for o in getattr(param, "opts", []) if o.startswith("--")] or [param.human_readable_name]
        line = f"{names[0]}: {message.rstrip('.')}"
    else:
        format_message = getattr(exc, "format_message", None)
        line = format_message() if format_message else message
    ctx = getattr(exc, "ctx", None)
    hint = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
    return " ".join(line.split()) + hint
