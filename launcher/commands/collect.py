"""`launcher collect`: one tarball with what a bug report needs. Every service's logs, the deployment
file and the plan (secrets `***`), versions and image IDs, the runtime's records of each service (`docker
inspect`, or the process runtime's run directory), per node the GPUs (`nvidia-smi -q`), InfiniBand
(`ibstat`, `ibv_devinfo`), the GPU health program's raw answer (gpu-health.json),
`ip addr`, `df`, `free`, kernel and driver, the head node's audit log, and
`status --json`. A node that does not answer is listed in the bundle's index and the rest is still
collected (exit 1). Every text is passed through the plan's redactor (config.redact) before it enters the
tarball.
"""

from __future__ import annotations

import io
import json
import os
import posixpath
import sys
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from launcher import __version__
from launcher.errors import ConfigError, Exit
from launcher.operations import gpu_health, service_status
from launcher.operations.context import Connection, Target, connected, target
from launcher.output import plan_views
from launcher.output.console import say
from launcher.remote import program as remote_program
from launcher.runtime.docker import SINCE
from launcher.runtime.shell import find_python, join, q
from launcher.transport.errors import describe

SECTION = "@@launcher-section@@"
LOG_TIMEOUT = 300.0


def _if_present(command: str, argv: str) -> str:
    return f"if command -v {command} >/dev/null; then {argv} 2>&1; else echo '{command}: not present'; fi"


# (file, command): each runs on every node; a command that is not there says so in its file.
NODE_COMMANDS = [
    ("kernel.txt", "uname -a; cat /proc/version; cat /etc/os-release 2>/dev/null"),
    ("ip-addr.txt", "ip addr 2>&1 || ifconfig -a 2>&1"),
    ("df.txt", "df -h 2>&1"),
    ("free.txt", "free -m 2>&1"),
    ("nvidia-smi-q.txt", _if_present("nvidia-smi", "nvidia-smi -q")),
    ("nvidia-driver.txt", "cat /proc/driver/nvidia/version 2>/dev/null || echo 'no NVIDIA driver loaded'"),
    ("ibstat.txt", _if_present("ibstat", "ibstat")),
    ("ibv_devinfo.txt", _if_present("ibv_devinfo", "ibv_devinfo")),
]  # fmt: skip
VERSIONS_PY = (
    "import importlib.metadata as m\n"
    "for p in ('ai-dynamo', 'ai-dynamo-runtime', 'sglang', 'sglang-router', 'vllm', 'torch'):\n"
    "    try: print(p, m.version(p))\n"
    "    except m.PackageNotFoundError: pass\n"
)


@dataclass
class Bundle:
    """The tarball being written: every file redacted on its way in, and the index of what is there."""

    tar: tarfile.TarFile
    root: str
    redact: Any
    index: dict[str, Any] = field(default_factory=dict)

    def add(self, name: str, text: str) -> None:
        data = self.redact(text).encode()
        info = tarfile.TarInfo(posixpath.join(self.root, name))
        info.size, info.mtime, info.mode = len(data), int(time.time()), 0o644
        self.tar.addfile(info, io.BytesIO(data))
        self.index.setdefault("files", []).append(name)


def run(config, config_opt, inventory, connection: Connection, *, out: str | None, since: str | None) -> None:
    if since is not None and not SINCE.fullmatch(since):
        raise ConfigError(
            "expected a duration (10m, 1h30m), a date or time (2026-11-24T10:00:00Z) or a Unix timestamp,"
            f" got {since!r}",
            key="--since",
        )
    t = target(config, config_opt, inventory)
    if since and t.plan.runtime == "process":
        raise ConfigError("--since needs the docker runtime (process logs carry no timestamps)", key="--since")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    root = f"launcher-collect-{t.plan.deployment}-{stamp}"
    path = bundle_path(out, f"{root}.tar.gz")
    # written under a temporary name, renamed when complete: a failed connect or Ctrl-C leaves nothing
    # truncated under the asked name
    part = path.with_name(f".{path.name}.part")
    try:
        file = open(part, "wb")  # noqa: SIM115 (closed in the finally below)
    except OSError as exc:
        raise ConfigError(f"cannot write {path}: {exc.strerror or exc}", key="--out") from None
    try:
        with file, tarfile.open(fileobj=file, mode="w:gz") as tar, connected(t, connection):
            bundle = Bundle(tar, root, t.plan.redactor())
            missing = collect(t, bundle, since)
            bundle.add("INDEX.json", json.dumps(bundle.index, indent=2) + "\n")
        os.replace(part, path)
    finally:
        part.unlink(missing_ok=True)
    say(f"wrote {path} ({path.stat().st_size // 1024} kB): {len(bundle.index['files'])} files")
    for i, why in sorted(missing.items()):
        say(bundle.redact(f"missing: {t.plan.nodes[i].label}: {why}"), to_stderr=True)
    if missing or bundle.index.get("logs_missing"):
        raise Exit(1)


def bundle_path(out: str | Path | None, name: str) -> Path:
    """--out: a file name, or a directory (existing, or given with a trailing /) to write `name` in."""
    if out is None:
        return Path(name)
    path = Path(out).expanduser()
    if path.is_dir():
        return path / name
    if str(out).endswith("/"):
        raise ConfigError(f"{out}: no such directory (to write the bundle in)", key="--out")
    if not path.parent.is_dir():
        raise ConfigError(f"cannot write {out}: no directory {path.parent}", key="--out")
    return path


def collect(t: Target, bundle: Bundle, since: str | None) -> dict[int, str]:
    """Everything into the bundle; returns the nodes that did not answer (also in the index)."""
    plan = t.plan
    bundle.index.update(
        {
            "deployment": plan.deployment,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "launcher": __version__,
            "command": "launcher " + " ".join(sys.argv[1:]),
            "runtime": plan.runtime,
            "since": since,
        }
    )
    _local_files(t, bundle)
    missing = _nodes(t, bundle)
    _logs(t, bundle, since, missing)
    _head(t, bundle, missing)
    bundle.index["nodes"] = {
        str(n.index): {"name": n.name, "address": n.address, "missing": missing.get(n.index)} for n in plan.nodes
    }
    bundle.index["missing_nodes"] = {str(i): why for i, why in sorted(missing.items())}
    return missing


def _local_files(t: Target, bundle: Bundle) -> None:
    """The deployment file and inventory as they are on disk, the plan (text and JSON), the versions here."""
    for name, source in (("deployment.yaml", t.path), ("inventory.yaml", t.inventory)):
        if source is not None:
            try:
                bundle.add(name, Path(source).read_text(errors="replace"))
            except OSError as exc:
                bundle.index.setdefault("notes", []).append(f"{name}: {exc}")
    bundle.add("plan.json", json.dumps(plan_views.to_json(t.plan), indent=2) + "\n")
    bundle.add("plan.txt", plan_views.to_text(t.plan, verbose=True) + "\n")
    bundle.add("versions-operator.txt", f"launcher {__version__}\npython {sys.version}\n")


def node_script(t: Target) -> str:
    """One script per node: every command of NODE_COMMANDS, the runtime's version and records, each
    under a section mark."""
    plan = t.plan
    sections = list(NODE_COMMANDS)
    if plan.runtime == "docker":
        images = sorted({s.image for s in plan.services if s.image})
        inspect = join(["docker", "image", "inspect", "--format", "{{.Id}} {{.RepoTags}} {{.RepoDigests}}", *images])
        sections += [("docker-version.txt", "docker version 2>&1"), ("images.txt", f"{inspect} 2>&1")]
    else:
        python = f"{plan.python_env}/bin/python3" if plan.python_env else "python3"
        sections += [("versions.txt", f"{q(python)} --version 2>&1; {q(python)} -c {q(VERSIONS_PY)} 2>&1")]
    sections.append(("services.json", t.runtime.list_script(plan)))
    sections.append(("gpu-health.json", gpu_health_section(plan)))
    return "\n".join(f"echo {q(SECTION + ' ' + name)}; {{ {command} ; }} 2>&1" for name, command in sections)


def gpu_health_section(plan) -> str:
    """The gpu_health program's raw answer (bounded by the program and by `head`), read without moving its
    kernel log position (--peek): what `doctor` and `status` judge, as the node printed it."""
    program = q(remote_program("gpu_health"))
    return (
        f"if PY=$({find_python(plan.python_env)}); then {gpu_health.state_args(plan, create=False)}; "
        f'"$PY" -c {program} "$@" --peek | head -c {gpu_health.ANSWER_BYTES}; '
        f"else echo {q(gpu_health.NO_PYTHON)}; fi"
    )


def split_sections(stdout: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for chunk in stdout.split(SECTION + " ")[1:]:
        name, _, text = chunk.partition("\n")
        out[name.strip()] = text
    return out


def _nodes(t: Target, bundle: Bundle) -> dict[int, str]:
    results = t.fleet.run(node_script(t), timeout=120)
    missing: dict[int, str] = {}
    for i, r in sorted(results.items()):
        node = t.plan.nodes[i]
        if isinstance(r, Exception):
            missing[i] = describe(r)
            continue
        for name, text in split_sections(r.stdout).items():
            bundle.add(f"nodes/{i:02d}-{node.name}/{name}", text)
    return missing


def _logs(t: Target, bundle: Bundle, since: str | None, missing: dict[int, str]) -> None:
    """Every planned service's log, all nodes at once (one script per service)."""
    plan = t.plan
    wanted = {i: plan.by_node(i) for i in range(len(plan.nodes)) if i not in missing}

    def logs(host) -> dict[str, str]:
        out = {}
        for s in wanted[host.node.index]:
            try:
                r = host.run(t.runtime.logs_script(plan, s.name, since=since), timeout=LOG_TIMEOUT)
                out[s.service] = r.stdout + r.stderr
            except Exception as exc:
                out[s.service] = f"(no log: {describe(exc)})"
        return out

    failed = []
    for i, result in t.fleet.map(logs, [i for i, ss in wanted.items() if ss]).items():
        node = plan.nodes[i]
        if isinstance(result, Exception):
            failed += [f"{s.service} on node {i}: {describe(result)}" for s in wanted[i]]
            continue
        for service, text in result.items():
            bundle.add(f"logs/{i:02d}-{node.name}/{service}.log", text)
    bundle.index["logs_missing"] = failed


def _head(t: Target, bundle: Bundle, missing: dict[int, str]) -> None:
    """The audit log (head node) and `status --json`."""
    plan = t.plan
    if plan.head.index in missing:
        bundle.index["audit_log"] = f"head node unreachable: {missing[plan.head.index]}"
    else:
        audit = posixpath.join(plan.state_dir, plan.deployment, "audit.log")
        try:
            r = t.head.run(f"cat {q(audit)} 2>&1", timeout=60)
            bundle.add("audit.log", r.stdout)
        except Exception as exc:
            bundle.index["audit_log"] = describe(exc)
    try:
        rows, unreachable, endpoint = service_status.status(t)
        data = service_status.status_json(t, rows, unreachable, endpoint)
        bundle.add("status.json", json.dumps(data, indent=2) + "\n")
    except Exception as exc:  # the bundle is for when things are broken: note it, keep the rest
        bundle.index["status"] = f"status failed: {describe(exc)}"
