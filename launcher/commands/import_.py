"""`launcher import`: LeaderWorkerSet manifests -> a deployment file (what was dropped listed at its top),
then the file checked as `plan` checks it: stale engine flags for the declared version are reported,
with the `migrate` line that rewrites them."""

from __future__ import annotations

import re
import shlex
import sys
import tempfile
from pathlib import Path

from packaging.version import InvalidVersion, Version

from launcher.config.load import load
from launcher.config.yamlfile import load_yaml_all
from launcher.errors import ConfigError, Exit, LauncherError, one_line
from launcher.output.console import say
from launcher.plan.build import build
from launcher.plan.kube.importer import Imported, Options, from_manifests, render
from launcher.plan.kube.pods import Doc

SGLANG_VERSION = re.compile(r"^\d+\.\d+\.\d+(\.post\d+)?$")
# The option of `import` that writes each `versions.` key: the plan's "set versions.X" names the key of a
# file, while whoever imports gives the option (versions.sglang_router is --sglang-router, not a key to edit).
VERSION_OPTIONS = {"sglang": "--sglang", "sglang_router": "--sglang-router", "vllm": "--vllm", "dynamo": "--dynamo"}
SET_VERSION = re.compile(r"set versions\.(\w+)(?: \(for example ([^)]+)\))?")


def check_versions(options: Options) -> None:
    """--sglang as SGLang numbers its releases (as `migrate` takes it); the others any PEP 440 version."""
    if options.sglang is not None and not SGLANG_VERSION.match(options.sglang):
        raise ConfigError(f"--sglang expects a version like 0.5.21, got {options.sglang!r}", key="--sglang")
    for flag, value in (("--sglang-router", options.sglang_router), ("--vllm", options.vllm),
                        ("--dynamo", options.dynamo)):  # fmt: skip
        if value is None:
            continue
        try:
            Version(value)
        except InvalidVersion:
            raise ConfigError(f"{flag} expects a version like 0.3.2, got {value!r}", key=flag) from None


def read(paths: list[Path]) -> list[Doc]:
    docs = []
    for path in paths:
        for data, lines in load_yaml_all(path):
            if data is None:
                continue
            if not isinstance(data, dict):
                raise ConfigError("expected a Kubernetes object (a mapping) in every document", file=str(path))
            docs.append(Doc(str(path), data, lines))
        if not any(d.file == str(path) for d in docs):
            raise ConfigError("no Kubernetes object (apiVersion, kind, ...) in it", file=one_line(str(path)))
    return docs


def run(manifests: list[Path], out: Path | None, options: Options, force: bool) -> None:
    check_versions(options)
    imported = from_manifests(read(manifests), options)
    command = "launcher import " + " ".join(shlex.quote(str(m)) for m in manifests)
    text = render(imported, command)
    if out is not None and out.exists() and not force:
        raise ConfigError("exists: pass --force to overwrite it", file=one_line(str(out)), key="-o")
    if out is None:
        with tempfile.TemporaryDirectory() as tmp:
            check(write(Path(tmp) / "imported.yaml", text), imported, shown="the file")
        sys.stdout.write(text)
        return
    check(write(out, text), imported, shown=str(out))


def write(path: Path, text: str) -> Path:
    try:
        path.write_text(text)
    except OSError as exc:
        raise ConfigError(f"cannot write: {exc.strerror}", file=one_line(str(path)), key="-o") from None
    return path


def check(path: Path, imported: Imported, shown: str) -> None:
    """What `plan` says about the written file: the groups, stale flags (with `migrate`), or why it fails."""
    groups = imported.data["groups"]
    summary = ", ".join(
        f"{name} ({g['engine']}, {g['nodes']} node(s)" + (f" x {g['replicas']} replicas)" if g.get("replicas") else ")")
        for name, g in groups.items()
    )
    say(f"imported {len(groups)} group(s) into {shown}: {summary}; {len(imported.notes)} thing(s) not carried"
        " over, listed at its top", to_stderr=True)  # fmt: skip
    try:
        secrets = {name: "checked-without-its-value" for name in imported.data.get("secrets", [])}
        plan = build(load(path, environ=secrets))
    except LauncherError as exc:
        say(f"error: {shown} does not plan yet: {name_options(str(exc).replace(str(path), shown))}", to_stderr=True)
        raise Exit(1) from None
    for warning in plan.warnings:
        say(f"warning: {warning}", to_stderr=True)
    version = (imported.data.get("versions") or {}).get("sglang")
    if plan.findings and version:
        if shown == "the file":  # written to stdout: no file to name yet
            say(f"import again with -o FILE, then `launcher migrate FILE --sglang {version}` rewrites the flags above",
                to_stderr=True)  # fmt: skip
        else:
            say(f"`launcher migrate {shown} --sglang {version}` rewrites the flags above", to_stderr=True)


def name_options(message: str) -> str:
    """ "set versions.sglang_router (for example 0.3.2)" -> "import again with --sglang-router 0.3.2 (it sets
    versions.sglang_router)": the way to fix it from the command that was just run."""

    def option(match: re.Match) -> str:
        key, example = match.group(1), match.group(2)
        if key not in VERSION_OPTIONS:
            return match.group(0)
        value = f" {example}" if example else " VERSION"
        return f"import again with {VERSION_OPTIONS[key]}{value} (it sets versions.{key})"

    return SET_VERSION.sub(option, message)
