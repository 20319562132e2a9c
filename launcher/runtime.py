"""The docker runtime: every action on a node as a shell script built from argv lists.

Commands are data: these functions only build text, so they are unit-tested without a node. One
script per node and action keeps it to one SSH round trip per node.
"""

from __future__ import annotations

import json
import posixpath
import re
import shlex
from dataclasses import dataclass, field
from datetime import UTC, datetime

from launcher import render
from launcher.errors import LauncherError
from launcher.model import LABEL, Plan, Service

q = shlex.quote


@dataclass
class Container:
    """A container as a node reports it, identified by the launcher's labels."""

    node_index: int
    id: str
    name: str
    labels: dict[str, str]
    state: str  # running | exited | created | restarting | dead ...
    exit_code: int
    started_at: str = ""
    finished_at: str = ""
    restarts: int = 0
    extra: dict = field(default_factory=dict)

    @property
    def service(self) -> str:
        return self.labels.get(f"{LABEL}.service", self.name)

    @property
    def role(self) -> str:
        return self.labels.get(f"{LABEL}.role", "?")

    @property
    def group(self) -> str | None:
        return self.labels.get(f"{LABEL}.group")

    @property
    def rank(self) -> int | None:
        raw = self.labels.get(f"{LABEL}.rank")
        return int(raw) if raw is not None and raw.isdigit() else None

    @property
    def spec(self) -> str:
        return self.labels.get(f"{LABEL}.spec", "")

    @property
    def running(self) -> bool:
        return self.state == "running"

    def uptime(self, now: datetime) -> float | None:
        if not self.running:
            return None
        match = re.match(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)", self.started_at)
        if not match:
            return None
        started = datetime.fromisoformat(match.group(1)).replace(tzinfo=UTC)
        return max(0.0, (now - started).total_seconds())


POLL_MARK = "@@launcher-last-line@@"
LIST_MARK = "@@launcher-list@@"  # what follows is a container listing (docker inspect JSON)


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
        """Engine answering (exit 97 if not) and the deployment's containers, in one docker call or two."""
        return f"{{ {self.list_script(plan)} ; }} || exit 97"

    def start_script(self, plan: Plan, services: list[Service], existing: set[str] | None = None) -> tuple[str, str]:
        """(script, stdin) that starts these services on one node, then prints their `docker inspect`.

        Secret env files are written from stdin (`dd` reads exactly their size each), mode 0600, so no
        secret is ever on a command line. A container of the same name is removed first when the node
        reported one (`existing`; None: not known, always try).
        """
        lines = ["set -e"]
        stdin = ""
        for s in services:
            if s.secret_env:
                path = render.secrets_file(plan, s)
                body = render.secrets_body(s.secret_env)
                lines.append(f"install -d -m 0700 {q(posixpath.dirname(path))}")
                lines.append(write_from_stdin(path, body))
                stdin += body
            if existing is None or s.name in existing:
                lines.append(f"docker rm -f {q(s.name)} >/dev/null 2>&1 || true")
            lines.append(render.shell(render.docker_run(plan, s)) + " >/dev/null")
        lines.append(f"echo {q(LIST_MARK)}")
        lines.append("docker inspect " + " ".join(q(s.name) for s in services))
        return "\n".join(lines), stdin

    def remove_script(self, plan: Plan, names: list[str]) -> str:
        if not names:
            return "true"
        return "docker rm -f " + " ".join(q(n) for n in names) + " >/dev/null"

    def remove_all_script(self, plan: Plan) -> str:
        """Remove every container of the deployment on this node, and its secret env files; print the count."""
        label = q(f"label={LABEL}.deployment={plan.deployment}")
        secrets = q(posixpath.join(plan.state_dir, plan.deployment, "secrets"))
        return (
            f"ids=$(docker ps -aq --filter {label}) || exit $?; "
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
        return render.shell(argv) + " 2>&1"

    def poll_script(self, plan: Plan, names: list[str]) -> str:
        """One round trip: the deployment's containers, then the last log line of each named one."""
        script = self.list_script(plan)
        for name in names:
            script += f"; echo {q(POLL_MARK + name)}; {self.logs_script(plan, name, tail=1)} | tail -n 1 | cut -c1-200"
        return script


def write_from_stdin(path: str, body: str, quoted: bool = False) -> str:
    """A line that writes exactly len(body) bytes of stdin to path, mode 0600 (secrets never in argv).

    `quoted`: path is already a shell word (it expands a variable), so it is not quoted again.
    """
    return f"(umask 077; dd bs=1 count={len(body.encode())} status=none of={path if quoted else q(path)})"


def for_plan(plan: Plan):
    if plan.runtime == "process":
        from launcher.process_runtime import Process

        return Process()
    return Docker()


def parse_poll(node_index: int, stdout: str) -> tuple[list[Container], dict[str, str]]:
    head, *rest = stdout.split(POLL_MARK)
    last: dict[str, str] = {}
    for chunk in rest:
        name, _, line = chunk.partition("\n")
        last[name.strip()] = line.strip()
    return parse_list(node_index, head), last


class ListingError(LauncherError):
    """A node's service list could not be read."""


def parse_list(node_index: int, stdout: str) -> list[Container]:
    """`docker inspect` JSON (the process runtime prints the same shape) -> containers."""
    try:
        items = json.loads(stdout or "[]")
    except ValueError as exc:
        # Seen only when something removes a service while it is being listed; the caller reports the
        # node (watch skips it this round) instead of a traceback.
        raise ListingError(f"node {node_index}: unreadable service list ({exc}); try again") from exc
    out = []
    for item in items:
        state = item.get("State", {})
        out.append(
            Container(
                node_index=node_index,
                id=item.get("Id", "")[:12],
                name=item.get("Name", "").lstrip("/"),
                labels=item.get("Config", {}).get("Labels") or {},
                state=state.get("Status", "unknown"),
                exit_code=int(state.get("ExitCode", 0) or 0),
                started_at=state.get("StartedAt", ""),
                finished_at=state.get("FinishedAt", ""),
                restarts=int(item.get("RestartCount", 0) or 0),
            )
        )
    return out
