"""`launcher scale GROUP=N [CONFIG]`: set `replicas:` of one group in the deployment file, in place (its
comments and layout kept: `config.rewrite`), then converge exactly as `up` does (it is `up` that runs):
new replicas start on free inventory nodes, the replicas removed are drained first. The file stays the
truth: `up` of it afterwards is `unchanged`.

The edited text is checked as any deployment file is (read, validated, planned: the group must have room
for N replicas) before it replaces the file, atomically; refused, the file is untouched (exit 2).
`--dry-run` says what would change, and touches neither the file nor any node.
"""

from __future__ import annotations

from pathlib import Path

from launcher.config import rewrite
from launcher.config.yamlfile import read_file
from launcher.errors import ConfigError, ConfigErrors
from launcher.operations.context import Target, load_file, target
from launcher.output.console import say
from launcher.plan import drain as plan_drain
from launcher.plan import scale as plan_scale
from launcher.plan.build import build
from launcher.plan.types import Plan, Service


def run(
    request: str,
    config: Path | None,
    config_opt: Path | None,
    inventory: Path | None,
    *,
    dry_run: bool,
    profile: str | None,
) -> tuple[Path, Path | None] | None:
    """The file edited (and checked), and its inventory: what `up` converges next (the CLI runs it); None
    with --dry-run."""
    group, count = plan_scale.parse_request(request)
    t = target(config, config_opt, inventory, profile=profile or "")
    assert t.loaded is not None
    plan_scale.check_group(t.loaded, t.plan, group)
    text = read_file(t.path)  # what is edited; the file must still read so when it is replaced
    edit = rewrite.set_group_value(text, str(t.path), group, "replicas", count)
    if edit.old is not None and (not isinstance(edit.old, int) or isinstance(edit.old, bool)):
        raise ConfigError(
            f"replicas is written as {str(edit.old)[:60]!r}, not a number: `scale` edits a number only",
            file=str(t.path),
            key=f"groups.{group}.replicas",
        )
    before = t.loaded.spec.groups[group].replicas
    planned: list[Plan] = []
    write = not dry_run and before != count  # the same count: the file stays as it is (no `replicas: 1` added)
    check = lambda p: planned.append(_checked(t, p, group, count))  # noqa: E731
    rewrite.replace_checked(t.path, edit.text, check, write=write, unchanged_since=text)
    change = f"{group}: replicas {before} -> {count} in {t.path}"
    if edit.other_lines and write:
        say(f"note: the YAML round trip also rewrote {edit.other_lines} other line(s) of {t.path} (layout only)")
    if dry_run:
        say(f"scale --dry-run: {change} (the file is not written, no node is touched)")
        _say_difference(t.plan, planned[0])
        return None
    say(f"scale: {change}" + ("" if before != count else " (already so): converging as `up` does"))
    return t.path, t.inventory


def _checked(t: Target, temporary: Path, group: str, count: int) -> Plan:
    """The edited text read and planned as any deployment file; its errors name the file, not the temporary.
    Nothing but the group's replicas may differ from the file as read (an anchor or alias that the group
    shares with another would carry the new count there too)."""
    try:
        loaded = load_file(temporary, t.inventory, t.profile)
        plan = build(loaded)
    except ConfigErrors as exc:
        raise ConfigErrors([_renamed(e, t.path, group, count) for e in exc.errors]) from None
    except ConfigError as exc:
        raise _renamed(exc, t.path, group, count) from None
    assert t.loaded is not None
    expected = t.loaded.spec.model_dump()
    expected["groups"][group]["replicas"] = count
    if loaded.spec.model_dump() != expected:
        raise ConfigError(
            f"cannot scale {group} to {count}: the edit would change more than groups.{group}.replicas (a YAML"
            " anchor or alias shares it with another part of the file, or the file changed meanwhile): edit it"
            " by hand",
            file=str(t.path),
            key=f"groups.{group}.replicas",
        )
    return plan


def _renamed(exc: ConfigError, path: Path, group: str, count: int) -> ConfigError:
    file = str(path) if exc.file is None or Path(exc.file).name.endswith(".tmp") else exc.file
    return ConfigError(f"cannot scale {group} to {count}: {exc.message}", file=file, key=exc.key, line=exc.line)


def _say_difference(old: Plan, new: Plan) -> None:
    started, stopped, recreated = plan_scale.difference(old, new)
    for verb, services in (("start", started), ("stop", stopped), ("recreate", recreated)):
        for s in services:
            drained = " (drained first)" if verb == "stop" and plan_drain.drained(s) else ""
            say(f"would {verb}: {_where(s)}{drained}")
    if not (started or stopped or recreated):
        say("would start or stop nothing")


def _where(s: Service) -> str:
    replica = "" if s.replica is None else f" (replica {s.replica})"
    return f"{s.service}{replica} on {s.node.label}"
