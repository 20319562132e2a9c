"""`launcher bench`: benchmark the running deployment with the real AIPerf client, one run per concurrency
(a KV-cache flush before each, where the deployment has one), and keep the numbers with the recipe that
produced them; `launcher bench compare DIR1 DIR2` sets two such result directories side by side.

The result directory is written as DIR.partial and renamed to DIR only when everything is in it; a run that
fails or is interrupted leaves DIR.incomplete (AIPerf's logs, no results.json). Bad input (a concurrency of 0,
an unknown workload, ISL + OSL beyond the context) is refused before anything is written (exit 2); an endpoint
that does not serve, exit 1.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from launcher import __version__
from launcher.config.yamlfile import load_json
from launcher.errors import ConfigError, Exit, one_line
from launcher.operations import bench_client as client
from launcher.operations import bench_recipe as recipe
from launcher.operations.context import Connection, Target, connected, target
from launcher.operations.health import endpoint_state
from launcher.output import console
from launcher.output.bench_views import compare_table, number, results_table
from launcher.output.console import say
from launcher.plan import bench as B
from launcher.plan import bench_results as R
from launcher.remote import program as remote_program

# LMSYS, 2025-05-05 (96 H100, DeepSeek-V3, 2000-token inputs): per prefill node and per decode node.
LMSYS = {"input_tokens_per_s_per_prefill_node": 52300, "output_tokens_per_s_per_decode_node": 22300,
         "source": "LMSYS blog 2025-05-05, 12 nodes x 8 H100 (prefill and decode measured apart)"}  # fmt: skip


@dataclass
class Options:
    settings: B.Settings
    out: Path | None
    on_head: bool
    head_env: str | None
    tokenizer: str | None
    timeout: float
    argv: list[str] = field(default_factory=lambda: list(sys.argv))


@dataclass
class Client:
    """Where AIPerf runs and what it is pointed at."""

    where: str  # "local" | "head"
    aiperf: str  # the aiperf executable (on this machine or the head node)
    version: str
    url: str
    through: str  # said in the output
    tokenizer: str
    forward: Any = None


def run(config, config_opt, inventory, connection: Connection, options: Options) -> None:
    settings = options.settings
    t = target(config, config_opt, inventory)
    plan = t.plan
    if plan.endpoint is None or plan.model_name is None:
        raise ConfigError("the deployment serves no endpoint with a model name: nothing to benchmark", file=plan.file)
    B.check_context(settings, B.context_from_args(plan))  # before --out is looked at, let alone created
    out = result_dir(options.out, t, settings)
    bin_dir = client.local_env()  # the plot is drawn here even when the client runs on the head node
    with connected(t, connection):
        state = endpoint_state(t)
        if not state.ready:
            raise recipe.BenchError(f"endpoint {plan.endpoint} is not serving: {state.note} (see `launcher status`)")
        scratch = Path(tempfile.mkdtemp(prefix="launcher-bench-"))
        try:
            tokenizer = prepare_tokenizer(t, options, scratch / "tokenizer")
            work = out.with_name(out.name + ".partial")
            shutil.rmtree(work, ignore_errors=True)
            work.mkdir(parents=True)
            if (scratch / "tokenizer").exists():
                shutil.move(scratch / "tokenizer", work / "tokenizer")
                tokenizer = str(work / "tokenizer")
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        try:
            results = measure(t, options, work, bin_dir, tokenizer)
        except BaseException as exc:
            left = abandon(work, out)
            if isinstance(exc, KeyboardInterrupt):
                say(f"interrupted: AIPerf stopped; what was measured is in {left} (no results.json)", to_stderr=True)
                raise Exit(130) from None
            say(f"what was measured is in {left} (no results.json)", to_stderr=True)
            raise
    finish(results, work, out, bin_dir)


def result_dir(given: Path | None, t: Target, settings: B.Settings) -> Path:
    """--out, else bench-results/DEPLOYMENT-WORKLOAD-TIME; never an existing non-empty directory."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    out = given or Path("bench-results") / f"{t.plan.deployment}-{settings.workload}-{stamp}"
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"{out} already exists and is not an empty directory: choose another --out", key="--out")
    if not out.parent.exists() and given is not None:
        try:
            out.parent.mkdir(parents=True)
        except OSError as exc:
            raise ConfigError(f"cannot create {out.parent}: {exc.strerror}", key="--out") from None
    return out


def prepare_tokenizer(t: Target, options: Options, dest: Path) -> str:
    """--tokenizer, or the model's tokenizer files fetched from a worker node (on the head node: its model
    directory there); and ISL + OSL checked against the model's context (exit 2)."""
    if options.tokenizer:
        return options.tokenizer
    if options.on_head:
        model = recipe.model_host_path(t.plan, recipe.first_worker(t))
        if model is None:
            raise recipe.BenchError("cannot tell where the model is on the head node: pass --tokenizer")
        return model
    path, config = recipe.fetch_tokenizer(t, dest)
    if B.context_from_args(t.plan) is None:  # an engine's own context flag, checked before, wins over the model's
        B.check_context(options.settings, recipe.context_from_model(config, f"{t.plan.model_path}/config.json"))
    return str(path)


def abandon(work: Path, out: Path) -> Path:
    left = out.with_name(out.name + ".incomplete")
    shutil.rmtree(left, ignore_errors=True)
    if work.exists():
        work.rename(left)
    return left


def start_client(t: Target, options: Options, bin_dir: Path, tokenizer: str) -> Client:
    plan = t.plan
    head = t.head
    if options.on_head:
        remote_bin = options.head_env or f"{plan.state_dir}/bench-env/aiperf-{client.AIPERF_VERSION}/bin"
        version = client.head_env_check(head, remote_bin)
        return Client("head", f"{remote_bin}/aiperf", version, plan.endpoint, f"on the head node, {head.node.label}",
                      tokenizer)  # fmt: skip
    host, _, port = plan.endpoint.removeprefix("http://").partition(":")
    forward = head.forward(host, int(port or 80))
    via = "directly" if forward.url == plan.endpoint else f"through {head.node.label}'s SSH connection"
    version = subprocess.run(
        [str(bin_dir / "aiperf"), "--version"], capture_output=True, text=True, env=client.env_writing_bytecode()
    ).stdout.strip()
    through = f"on this machine, {forward.url} -> {plan.endpoint} {via}"
    return Client("local", str(bin_dir / "aiperf"), version.splitlines()[-1] if version else "?", forward.url,
                  through, tokenizer, forward)  # fmt: skip


def measure(t: Target, options: Options, work: Path, bin_dir: Path, tokenizer: str) -> dict[str, Any]:
    plan, settings = t.plan, options.settings
    started = datetime.now(UTC).isoformat(timespec="seconds")
    scale = B.scale(plan)
    flush_kind, flush_targets = recipe.flush_endpoints(t) if settings.flush else ("off", ["--no-flush"])
    if settings.flush and flush_kind == "none":
        say(f"KV-cache flush: none in this deployment ({flush_targets[0]}); running without", to_stderr=True)
    summary = recipe.recipe(t, work, options.argv, recipe.node_facts(t))
    runner = start_client(t, options, bin_dir, tokenizer)
    say(f"client: AIPerf {runner.version} {runner.through}", to_stderr=True)
    rows, flushes = [], []
    try:
        for concurrency in settings.concurrency:
            if flush_kind in ("router", "dynamo"):
                flushes.append(recipe.flush(t, flush_kind, flush_targets))
                say(f"c={concurrency}: KV-cache flush: {flushes[-1]}", to_stderr=True)
            rows.append(one_run(t, options, runner, work, concurrency, scale))
    finally:
        if runner.forward is not None:
            runner.forward.close()
    return {
        "format": 1,
        "launcher": __version__,
        "started": started,
        "finished": datetime.now(UTC).isoformat(timespec="seconds"),
        "deployment": plan.deployment,
        "profile": plan.profile,
        "endpoint": plan.endpoint,
        "model": plan.model_name,
        "workload": settings.to_json(),
        "client": {
            "where": runner.where,
            "aiperf": runner.version,
            "url": runner.url,
            "through": runner.through,
            "tokenizer": shown_tokenizer(runner.tokenizer, work, plan),
        },
        "flush": {"kind": flush_kind, "targets": flush_targets, "done": flushes},
        "scale": scale.to_json(),
        "lmsys": LMSYS,
        "results": rows,
        "recipe": summary,
    }


def shown_tokenizer(tokenizer: str, work: Path, plan) -> str:
    if tokenizer == str(work / "tokenizer"):
        return f"tokenizer/ (the files of {plan.model_path}, fetched from a worker node)"
    return tokenizer


def one_run(t: Target, options: Options, runner: Client, work: Path, concurrency: int, scale: B.Scale) -> dict:
    settings = options.settings
    local = work / "aiperf" / f"c{concurrency}"
    say(f"c={concurrency}: {settings.requests_at(concurrency)} requests after {settings.warmup_at(concurrency)}"
        f" warm-up, ISL {settings.isl}, OSL {settings.osl}", to_stderr=True)  # fmt: skip
    if runner.where == "local":
        argv = B.aiperf_argv(runner.aiperf, settings, concurrency, runner.url, t.plan.model_name, runner.tokenizer,
                             str(local))  # fmt: skip
        local.parent.mkdir(parents=True, exist_ok=True)
        outcome = client.run_local(argv, local.parent / f"c{concurrency}.log", options.timeout)
    else:
        remote = f"{t.plan.state_dir}/bench-runs/{work.name}-{int(time.time())}-c{concurrency}"
        argv = B.aiperf_argv(runner.aiperf, settings, concurrency, runner.url, t.plan.model_name, runner.tokenizer,
                             remote)  # fmt: skip
        outcome = client.run_on_head(t.head, argv, remote, local, options.timeout)
        for name in ("pid", "exit-code"):
            (local / name).unlink(missing_ok=True)
        if (local / "aiperf.log").exists():
            (local / "aiperf.log").rename(local.parent / f"c{concurrency}.log")
    (local.parent / f"c{concurrency}.argv").write_text(json.dumps(argv) + "\n")
    export = client.read_export(local)
    row = R.row(concurrency, export, scale)
    row["aiperf_exit_code"] = outcome.code
    row["wall_s"] = round(outcome.seconds, 1)
    say(f"c={concurrency}: {row['requests']} requests, {number(row['output_tokens_per_s'])} output tok/s, TTFT p50"
        f" {number(row['ttft_p50_ms'])} ms, ITL p50 {number(row['itl_p50_ms'])} ms, errors {row['errors']}"
        f" ({outcome.seconds:.0f} s)", to_stderr=True)  # fmt: skip
    return row


def finish(results: dict[str, Any], work: Path, out: Path, bin_dir: Path) -> None:
    """results.json, the table (screen and results.txt), the plot; then DIR.partial becomes DIR."""
    (work / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    per_gpu = bool(results["scale"]["gpus"])
    table = results_table(results["results"], per_gpu)
    console.stdout().print(table)
    lines = [lmsys_line(results)]
    argv = [str(bin_dir / "python"), "-", str(work / "results.json"), str(work / "plot.png")]
    plot = subprocess.run(
        argv, input=remote_program("bench_plot"), capture_output=True, text=True, env=client.env_writing_bytecode()
    )
    if plot.returncode != 0:
        lines.append(f"warning: no plot: {(plot.stderr.strip().splitlines() or ['?'])[-1]}")
    with (work / "results.txt").open("w") as f:
        from rich.console import Console

        Console(file=f, width=200).print(table)
        f.write("\n".join(lines) + "\n")
    work.rename(out)
    for line in lines:
        say(line)
    say(f"results: {out}/results.json, plot: {out}/plot.png, recipe: {out}/recipe/, AIPerf's own: {out}/aiperf/")


def lmsys_line(results: dict[str, Any]) -> str:
    rows = results["results"]
    scale = results["scale"]
    best_in = max((r.get("input_tokens_per_s_per_prefill_node") or 0 for r in rows), default=0)
    best_out = max((r.get("output_tokens_per_s_per_decode_node") or 0 for r in rows), default=0)
    return (
        f"LMSYS comparison (best of the concurrencies): {number(best_in)} input tok/s per prefill node"
        f" ({scale['prefill_nodes']} node(s)), {number(best_out)} output tok/s per decode node"
        f" ({scale['decode_nodes']} node(s)); LMSYS on 96 H100: 52,300 and 22,300"
    )


# -- bench compare -------------------------------------------------------------------------------------


def load_results(path: Path, key: str) -> dict[str, Any]:
    file = path / "results.json" if path.is_dir() else path
    try:
        data = load_json(file)
    except ConfigError as exc:
        why = (f"line {exc.line}: " if exc.line else "") + exc.message
        raise ConfigError(f"{one_line(str(file))}: not a `launcher bench` result ({why})", key=key) from None
    if not isinstance(data, dict) or not isinstance(data.get("results"), list):
        raise ConfigError(f"{file}: not a `launcher bench` result (no results list)", key=key)
    problem = R.row_problem(data["results"])
    if problem:
        raise ConfigError(f"{file}: not a `launcher bench` result: {problem}", key=key)
    return data


def compare(first: Path, second: Path) -> None:
    a, b = load_results(first, "DIR1"), load_results(second, "DIR2")
    console.stdout().print(compare_table(R.compare(a, b), first.name or str(first), second.name or str(second)))
    differences = R.recipe_differences(a, b)
    if not differences:
        say("recipe: the same (deployment file, plan, images, model, workload, client)")
    for key, va, vb in differences:
        say(f"recipe differs: {key}: {json.dumps(va, default=str)} -> {json.dumps(vb, default=str)}")
