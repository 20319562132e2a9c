"""Doctor's checks, which `up` runs first too: every node's (`preflight`), then each role's exact argv
through its engine's own parser inside the image on one node, and the router's pinned version in its image."""

from __future__ import annotations

import json

from launcher.errors import Exit
from launcher.operations import preflight
from launcher.operations.context import Target
from launcher.operations.preflight import Check, Findings
from launcher.output import console
from launcher.output.progress import Progress
from launcher.output.tables import checks_table
from launcher.plan.types import Plan, Service
from launcher.remote import program as remote_program
from launcher.runtime import verdicts
from launcher.runtime.docker import docker_check_run
from launcher.runtime.shell import join, q
from launcher.runtime.verdicts import KEPT_MARK
from launcher.transport.errors import describe


def before_up(t: Target, progress: Progress) -> None:
    """`up`'s preflight: nothing starts unless every check passes."""
    progress.log("doctor: checking every node and the engine flags")
    bad = failed(check(t, with_args=True, stop_early=True, kept_verdicts=True).checks)
    if bad:
        checks_table(t.plan, bad, as_json=False, console=console.stderr())
        console.say("nothing was started; fix the above, or `launcher up --skip-doctor`", to_stderr=True)
        raise Exit(1)


def check(t: Target, with_args: bool, stop_early: bool = False, kept_verdicts: bool = False) -> Findings:
    """Node checks, then (with_args) the engines' parsers; stop_early skips the parsers once a node failed;
    kept_verdicts (`up`) replays a parser's passing verdict for the same image and argv (runtime/verdicts)."""
    found = preflight.run(t)
    reachable = {c.node for c in found.checks if c.name == "ssh" and c.status == "ok"}
    if stop_early and failed(found.checks):
        return found
    if with_args and reachable:
        return Findings(found.checks + check_args(t, kept_verdicts), found.running)
    return found


# -- the engines' own argument parsers, inside the image on one node ---------------------------

MODULES = {
    ("python3", "-m", "dynamo.sglang"): "dynamo-sglang",
    ("python3", "-m", "dynamo.vllm"): "dynamo-vllm",
    ("python3", "-m", "dynamo.mocker"): "dynamo-mocker",
    ("python3", "-m", "dynamo.frontend"): "dynamo-frontend",
    ("python3", "-m", "sglang.launch_server"): "sglang",
    ("vllm", "serve"): "vllm",  # engine_check's vllm parses what follows `vllm serve` (the model first)
}


def engine_argv(command: list[str]) -> tuple[str, list[str]] | None:
    """(engine_check's engine, the argv its parser takes) for a service's command, or None."""
    for prefix, engine in MODULES.items():
        if tuple(command[: len(prefix)]) == prefix:
            return engine, command[len(prefix) :]
    return None


def check_args(t: Target, kept_verdicts: bool = False) -> list[Check]:
    """Run each distinct role's exact argv through its engine's parser, in the image, starting nothing
    (kept_verdicts: a passing verdict for the same script, checker and engine code is replayed)."""
    plan, fleet = t.plan, t.fleet
    checker = remote_program("engine_check")
    seen: dict[tuple[str, str], tuple[Service, list[str]]] = {}
    for s in plan.services:
        found = engine_argv(s.command)
        if found and (found[0], s.role) not in seen:
            seen[(found[0], s.role)] = (s, found[1])
    checks = [check_router(t, s) for s in plan.services if s.role == "router" and s.command[:2] == ["sh", "-c"]]
    for (engine, role), (s, argv) in seen.items():
        script = in_image(plan, s, ["python3", "-", "--engine", engine, "--", *argv])
        identity = verdict_identity(plan, s) if kept_verdicts else None
        if identity:
            script = verdicts.kept_or_checked(plan.state_dir, identity, script, checker)
        try:
            r = fleet.host(s.node.index).run(script, stdin=checker, timeout=300)
        except Exception as exc:
            checks.append(Check(s.node.index, f"args:{role}", "fail", describe(exc), "check the node"))
            continue
        checks.append(_verdict(s.node.index, f"args:{role}", engine, r.stdout, r.stderr))
    return checks


def verdict_identity(plan: Plan, s: Service) -> str | None:
    """What names the engine's installed code where S's check runs (runtime/verdicts), or None: a process
    runtime without python_env runs whatever python3 the PATH finds, which nothing here can name."""
    if plan.runtime == "docker":
        return verdicts.image_identity(s.image)
    return verdicts.env_identity(plan.python_env) if plan.python_env else None


def _verdict(node: int, name: str, engine: str, stdout: str, stderr: str) -> Check:
    """engine_check.py's JSON line -> a check."""
    verdict = _last_json(stdout)
    if verdict is None:
        detail = f"the {engine} parser did not run: {(stderr or stdout).strip()[-300:]}"
        return Check(node, name, "fail", detail, "is the engine installed in the image?")
    version = verdict.get("version", "")
    replayed = stdout.lstrip().startswith(KEPT_MARK + "\n")
    kept = " (kept from an earlier check: the same argv on the same engine install)" if replayed else ""
    if not verdict.get("ok"):
        detail = f"{engine} {version} rejects: " + "; ".join(verdict.get("errors") or []) + kept
        fix = "fix the flag" + (
            " (launcher migrate CONFIG --sglang VERSION for renamed ones)" if "sglang" in engine else ""
        )
        return Check(node, name, "fail", detail, fix)
    warn = "; ".join(verdict.get("warnings") or [])
    detail = f"{engine} {version} accepts the argv{kept}" + (f" ({warn})" if warn else "")
    return Check(node, name, "warn" if warn else "ok", detail)


def in_image(plan: Plan, s: Service, argv: list[str]) -> str:
    """A script running argv where the service would run: a throwaway container of its image, or python_env."""
    if plan.runtime == "docker":
        return join(docker_check_run(plan, s, argv))
    env = dict(s.env)
    if plan.python_env:
        env["PATH"] = f"{plan.python_env}/bin:" + env.get("PATH", "/usr/local/bin:/usr/bin:/bin")
    return "env " + " ".join(f"{k}={q(v)}" for k, v in env.items()) + " " + join(argv)


def check_router(t: Target, s: Service) -> Check:
    """The router's version pin, checked in its image before anything starts: it starts last, after the
    engines' model load, which is far too late to learn that the image holds another sglang-router."""
    pinned = s.command[3]
    try:
        r = t.fleet.host(s.node.index).run(in_image(t.plan, s, [*s.command[:4], "--help"]), timeout=120)
    except Exception as exc:
        return Check(s.node.index, "router", "fail", describe(exc), "check the node")
    if r.exit_code == 0 and "--pd-disaggregation" in r.stdout:
        return Check(s.node.index, "router", "ok", f"sglang-router {pinned} in the image")
    why = (r.stderr.strip().splitlines() or r.stdout.strip().splitlines() or [f"exit {r.exit_code}"])[-1]
    return Check(
        s.node.index,
        "router",
        "fail",
        why.removeprefix("launcher: ")[:300],
        f"install sglang-router=={pinned} in the router's image (services.router.image), or change the pin",
    )


def _last_json(text: str) -> dict | None:
    for line in reversed(text.strip().splitlines()):
        if line.startswith("{"):
            try:
                return json.loads(line)
            except ValueError:
                return None
    return None


def failed(checks: list[Check]) -> list[Check]:
    return [c for c in checks if c.status == "fail"]
