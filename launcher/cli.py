"""The command line: each verb declares its options and calls `launcher.commands.<verb>.run`.

Options several verbs share are declared once, as `Annotated` types. The commands are imported inside
each verb, so `launcher --help` and `launcher plan` load only what they use (start-up time).
"""

from __future__ import annotations

import os
import signal
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from launcher import __version__
from launcher.errors import ConfigErrors, Exit, LauncherError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Bring up disaggregated wide-EP LLM deployments on bare-metal nodes over SSH.",
)
lock_app = typer.Typer(help="The deployment lock on the head node.", no_args_is_help=True)
app.add_typer(lock_app, name="lock")
image_app = typer.Typer(help="Build the deployment's image here; push it to every node.", no_args_is_help=True)
app.add_typer(image_app, name="image")


class HostKeyPolicy(str, Enum):
    strict = "strict"
    accept_new = "accept-new"


class Format(str, Enum):
    text = "text"
    json = "json"
    script = "script"


ConfigArg = Annotated[
    Path | None,
    typer.Argument(help="Deployment file. Default: -c, $LAUNCHER_CONFIG, or the last `up` in this directory."),
]
ConfigOpt = Annotated[Path | None, typer.Option("-c", "--config", help="Deployment file (same as the argument).")]
InventoryOpt = Annotated[
    Path | None,
    typer.Option("-i", "--inventory", help="Inventory file with the nodes and SSH settings (like Ansible's)."),
]
# Seconds given on the command line are at most a day: `inf` or 1e300 would overflow every sleep and
# socket timeout (OverflowError) after the nodes were already being contacted.
DAY = 86400
ParallelOpt = Annotated[int, typer.Option("--parallel", min=1, max=512, help="How many nodes to work on at once.")]
TimeoutOpt = Annotated[
    float | None,
    typer.Option(
        "--connect-timeout", min=0.5, max=DAY, help="SSH connect timeout, seconds (overrides the files; default 10)."
    ),
]
HostKeyOpt = Annotated[
    HostKeyPolicy | None,
    typer.Option(
        "--host-key-policy",
        metavar="POLICY",  # the choices are in the help; as the type they would not fit in 80 columns
        help="strict: known_hosts only; accept-new: remember new hosts (overrides the files; default strict).",
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]
NodeOpt = Annotated[str | None, typer.Option("--node", "-n", help="Node index, name or address.")]
FanoutOpt = Annotated[
    int,
    typer.Option(
        "--fanout", min=1, max=8, help="How many nodes each node passes the stream on to (1: a chain, the fastest)."
    ),
]
ProfileOpt = Annotated[
    str | None,
    typer.Option("--profile", help="Apply this profile of the file (`profiles:`: args and env changed per group)."),
]


def connection(parallel: int, connect_timeout: float | None, host_key_policy: HostKeyPolicy | None):
    from launcher.operations.context import Connection

    policy = host_key_policy.value if host_key_policy else None
    return Connection(parallel=parallel, connect_timeout=connect_timeout, host_key_policy=policy)


@app.command()
def plan(
    config: Annotated[Path, typer.Argument(help="Deployment file (YAML).")],
    inventory: InventoryOpt = None,
    format: Annotated[Format, typer.Option("--format", "-f", help="text, json or script.")] = Format.text,
    out_dir: Annotated[
        Path | None, typer.Option("--out", help="With --format script: write one script per node here.")
    ] = None,
    verbose: Annotated[bool, typer.Option("-v", "--verbose", help="Every service in full, with docker run.")] = False,
    profile: ProfileOpt = None,
) -> None:
    """Show what would run on every node, without touching any node."""
    from launcher.commands import plan as command

    command.run(config, inventory, format.value, out_dir, verbose, profile)


AllowDowntimeOpt = Annotated[
    bool,
    typer.Option(
        "--allow-downtime",
        help="Recreate a changed group that has a single running replica (its role is unavailable meanwhile).",
    ),
]
MaxUnavailableOpt = Annotated[
    int,
    typer.Option(
        "--max-unavailable",
        min=1,
        help="Replicas of a group replaced at once by a rolling up (at least one always keeps serving).",
    ),
]


@app.command()
def up(
    config: ConfigArg = None,
    config_opt: ConfigOpt = None,
    inventory: InventoryOpt = None,
    parallel: ParallelOpt = 32,
    connect_timeout: TimeoutOpt = None,
    host_key_policy: HostKeyOpt = None,
    skip_doctor: Annotated[bool, typer.Option("--skip-doctor", help="Start without the preflight checks.")] = False,
    skip_fabric: Annotated[
        bool,
        typer.Option(
            "--skip-fabric", help="Start without the fabric check (rendezvous of multi-node groups, peer ports)."
        ),
    ] = False,
    then_watch: Annotated[
        bool, typer.Option("--watch", help="Once ready, supervise like `launcher watch` until Ctrl-C.")
    ] = False,
    wait: Annotated[
        bool,
        typer.Option(
            "--wait/--no-wait",
            help="Wait until the service answers (default), or only until every container runs (a rolling `up`"
            " still waits until everything is ready before it drains a replica).",
        ),
    ] = True,
    profile: ProfileOpt = None,
    allow_downtime: AllowDowntimeOpt = False,
    max_unavailable: MaxUnavailableOpt = 1,
) -> None:
    """Start the deployment on every node, wait until it answers, and print the endpoint.

    Re-running converges: unchanged services are kept, a changed group is recreated whole, services no
    longer in the file are removed. A changed group with 2 or more replicas rolls: one replica at a time
    drained, replaced, proven, rolled back if it fails."""
    from launcher.commands import up as command
    from launcher.commands import watch as watching

    link = connection(parallel, connect_timeout, host_key_policy)
    done = command.run(
        config,
        config_opt,
        inventory,
        link,
        skip_doctor=skip_doctor,
        skip_fabric=skip_fabric,
        wait=wait,
        profile=profile,
        allow_downtime=allow_downtime,
        max_unavailable=max_unavailable,
    )
    if then_watch:
        watching.run(done.path, None, done.inventory, link)


@app.command()
def scale(
    request: Annotated[str, typer.Argument(metavar="GROUP=N", help="A group of the file and its replica count.")],
    config: ConfigArg = None,
    config_opt: ConfigOpt = None,
    inventory: InventoryOpt = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Say what would change; touch neither the file nor any node.")
    ] = False,
    parallel: ParallelOpt = 32,
    connect_timeout: TimeoutOpt = None,
    host_key_policy: HostKeyOpt = None,
    skip_doctor: Annotated[bool, typer.Option("--skip-doctor", help="Start without the preflight checks.")] = False,
    skip_fabric: Annotated[
        bool, typer.Option("--skip-fabric", help="Start without the fabric check of the new replicas.")
    ] = False,
    wait: Annotated[
        bool,
        typer.Option(
            "--wait/--no-wait", help="Wait until the service answers (default), or only until every container runs."
        ),
    ] = True,
    profile: ProfileOpt = None,
    allow_downtime: AllowDowntimeOpt = False,
    max_unavailable: MaxUnavailableOpt = 1,
) -> None:
    """Set `replicas:` of a group in the deployment file (comments and layout kept), then converge as
    `up` does: new replicas start on free nodes, removed ones are drained first."""
    from launcher.commands import scale as command
    from launcher.commands import up as converge

    link = connection(parallel, connect_timeout, host_key_policy)  # its checks first, as every verb's
    edited = command.run(request, config, config_opt, inventory, dry_run=dry_run, profile=profile)
    if edited is not None:  # converge exactly as `up` does: it is `up` that runs
        path, resolved_inventory = edited
        converge.run(
            path, None, resolved_inventory, link, skip_doctor=skip_doctor, wait=wait, skip_fabric=skip_fabric,
            profile=profile, allow_downtime=allow_downtime, max_unavailable=max_unavailable,
        )  # fmt: skip


@app.command()
def status(
    config: ConfigArg = None,
    config_opt: ConfigOpt = None,
    inventory: InventoryOpt = None,
    as_json: JsonOpt = False,
    parallel: ParallelOpt = 32,
    connect_timeout: TimeoutOpt = None,
    host_key_policy: HostKeyOpt = None,
) -> None:
    """Every service on every node, read from the nodes' labels. Exit 1 unless everything runs, every
    health probe passes and the endpoint is ready (all workers registered, or the router ready)."""
    from launcher.commands import status as command

    command.run(config, config_opt, inventory, connection(parallel, connect_timeout, host_key_policy), as_json=as_json)


@app.command()
def logs(
    config: ConfigArg = None,
    config_opt: ConfigOpt = None,
    inventory: InventoryOpt = None,
    node: NodeOpt = None,
    role: Annotated[str | None, typer.Option("--role", "-r", help="Role or group (etcd, frontend, decode...).")] = None,
    rank: Annotated[int | None, typer.Option("--rank", min=0, help="With --role: one rank of the group.")] = None,
    replica: Annotated[
        int | None, typer.Option("--replica", min=0, help="One replica of the group (`replicas:`), 0 first.")
    ] = None,
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
    from launcher.commands import logs as command

    link = connection(parallel, connect_timeout, host_key_policy)
    command.run(
        config, config_opt, inventory, link, node=node, role=role, rank=rank, follow=follow, tail=tail, since=since,
        grep=grep, replica=replica,
    )  # fmt: skip


@app.command("exec")
def exec_(
    command: Annotated[list[str], typer.Argument(help="Command to run on the hosts (after --).")],
    config_opt: ConfigOpt = None,
    inventory: InventoryOpt = None,
    node: NodeOpt = None,
    role: Annotated[str | None, typer.Option("--role", "-r", help="Every node running this role or group.")] = None,
    all_nodes: Annotated[bool, typer.Option("--all", help="Every node of the deployment.")] = False,
    parallel: ParallelOpt = 32,
    connect_timeout: TimeoutOpt = None,
    host_key_policy: HostKeyOpt = None,
) -> None:
    """Run a command on the nodes' hosts in parallel; output grouped per node; exit code the worst one."""
    from launcher.commands import exec as verb

    link = connection(parallel, connect_timeout, host_key_policy)
    verb.run(command, config_opt, inventory, link, node=node, role=role, all_nodes=all_nodes)


@app.command()
def down(
    config: ConfigArg = None,
    config_opt: ConfigOpt = None,
    inventory: InventoryOpt = None,
    now: Annotated[
        bool, typer.Option("--now", help="Skip the drain: stop at once, cutting the requests in flight.")
    ] = False,
    parallel: ParallelOpt = 32,
    connect_timeout: TimeoutOpt = None,
    host_key_policy: HostKeyOpt = None,
) -> None:
    """Drain the Dynamo workers (their in-flight requests finish, up to the file's drain_timeout), then
    remove every container of the deployment on every node (found by label). Idempotent."""
    from launcher.commands import down as command

    command.run(config, config_opt, inventory, connection(parallel, connect_timeout, host_key_policy), now=now)


@lock_app.command("status")
def lock_status(config: ConfigArg = None, config_opt: ConfigOpt = None, inventory: InventoryOpt = None) -> None:
    """Who holds the lock, if anyone."""
    from launcher.commands import lock as command

    command.status(config, config_opt, inventory)


@lock_app.command("break")
def lock_break(config: ConfigArg = None, config_opt: ConfigOpt = None, inventory: InventoryOpt = None) -> None:
    """Remove the lock, whoever holds it (after making sure nobody is running up or down)."""
    from launcher.commands import lock as command

    command.break_(config, config_opt, inventory)


@app.command()
def watch(
    config: ConfigArg = None,
    config_opt: ConfigOpt = None,
    inventory: InventoryOpt = None,
    interval: Annotated[float, typer.Option("--interval", min=0.5, max=DAY, help="Seconds between checks.")] = 2.0,
    max_restarts: Annotated[
        int | None,
        typer.Option("--max-restarts", min=0, help="Per group or service (default: the file's watch:, else 5)."),
    ] = None,
    backoff: Annotated[
        float | None,
        typer.Option("--backoff", min=0, max=DAY, help="1st wait between restarts, doubling (default: file, else 5)."),
    ] = None,
    reset_after: Annotated[
        float | None,
        typer.Option("--reset-after", min=0, max=DAY, help="Healthy seconds after which a restart count starts over."),
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Say what it would do each round; restart nothing, take no lock.")
    ] = False,
    parallel: ParallelOpt = 32,
    connect_timeout: TimeoutOpt = None,
    host_key_policy: HostKeyOpt = None,
) -> None:
    """Supervise the deployment: a dead rank, one hung (work in flight, no token progress for the
    file's watch.hung_after), or one failing its health probe (watch.unhealthy_after, default 10 s),
    gets its whole group recreated; etcd/NATS/frontend are restarted alone;
    with back-off and a restart budget (flags given win over the file's watch:); past it, an alert, and
    that unit alone is restarted no more. Runs until Ctrl-C, or until a `launcher down` from anywhere ends
    it (exit 0)."""
    from launcher.commands import watch as command

    link = connection(parallel, connect_timeout, host_key_policy)
    command.run(
        config, config_opt, inventory, link, interval=interval, max_restarts=max_restarts, backoff=backoff,
        reset_after=reset_after, dry_run=dry_run,
    )  # fmt: skip


@app.command()
def top(
    config: ConfigArg = None,
    config_opt: ConfigOpt = None,
    inventory: InventoryOpt = None,
    interval: Annotated[
        float, typer.Option("--interval", min=0.5, max=DAY, help="Seconds between two reads (rates are over it).")
    ] = 2.0,
    as_json: Annotated[
        bool, typer.Option("--json", help="One snapshot (two reads an interval apart, for rates) as JSON, then exit.")
    ] = False,
    once: Annotated[
        bool, typer.Option("--once", help="One table (two reads an interval apart, for rates), then exit.")
    ] = False,
    parallel: ParallelOpt = 32,
    connect_timeout: TimeoutOpt = None,
    host_key_policy: HostKeyOpt = None,
) -> None:
    """A live view of every rank (requests running and waiting, KV-cache usage, tokens/s, GPUs), the frontend
    or router (requests/s, TTFT, ITL) and totals per role, from each service's Prometheus /metrics."""
    from launcher.commands import top as command

    link = connection(parallel, connect_timeout, host_key_policy)
    command.run(config, config_opt, inventory, link, interval=interval, as_json=as_json, once=once)


@app.command()
def collect(
    config: ConfigArg = None,
    config_opt: ConfigOpt = None,
    inventory: InventoryOpt = None,
    out: Annotated[
        str | None,
        typer.Option(
            "--out",
            "-o",
            help="The tarball to write, or a directory to write it in. "
            "Default: one in this directory named after the deployment and the time (launcher-collect-...).",
        ),
    ] = None,
    since: Annotated[
        str | None,
        typer.Option("--since", help="Logs since a time or duration (10m, 2026-11-24T10:00); docker runtime only."),
    ] = None,
    parallel: ParallelOpt = 32,
    connect_timeout: TimeoutOpt = None,
    host_key_policy: HostKeyOpt = None,
) -> None:
    """One tarball for a bug report: every service's logs, the deployment file and plan (secrets ***),
    versions and image IDs, the runtime's records, per node GPUs, InfiniBand, network, disks, memory,
    kernel and driver, the audit log and `status --json`. Exit 1 if a node did not answer (it is listed
    in the bundle's INDEX.json; the rest is still collected)."""
    from launcher.commands import collect as command

    link = connection(parallel, connect_timeout, host_key_policy)
    command.run(config, config_opt, inventory, link, out=out, since=since)


@app.command()
def doctor(
    config: ConfigArg = None,
    config_opt: ConfigOpt = None,
    inventory: InventoryOpt = None,
    as_json: JsonOpt = False,
    check_args: Annotated[
        bool, typer.Option("--args/--no-args", help="Also run each role's argv through its engine's own parser.")
    ] = True,
    with_fabric: Annotated[
        bool,
        typer.Option(
            "--fabric",
            help="Also prove the fabric: every peer port tried from the nodes that use it, and each multi-node "
            "group's torch.distributed rendezvous, all-reduce and bandwidth, in the group's image.",
        ),
    ] = False,
    gpu_diag: Annotated[
        bool,
        typer.Option("--gpu-diag", help="Also run `dcgmi diag -r 1` on every node that has DCGM (a quick GPU test)."),
    ] = False,
    parallel: ParallelOpt = 32,
    connect_timeout: TimeoutOpt = None,
    host_key_policy: HostKeyOpt = None,
) -> None:
    """Preflight on every node (SSH, engine, GPUs and their health: ECC, remapped rows, throttling, Xid
    lines in the kernel log; IB, shm, disk, model, image, ports, clock, the interface to each group's
    leader) and the engine flags, before anything starts. Exit 1 if any check fails."""
    from launcher.commands import doctor as command

    link = connection(parallel, connect_timeout, host_key_policy)
    command.run(
        config, config_opt, inventory, link,
        as_json=as_json, with_args=check_args, with_fabric=with_fabric, gpu_diag=gpu_diag,
    )  # fmt: skip


@app.command()
def migrate(
    config: Annotated[Path, typer.Argument(help="Deployment file to rewrite.")],
    sglang: Annotated[str, typer.Option("--sglang", help="The SGLang version to port the engine flags to.")],
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the diff only.")] = False,
) -> None:
    """Rewrite SGLang flags that VERSION renamed or removed (each with a comment), and print the diff."""
    from launcher.commands import migrate as command

    command.run(config, sglang, dry_run)


class Workload(str, Enum):
    e2e = "e2e"
    prefill = "prefill"
    decode = "decode"
    custom = "custom"


WorkloadOpt = Annotated[
    Workload,
    typer.Option(
        "--workload",
        "-w",
        metavar="WORKLOAD",  # the choices are in the help; as the type they would not fit in 80 columns
        help="e2e (ISL 8192, OSL 256, concurrency 1,8,64,256), prefill (8192 requests, ISL 4096, OSL 5), decode"
        " (40000 requests, ISL 2000, OSL 100) or custom (give --isl, --osl, --concurrency).",
    ),
]
BenchOutOpt = Annotated[
    Path | None,
    typer.Option(
        "--out", help="Result directory (default: one in bench-results/ named after deployment, workload, time)."
    ),
]
HeadEnvOpt = Annotated[
    str | None,
    typer.Option(
        "--head-env", help="With --on-head: bin/ of an AIPerf env there (default: bench-env/... in STATE_DIR)."
    ),
]


@app.command(context_settings={"help_option_names": ["--help", "-h"]})
def bench(
    args: Annotated[
        list[str] | None,
        typer.Argument(
            help="[CONFIG] (default: -c, $LAUNCHER_CONFIG, or the last `up` here), or `compare DIR1 DIR2`.",
            metavar="[CONFIG] | compare DIR1 DIR2",
            show_default=False,
        ),
    ] = None,
    config_opt: ConfigOpt = None,
    inventory: InventoryOpt = None,
    workload: WorkloadOpt = Workload.e2e,
    concurrency: Annotated[
        str | None, typer.Option("--concurrency", help="Concurrencies to run, one AIPerf run each: 1,8,64.")
    ] = None,
    isl: Annotated[
        int | None, typer.Option("--isl", min=1, help="Input tokens per request (the workload's default).")
    ] = None,
    osl: Annotated[
        int | None, typer.Option("--osl", min=1, help="Output tokens per request, exactly (ignore_eos).")
    ] = None,
    requests: Annotated[
        int | None,
        typer.Option("--requests", min=1, help="Measured requests per concurrency (default 10 x concurrency)."),
    ] = None,
    warmup: Annotated[
        int | None, typer.Option("--warmup", min=0, help="Warm-up requests per concurrency (2 x it, max 256).")
    ] = None,
    flush: Annotated[
        bool, typer.Option("--flush/--no-flush", help="Clear every worker's KV cache before each concurrency.")
    ] = True,
    out: BenchOutOpt = None,
    on_head: Annotated[
        bool, typer.Option("--on-head", help="Run the client on the head node instead of this machine.")
    ] = False,
    head_env: HeadEnvOpt = None,
    tokenizer: Annotated[
        str | None, typer.Option("--tokenizer", help="Tokenizer path or name (default: fetched from a worker node).")
    ] = None,
    seed: Annotated[int, typer.Option("--seed", min=0, help="Random seed of the synthetic prompts.")] = 100,
    timeout: Annotated[
        float, typer.Option("--timeout", min=1, max=DAY, help="Seconds one concurrency's run may take.")
    ] = 3600.0,
    parallel: ParallelOpt = 32,
    connect_timeout: TimeoutOpt = None,
    host_key_policy: HostKeyOpt = None,
) -> None:
    """Benchmark the running deployment with NVIDIA's AIPerf (one run per concurrency: streaming chat,
    exact ISL/OSL, a fixed seed, a warm-up) and keep the numbers with the recipe: a table here, and in the
    result directory results.json, a plot, AIPerf's own artifacts and the recipe.
    `launcher bench compare DIR1 DIR2` prints two result directories side by side."""
    from launcher.commands import bench as command
    from launcher.errors import ConfigError
    from launcher.plan import bench as plan_bench

    args = args or []
    if args[:1] == ["compare"]:
        if len(args) != 3:
            raise ConfigError("expected `launcher bench compare DIR1 DIR2`", key="compare")
        command.compare(Path(args[1]), Path(args[2]))
        return
    if len(args) > 1:
        raise ConfigError(f"expected at most one CONFIG, got {len(args)}: {' '.join(args)}", key="CONFIG")
    settings = plan_bench.settings(workload.value, concurrency, isl, osl, requests, warmup, flush, seed)
    options = command.Options(settings, out, on_head, head_env, tokenizer, timeout)
    config = Path(args[0]) if args else None
    command.run(config, config_opt, inventory, connection(parallel, connect_timeout, host_key_policy), options)


@app.command("import")
def import_(
    manifests: Annotated[
        list[Path],
        typer.Argument(
            help="LeaderWorkerSet manifests (YAML, `---` between objects), with their Services and Deployments."
        ),
    ],
    out: Annotated[
        Path | None, typer.Option("-o", "--out", help="Write the deployment file here (default: stdout).")
    ] = None,
    name: Annotated[
        str | None, typer.Option("--name", help="The deployment's name (default: from the manifests).")
    ] = None,
    sglang: Annotated[
        str | None, typer.Option("--sglang", help="Declare the SGLang version (flags are checked for it).")
    ] = None,
    sglang_router: Annotated[
        str | None, typer.Option("--sglang-router", help="Declare the sglang-router version the router runs.")
    ] = None,
    vllm: Annotated[str | None, typer.Option("--vllm", help="Declare the vLLM version.")] = None,
    dynamo: Annotated[str | None, typer.Option("--dynamo", help="Declare the Dynamo version.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite the -o file if it exists.")] = False,
) -> None:
    """Translate LeaderWorkerSet manifests into a deployment file: one group per LeaderWorkerSet, the per-rank
    flags left to the launcher, what has no place in the file listed at its top; then check it as `plan` does."""
    from launcher.commands import import_ as command
    from launcher.plan.kube.importer import Options

    options = Options(name=name, sglang=sglang, sglang_router=sglang_router, vllm=vllm, dynamo=dynamo)
    command.run(manifests, out, options, force)


class Target(str, Enum):
    lws = "lws"
    slurm = "slurm"


@app.command()
def export(
    config: Annotated[Path, typer.Argument(help="Deployment file (YAML).")],
    to: Annotated[
        Target, typer.Option("--to", help="lws: Kubernetes LeaderWorkerSet manifests; slurm: a batch script.")
    ],
    inventory: InventoryOpt = None,
    out: Annotated[
        Path | None,
        typer.Option(
            "-o", "--out", help="lws: a directory for the manifests; slurm: the script file (default: stdout)."
        ),
    ] = None,
) -> None:
    """Write the deployment for Kubernetes (one LeaderWorkerSet per group, validated against the CRD's schema, and
    Deployments and Services for etcd, NATS, the frontend or router) or for Slurm (a batch script of srun steps)."""
    from launcher.commands import export as command

    command.run(config, inventory, to.value, out)


@image_app.command("build")
def image_build(
    config: ConfigArg = None,
    config_opt: ConfigOpt = None,
    inventory: InventoryOpt = None,
    dockerfile: Annotated[Path, typer.Option("-f", "--file", help="The Dockerfile.")] = Path("Dockerfile"),
    tag: Annotated[str | None, typer.Option("--tag", "-t", help="Default: the deployment file's `image`.")] = None,
    context: Annotated[
        Path | None, typer.Option("--context", help="The build context. Default: the Dockerfile's directory.")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Build the image with this machine's Docker engine, streaming the build's log.

    The engine: $DOCKER_HOST, else the local socket. The tag defaults to the deployment file's `image`.
    Exit 1 with the build's last lines when it fails."""
    from launcher.commands import image as command

    command.build(config, config_opt, inventory, dockerfile=dockerfile, tag=tag, context=context, as_json=as_json)


@image_app.command("push")
def image_push(
    config: ConfigArg = None,
    config_opt: ConfigOpt = None,
    inventory: InventoryOpt = None,
    as_json: JsonOpt = False,
    fanout: FanoutOpt = 1,
    parallel: ParallelOpt = 32,
    connect_timeout: TimeoutOpt = None,
    host_key_policy: HostKeyOpt = None,
) -> None:
    """Give every node that lacks it the plan's image, relayed node to node without a registry.

    The image comes from this machine's Docker engine ($DOCKER_HOST, else the local socket): one
    `docker save` stream leaves this machine; the nodes pass it on to each other, each loading it as it
    passes. Nodes holding its ID are skipped; IDs are checked at the end; a node failing mid-way is
    named and the others still get it. Exit 1 unless every node holds it."""
    from launcher.commands import image as command

    link = connection(parallel, connect_timeout, host_key_policy)
    command.push(config, config_opt, inventory, link, as_json=as_json, fanout=fanout)


@app.command()
def stage(
    config: ConfigArg = None,
    config_opt: ConfigOpt = None,
    inventory: InventoryOpt = None,
    source: Annotated[
        str, typer.Option("--from", help="The weights: a directory here (PATH) or on a node (NODE:PATH).")
    ] = ...,  # type: ignore[assignment]
    to: Annotated[
        str | None, typer.Option("--to", help="Where on each node. Default: the host side of model.path's volume.")
    ] = None,
    verify: Annotated[
        bool, typer.Option("--verify", help="Hash every file again (not only those whose size or mtime changed).")
    ] = False,
    as_json: JsonOpt = False,
    fanout: FanoutOpt = 1,
    parallel: ParallelOpt = 32,
    connect_timeout: TimeoutOpt = None,
    host_key_policy: HostKeyOpt = None,
) -> None:
    """Copy model weights to every node's local disk, relayed node to node like `image push`.

    Resumable: complete files (size and sha256) are skipped, a partial file continues. Writes a
    manifest (path, size, sha256) next to the weights, which `doctor` checks on every node."""
    from launcher.commands import stage as command

    link = connection(parallel, connect_timeout, host_key_policy)
    command.run(
        config, config_opt, inventory, link, source=source, to=to, verify=verify, as_json=as_json, fanout=fanout
    )


@app.command()
def version() -> None:
    """Print the launcher's version."""
    sys.stdout.write(__version__ + "\n")


def _terminate(signum, frame):  # SIGTERM behaves like Ctrl-C: clean up, release the lock, explain
    raise KeyboardInterrupt


def main() -> None:
    """Run the command line; exit with its code (SystemExit: callable in-process, as tests do)."""
    signal.signal(signal.SIGTERM, _terminate)
    sys.exit(_run())


def entry() -> None:
    """The `launcher` program: like `main`, then leave without the interpreter's teardown (garbage
    collection and thread joins for hundreds of modules and open SSH transports) once all is said."""
    signal.signal(signal.SIGTERM, _terminate)
    code = _run()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _run() -> int:
    try:
        # Without standalone mode click returns typer.Exit codes instead of exiting: pass them on.
        code = app(standalone_mode=False)
        return code if isinstance(code, int) else 0
    except Exit as exc:
        return exc.code
    except LauncherError as exc:
        _print_error(exc)
        return exc.exit_code
    except KeyboardInterrupt:
        _say("interrupted")
        return 130
    except typer.Abort:
        _say("aborted")
        return 130
    except typer.TyperException as exc:  # typer's own click: usage errors, and help for a bare group
        if type(exc).__name__ == "NoArgsIsHelpError":
            # `launcher` or `launcher lock` alone asks what there is: the help, exit 0 as with --help.
            message = exc.format_message()
            if message.strip():
                sys.stdout.write(message + "\n")
            return 0
        _say(f"error: {usage_line(exc)}")
        return getattr(exc, "exit_code", 2)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)


def _say(line: str) -> None:
    sys.stderr.write(line + "\n")


def _print_error(exc: LauncherError) -> None:
    """ConfigErrors: one line per problem, each prefixed; otherwise one headline and its details."""
    lines = str(exc).splitlines() or [type(exc).__name__]
    if isinstance(exc, ConfigErrors):
        for line in lines:
            _say(f"error: {line}")
    else:
        _say(f"error: {lines[0]}")
        for line in lines[1:]:
            _say(line)


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
