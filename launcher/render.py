"""Plan -> docker argv (commands are data), and the plan printed for people, machines and shells."""

from __future__ import annotations

import dataclasses
import posixpath
import shlex
from typing import Any

from launcher.model import Plan, Service

REDACTED = "***"


def secrets_file(plan: Plan, service: Service) -> str:
    """Where the node keeps a service's secret env (mode 0600, written by `up`, removed by `down`)."""
    return posixpath.join(plan.state_dir, plan.deployment, "secrets", f"{service.name}.env")


def docker_run(plan: Plan, service: Service) -> list[str]:
    """The whole `docker run` argv for one service. Secret values never appear in it."""
    c = service.container
    argv = ["docker", "run", "-d", "--name", service.name]
    for key, value in plan.labels(service).items():
        argv += ["--label", f"{key}={value}"]
    if c.network:
        argv += ["--network", c.network]
    if c.ipc:
        argv += ["--ipc", c.ipc]
    if c.shm_size:
        argv += ["--shm-size", c.shm_size]
    for name, limit in (c.ulimits or {}).items():
        argv += ["--ulimit", f"{name}={limit}"]
    for cap in c.cap_add or []:
        argv += ["--cap-add", cap]
    for device in c.devices or []:
        argv += ["--device", device]
    if c.privileged:
        argv.append("--privileged")
    if c.gpus and c.gpus != "none":
        # docker parses --gpus as CSV: a device list must be quoted inside the value.
        # A bare number would be a count (`--gpus 7` is GPUs 0-6): one GPU is a device list of one.
        argv += ["--gpus", c.gpus if c.gpus == "all" else f'"device={c.gpus}"']
    for volume in c.volumes or []:
        argv += ["-v", volume]
    if c.workdir:
        argv += ["-w", c.workdir]
    if c.user:
        argv += ["--user", c.user]
    for key, value in service.env.items():
        argv += ["-e", f"{key}={value}"]
    command = list(service.command)
    if service.secret_env:
        # Not --env-file: docker would copy the values into the container's config, where `docker
        # inspect` shows them. The file (0600 on the node) is mounted read-only and sourced at start.
        argv += ["-v", f"{secrets_file(plan, service)}:{SECRETS_IN_CONTAINER}:ro"]
        command = ["sh", "-c", SOURCE_SECRETS, "launcher-secrets", *command]
    argv += list(c.run_options or [])
    argv.append(service.image)
    argv += command
    return argv


SECRETS_IN_CONTAINER = "/run/launcher-secrets.env"
SOURCE_SECRETS = f'set -a; . {SECRETS_IN_CONTAINER}; set +a; exec "$@"'


def secrets_body(secret_env: dict[str, str]) -> str:
    """The env file's text: shell assignments (sourced by sh inside the container or by the process wrapper)."""
    return "".join(f"{k}={shlex.quote(v)}\n" for k, v in sorted(secret_env.items()))


def docker_check_run(plan: Plan, service: Service, command: list[str]) -> list[str]:
    """`docker run --rm -i` of the service's image, mounts and env, with another command (doctor)."""
    # Without the secrets mount: before the first `up` the env file does not exist, and docker would
    # create a root-owned directory in its place, which `up` then cannot write the file into.
    argv = docker_run(plan, dataclasses.replace(service, secret_env={}))
    head = argv[: argv.index(service.image)]
    keep: list[str] = ["docker", "run", "--rm", "-i"]
    i = 2
    while i < len(head):
        if head[i] in ("-d",):
            i += 1
        elif head[i] in ("--name", "--label"):
            i += 2
        else:
            keep.append(head[i])
            i += 1
    return keep + [service.image] + command


def shell(argv: list[str]) -> str:
    return shlex.join(argv)


class Redactor:
    """Replaces every secret value in any text that leaves the launcher."""

    def __init__(self, values: list[str]):
        # Longest first, so a secret that contains another is hidden whole.
        self.values = sorted({v for v in values if v}, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for value in self.values:
            text = text.replace(value, REDACTED)
        return text


def redactor(plan: Plan) -> Redactor:
    return Redactor([v for s in plan.services for v in s.secret_env.values()])


def to_json(plan: Plan) -> dict[str, Any]:
    redact = redactor(plan)
    services = []
    for s in plan.services:
        env = dict(s.env)
        env.update({k: REDACTED for k in s.secret_env})
        services.append(
            {
                "name": s.name,
                "service": s.service,
                "role": s.role,
                "group": s.group,
                "engine": s.engine,
                "node_index": s.node.index,
                "rank": s.rank,
                "image": s.image,
                "command": [redact(a) for a in s.command],
                "docker_run": [redact(a) for a in docker_run(plan, s)],
                "env": {k: redact(v) for k, v in env.items()},
                "secret_env": sorted(s.secret_env),
                "labels": plan.labels(s),
                "ports": s.ports,
                "probe": s.probe.to_json(),
                "timeout": s.timeout,
            }
        )
    return {
        "deployment": plan.deployment,
        "file": plan.file,
        "endpoint": plan.endpoint,
        "model": plan.model_name,
        "nodes": [{"index": n.index, "address": n.address, "name": n.name} for n in plan.nodes],
        "groups": [
            {
                "name": g.name,
                "engine": g.engine,
                "mode": g.mode,
                "nodes": g.node_indices,
                "gpus": g.gpus,
                "expected_instances": g.expected_instances,
            }
            for g in plan.groups
        ],
        "services": services,
        "warnings": [redact(w) for w in plan.warnings],
    }


def to_text(plan: Plan, verbose: bool = False) -> str:
    redact = redactor(plan)
    groups = ", ".join(f"{g.name} x{len(g.node_indices)} ({g.engine}, {g.summary})" for g in plan.groups)
    lines = [
        f"deployment {plan.deployment}: {len(plan.nodes)} nodes, {len(plan.services)} services — {groups}",
    ]
    if plan.endpoint:
        lines.append(f"endpoint {plan.endpoint}" + (f"  model {plan.model_name}" if plan.model_name else ""))
    for node in plan.nodes:
        here = plan.by_node(node.index)
        lines.append("")
        lines.append(f"node {node.index}  {node.name}  {node.address}" + ("" if here else "  (idle)"))
        for s in here:
            who = s.role if s.rank is None else f"{s.group} r{s.rank}"
            lines.append(f"  {who:<14} {redact(shell(s.command))}")
            env = " ".join(f"{k}={shlex.quote(v)}" for k, v in s.env.items())
            secret = " ".join(f"{k}={REDACTED}" for k in s.secret_env)
            lines.append(f"  {'':<14} env: {redact(' '.join(x for x in (env, secret) if x))}")
            if verbose:
                lines.append(f"  {'':<14} {redact(shell(docker_run(plan, s)))}")
    for warning in plan.warnings:
        lines.append(f"warning: {redact(warning)}")
    return "\n".join(lines)


def node_script(plan: Plan, index: int) -> str:
    """A bash script a person could run on one node by hand to start what the plan puts there."""
    node = plan.nodes[index]
    redact = redactor(plan)
    out = [
        "#!/usr/bin/env bash",
        f"# {plan.deployment}: node {node.index} ({node.name} {node.address}), generated by `launcher plan`",
        f"# from {plan.file}. Start order: etcd, nats, frontend, then workers.",
        "set -euo pipefail",
    ]
    here = plan.by_node(index)
    if not here:
        out.append("echo 'nothing runs on this node'")
    for s in here:
        out.append("")
        out.append(f"# {s.role}" + (f" rank {s.rank} of group {s.group}" if s.rank is not None else ""))
        if s.secret_env:
            path = secrets_file(plan, s)
            out.append(f"# secrets come from your environment, never from this file: {', '.join(sorted(s.secret_env))}")
            out.append(f"install -d -m 0700 {shlex.quote(posixpath.dirname(path))}")
            out.append(f"( umask 077; : > {shlex.quote(path)} )")
            for key in sorted(s.secret_env):
                # KEY='value' with single quotes escaped: what `sh` sources in the container.
                quoted = f"""$(printf '%s' "${{{key}:?set {key} first}}" | sed "s/'/'\\\\\\\\''/g")"""
                out.append(f"""printf "%s='%s'\\n" {shlex.quote(key)} "{quoted}" >> {shlex.quote(path)}""")
        out.append(f"docker rm -f {shlex.quote(s.name)} >/dev/null 2>&1 || true")
        out.append(redact(shell(docker_run(plan, s))))
    return "\n".join(out) + "\n"
