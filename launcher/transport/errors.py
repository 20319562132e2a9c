"""What can go wrong talking to a node, told apart: each kind needs a different fix."""

from __future__ import annotations

import socket
import sys
from typing import Any

from launcher.errors import LauncherError
from launcher.plan.types import Node


class NodeError(LauncherError):
    """A node could not be reached or lost its connection. `kind` tells the cause apart."""

    def __init__(self, node: Node, kind: str, detail: str):
        self.node = node
        self.kind = kind
        self.detail = detail
        super().__init__(f"{node.label}: {kind}: {detail}")


def classify(exc: BaseException) -> tuple[str, str]:
    """(kind, detail) of a connection failure: what a person must fix differs for each."""
    # paramiko is imported only by the SSH transport (0.2 CPU-s): not loaded, no exception can be its own
    paramiko = sys.modules.get("paramiko")
    if paramiko is not None and (told := _ssh_kind(exc, paramiko)) is not None:
        return told
    if isinstance(exc, socket.gaierror):
        return "name not resolved", str(exc)
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused", "nothing listens on the SSH port (sshd down?)"
    if isinstance(exc, TimeoutError | socket.timeout):
        return "timed out", "no answer within the connect timeout (node down or network cut?)"
    if isinstance(exc, OSError) and exc.errno in (113, 101):  # no route to host, network unreachable
        return "unreachable", f"{exc.strerror or exc} (node off, or no route to it?)"
    if isinstance(exc, EOFError):
        return "connection lost", str(exc) or type(exc).__name__
    return "error", f"{type(exc).__name__}: {exc}"


def _ssh_kind(exc: BaseException, paramiko: Any) -> tuple[str, str] | None:
    """The kinds only paramiko's exceptions tell (None: not one of those)."""
    if isinstance(exc, paramiko.BadHostKeyException):
        return "host key changed", (
            f"the key offered by {exc.hostname} differs from known_hosts (reinstalled node, or a"
            " man in the middle); check, then remove the old entry with ssh-keygen -R"
        )
    if isinstance(exc, paramiko.SSHException) and "not found in known_hosts" in str(exc):
        return "host key unknown", f"{exc}; add it to known_hosts or use --host-key-policy accept-new"
    if isinstance(exc, paramiko.AuthenticationException):
        return "auth refused", f"{exc} (check user, key and ssh-agent)"
    no_valid = paramiko.ssh_exception.NoValidConnectionsError
    if isinstance(exc, no_valid) and exc.errors:
        # paramiko wraps each address's own error: a node that is off (no route) is not "sshd down"
        return classify(next(iter(exc.errors.values())))
    if isinstance(exc, no_valid):
        return "connection refused", "nothing listens on the SSH port (sshd down?)"
    if isinstance(exc, paramiko.SSHException):  # (none of them is an OSError: the checks below do not overlap)
        return "connection lost", str(exc) or type(exc).__name__
    return None


def describe(exc: BaseException) -> str:
    """One line for a per-node failure: `timed out: no answer ...`."""
    if isinstance(exc, NodeError):
        return f"{exc.kind}: {exc.detail}"
    return f"{type(exc).__name__}: {exc}"
