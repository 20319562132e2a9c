"""What a runtime is: scripts (text, built from argv lists) that start, list, stop and show the
services of a plan on one node. Commands are data: nothing here runs anything, so every script is
unit-tested without a node, and each action is one script, one round trip per node.
"""

from __future__ import annotations

import json
import re
from typing import Protocol

from launcher.errors import LauncherError
from launcher.plan.state import HELD_SUFFIX, Container, held_name  # noqa: F401 (the runtimes' names)
from launcher.plan.types import Plan, Service

POLL_MARK = "@@launcher-last-line@@"
LIST_MARK = "@@launcher-list@@"  # what follows is a service listing (docker inspect JSON)
# A check-and-list script exits with this when the container engine (or python_env) does not answer,
# to tell "the engine is down" from "the listing failed".
ENGINE_UNAVAILABLE = 97


class Runtime(Protocol):
    """The scripts one runtime needs; `docker.Docker` and `process.Process` implement them."""

    name: str

    def check_script(self, plan: Plan) -> str: ...

    def list_script(self, plan: Plan) -> str: ...

    def check_and_list_script(self, plan: Plan) -> str: ...

    def start_script(
        self, plan: Plan, services: list[Service], existing: set[str] | None = None
    ) -> tuple[str, str]: ...

    def restart_script(self, plan: Plan, services: list[Service]) -> str:
        """Start existing services again in place, their data kept; then list them."""
        ...

    def remove_script(self, plan: Plan, names: list[str]) -> str: ...

    def term_script(self, plan: Plan, names: list[str]) -> str:
        """SIGTERM to each named service's engine process only (what `docker stop` sends first), leaving
        it to finish and exit on its own: the drain's signal. Prints nothing; a service not running is skipped."""
        ...

    def hold_script(self, plan: Plan, names: list[str]) -> str:
        """Stop each named service and keep it under `held_name` (unless one is held already): what a
        rollback starts again. Prints nothing."""
        ...

    def restore_script(self, plan: Plan, names: list[str]) -> str:
        """Remove what runs under each name, put the held one back in its place and start it as it was;
        then list the deployment (after LIST_MARK)."""
        ...

    def discard_held_script(self, plan: Plan, names: list[str]) -> str:
        """Remove the held services of these names (their replacements proved themselves)."""
        ...

    def remove_all_script(self, plan: Plan, now: bool = False) -> str:
        """Remove every service of the deployment on this node; print how many. `now`: kill at once."""
        ...

    def logs_script(
        self, plan: Plan, name: str, tail: int | None = None, follow: bool = False, since: str | None = None
    ) -> str: ...

    def poll_script(self, plan: Plan, names: list[str]) -> str: ...

    def one_off_script(
        self, plan: Plan, service: Service, argv: list[str], name: str, labels: dict[str, str] | None = None
    ) -> str:
        """argv where `service` would run (its image, mounts, devices, network and env; or python_env),
        with stdin passed through, removed when it ends. `name` identifies it (a leftover of an
        interrupted run under that name is removed first); `labels` mark its container."""
        ...

    def remove_labelled_script(self, plan: Plan, label: str) -> str:
        """Remove the one-offs carrying `label` (KEY=VALUE) on this node; print how many."""
        ...


CONTAINER_NAME = re.compile(r"/?[A-Za-z0-9][A-Za-z0-9_.-]{0,254}")


class ListingError(LauncherError):
    """A node's service list could not be read."""


def parse_poll(node_index: int, stdout: str) -> tuple[list[Container], dict[str, str]]:
    """A poll script's output -> (services, last log line of each named one)."""
    head, *rest = stdout.split(POLL_MARK)
    last: dict[str, str] = {}
    for chunk in rest:
        name, _, line = chunk.partition("\n")
        last[name.strip()] = line.strip()
    return parse_list(node_index, head), last


def parse_after_mark(node_index: int, stdout: str) -> list[Container]:
    """The listing a script printed after LIST_MARK ([] when it printed none)."""
    if LIST_MARK not in stdout:
        return []
    return parse_list(node_index, stdout.split(LIST_MARK, 1)[1])


def parse_list(node_index: int, stdout: str) -> list[Container]:
    """`docker inspect` JSON (the process runtime prints the same shape) -> containers."""
    try:
        items = json.loads(stdout or "[]")
    except ValueError as exc:
        # Seen only when something removes a service while it is being listed; the caller reports the
        # node (watch skips it this round) instead of a traceback.
        raise ListingError(f"node {node_index}: unreadable service list ({exc}); try again") from exc
    if not isinstance(items, list):
        raise ListingError(f"node {node_index}: unreadable service list (not a JSON list)")
    out = []
    for item in items:
        why = odd_entry(item)
        if why is not None:  # the node's answer, read as untrusted: docker never prints this
            raise ListingError(f"node {node_index}: unreadable service list (an entry {why})")
        state = item.get("State") or {}
        out.append(
            Container(
                node_index=node_index,
                id=item.get("Id", "")[:12],
                name=item.get("Name", "").lstrip("/"),
                labels=(item.get("Config") or {}).get("Labels") or {},
                state=state.get("Status", "unknown"),
                exit_code=int(state.get("ExitCode", 0) or 0),
                started_at=state.get("StartedAt", ""),
                finished_at=state.get("FinishedAt", ""),
                restarts=int(item.get("RestartCount", 0) or 0),
                holdable=not (item.get("HostConfig") or {}).get("AutoRemove") and item.get("LauncherCmd") is not False,
            )
        )
    return out


def odd_entry(item: object) -> str | None:
    """Why one listed entry is not of `docker inspect`'s shape (None: it is): the fields read are of the
    types docker gives them, every label text (a label is the node's word: `launcher.replaces` among them)."""
    if not isinstance(item, dict):
        return "is not a JSON object"
    state, config, host = (item.get(k) or {} for k in ("State", "Config", "HostConfig"))
    if not all(isinstance(x, dict) for x in (state, config, host)):
        return "has a State, Config or HostConfig that is not a JSON object"
    texts = [item.get(k, "") for k in ("Id", "Name")]
    texts += [state.get(k, "") for k in ("Status", "StartedAt", "FinishedAt")]
    if not all(isinstance(x, str) for x in texts):
        return "has an Id, Name, Status or time that is not text"
    if texts[1] and not CONTAINER_NAME.fullmatch(texts[1]):  # docker's own rule: printed names never escape
        return "has a Name docker would refuse"
    if not all(type(x) is int or x is None for x in (state.get("ExitCode"), item.get("RestartCount"))):
        return "has an ExitCode or RestartCount that is not a whole number"
    labels = config.get("Labels") or {}
    if not isinstance(labels, dict):
        return "its labels are not a JSON object"
    odd = next((k for k, v in labels.items() if not isinstance(v, str)), None)
    shown = "".join(ch if ch.isprintable() else "?" for ch in (odd or "")[:60])  # never the terminal's
    return None if odd is None else f"label {shown} is not text"
