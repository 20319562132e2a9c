"""The docker runtime: one container per service per node, state in container labels.

Every action is a shell script built from argv lists (`docker_run` is the whole `docker run` argv of a
service); secrets reach a container through a 0600 env file on the node, mounted read-only and sourced
at start, never through the command line or the container's config.
"""

from __future__ import annotations

import dataclasses
import posixpath
import re

from launcher.plan.types import FABRIC_LABEL, LABEL, Plan, Service
from launcher.runtime.base import ENGINE_UNAVAILABLE, LIST_MARK, POLL_MARK, held_name
from launcher.runtime.lock import guard_script
from launcher.runtime.shell import join, q, write_from_stdin

# What `docker logs --since` takes: a Go duration, a date with an optional time and zone, a Unix timestamp.
SINCE = re.compile(
    r"[-+]?((\d+(\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h))+"
    r"|\d{4}-\d{2}-\d{2}([T ]\d{2}(:\d{2}(:\d{2}(\.\d+)?)?)?)?(Z|[+-]\d{2}:\d{2})?"
    r"|\d+(\.\d+)?"
)


class Docker:
    """Containers on each node's Docker engine; state in container labels."""

    name = "docker"

    def check_script(self, plan: Plan) -> str:
        """Is the engine answering? Prints its version."""
        return "docker version --format '{{.Server.Version}}'"

    def list_script(self, plan: Plan) -> str:
        """Every container of the deployment on this node, as `docker inspect` JSON (`[]` when none)."""
        label = q(f"label={LABEL}.deployment={plan.deployment}")
        return (
            f"ids=$(docker ps -aq --filter {label}) || exit $?; "
            'if [ -n "$ids" ]; then docker inspect $ids; else echo "[]"; fi'
        )

    def check_and_list_script(self, plan: Plan) -> str:
        """Engine answering (exit ENGINE_UNAVAILABLE if not) and the deployment's containers, in one call."""
        return f"{{ {self.list_script(plan)} ; }} || exit {ENGINE_UNAVAILABLE}"

    def start_script(self, plan: Plan, services: list[Service], existing: set[str] | None = None) -> tuple[str, str]:
        """(script, stdin) that starts these services on one node, then prints their `docker inspect`.

        Secret env files are written from stdin (`dd` reads exactly their size each), mode 0600, so no
        secret is ever on a command line. A container of the same name is removed first when the node
        reported one (`existing`; None: not known, always try).
        """
        # This node's state_dir (where the secret env files go) checked first, as the head's is: made 0700
        # when missing, refused when another user owns it or may write to it.
        lines = [guard_script(plan.state_dir) if any(s.secret_env for s in services) else "", "set -e"]
        stdin = ""
        for s in services:
            if s.secret_env:
                path = secrets_file(plan, s)
                body = secrets_body(s.secret_env)
                lines.append(f"install -d -m 0700 {q(posixpath.dirname(path))}")
                lines.append(write_from_stdin(path, body))
                stdin += body
            if existing is None or s.name in existing:
                lines.append(f"docker rm -f {q(s.name)} >/dev/null 2>&1 || true")
            lines.append(join(docker_run(plan, s)) + " >/dev/null")
        lines.append(f"echo {q(LIST_MARK)}")
        lines.append("docker inspect " + " ".join(q(s.name) for s in services))
        return "\n".join(lines), stdin

    def restart_script(self, plan: Plan, services: list[Service]) -> str:
        """Start the services' containers again in place (their data kept), then print their state."""
        names = " ".join(q(s.name) for s in services)
        return f"docker restart {names} >/dev/null\necho {q(LIST_MARK)}\ndocker inspect {names}"

    def remove_script(self, plan: Plan, names: list[str]) -> str:
        if not names:
            return "true"
        return "docker rm -f " + " ".join(q(n) for n in names) + " >/dev/null"

    def term_script(self, plan: Plan, names: list[str]) -> str:
        """SIGTERM to each container's main process (the engine: its command runs as PID 1, `exec`ed)."""
        if not names:
            return "true"
        return "docker kill --signal TERM " + " ".join(q(n) for n in names) + " >/dev/null 2>&1 || true"

    def hold_script(self, plan: Plan, names: list[str]) -> str:
        """`docker stop` (its drain came before), then renamed: its config, image, logs and secrets are kept."""
        lines = [guard_script(plan.state_dir, create=False), "set -e"]  # it copies the secrets file
        for n in names:
            name, held, env, held_env = _held_pair(plan, n)
            # its secrets kept too: the new replica's start writes the file under its name, which the
            # held container mounts (a rollback must not start it with the new secrets)
            lines.append(
                f"if ! docker inspect -f . {held} >/dev/null 2>&1 && docker inspect -f . {name} >/dev/null 2>&1;"
                f" then docker stop -t 10 {name} >/dev/null; docker rename {name} {held};"
                f" if [ -f {env} ]; then cp -p {env} {held_env}; fi; fi"
            )
        return "\n".join(lines)

    def restore_script(self, plan: Plan, names: list[str]) -> str:
        lines = [guard_script(plan.state_dir, create=False), "set -e"]  # it moves the secrets file back
        for n in names:
            name, held, env, held_env = _held_pair(plan, n)
            lines.append(
                f"if docker inspect -f . {held} >/dev/null 2>&1; then docker rm -f {name} >/dev/null 2>&1 || true;"
                f" docker rename {held} {name}; if [ -f {held_env} ]; then mv -f {held_env} {env}; fi; fi;"
                f" docker start {name} >/dev/null"
            )
        lines += [f"echo {q(LIST_MARK)}", self.list_script(plan)]
        return "\n".join(lines)

    def discard_held_script(self, plan: Plan, names: list[str]) -> str:
        """The held containers removed, and their secrets (the copies `hold_script` kept)."""
        envs = " ".join(q(secrets_path(plan, held_name(n))) for n in names)
        return "docker rm -f " + " ".join(q(held_name(n)) for n in names) + f" >/dev/null 2>&1 || true; rm -f {envs}"

    def remove_all_script(self, plan: Plan, now: bool = False) -> str:
        """Remove every container of the deployment on this node, and its secret env files; print the count.
        (`docker rm -f` kills at once: `now` changes nothing here; the drain, if any, came before.)"""
        label = q(f"label={LABEL}.deployment={plan.deployment}")
        fabric = q(f"label={FABRIC_LABEL}.deployment={plan.deployment}")  # a killed fabric check's leftovers
        secrets = q(posixpath.join(plan.state_dir, plan.deployment, "secrets"))
        return (
            f"ids=$(docker ps -aq --filter {label} && docker ps -aq --filter {fabric}) || exit $?; "
            f'if [ -n "$ids" ]; then docker rm -f $ids >/dev/null || exit $?; fi; '
            f'rm -rf {secrets}; echo "$ids" | grep -c . || true'
        )

    def logs_script(
        self, plan: Plan, name: str, tail: int | None = None, follow: bool = False, since: str | None = None
    ) -> str:
        argv = ["docker", "logs"]
        if tail is not None:
            argv += ["--tail", str(tail)]
        if since:
            argv += ["--since", since]
        if follow:
            argv.append("-f")
        argv.append(name)
        return join(argv) + " 2>&1"

    def one_off_script(
        self, plan: Plan, service: Service, argv: list[str], name: str, labels: dict[str, str] | None = None
    ) -> str:
        run = docker_check_run(plan, service, argv)
        marks = [a for k, v in (labels or {}).items() for a in ("--label", f"{k}={v}")]
        return f"docker rm -f {q(name)} >/dev/null 2>&1; " + join([*run[:4], "--name", name, *marks, *run[4:]])

    def remove_labelled_script(self, plan: Plan, label: str) -> str:
        """Remove every container carrying `label` (KEY=VALUE) on this node, whatever it runs; print the count."""
        return (
            f"ids=$(docker ps -aq --filter {q('label=' + label)}); "
            'if [ -n "$ids" ]; then docker rm -f $ids >/dev/null 2>&1; fi; echo "$ids" | grep -c . || true'
        )

    def poll_script(self, plan: Plan, names: list[str]) -> str:
        """One round trip: the deployment's containers, then the last log line of each named one."""
        script = self.list_script(plan)
        for name in names:
            script += f"; echo {q(POLL_MARK + name)}; {self.logs_script(plan, name, tail=1)} | tail -n 1 | cut -c1-200"
        return script


def _held_pair(plan: Plan, name: str) -> tuple[str, str, str, str]:
    """A container's name, its held copy's, and their secret env files' paths, each quoted for the shell."""
    held = held_name(name)
    return q(name), q(held), q(secrets_path(plan, name)), q(secrets_path(plan, held))


def secrets_file(plan: Plan, service: Service) -> str:
    """Where the node keeps a service's secret env (mode 0600, written by `up`, removed by `down`)."""
    return secrets_path(plan, service.name)


def secrets_path(plan: Plan, name: str) -> str:
    """The secret env file of the container NAME (a held one's: its copy, kept for a rollback)."""
    return posixpath.join(plan.state_dir, plan.deployment, "secrets", f"{name}.env")


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
    return "".join(f"{k}={q(v)}\n" for k, v in sorted(secret_env.items()))


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
