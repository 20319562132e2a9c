"""paramiko, and one client connection to a host resolved through `~/.ssh/config` (what the launcher used of
fabric's Connection, without fabric and invoke: 0.13 CPU-s of every command that talks to a node).

paramiko's ssh_config module imports invoke only to evaluate `Match exec` lines; invoke in turn imports
asyncio and unittest.mock. paramiko is imported with invoke kept out; where an SSH config file holds such a
line, invoke is loaded then and handed to paramiko (the line runs its command, as OpenSSH would).
"""

from __future__ import annotations

import getpass
import os
import re
import sys
from pathlib import Path
from typing import Any

# The user's file first: its values win over the system's (the first value obtained is used, as in OpenSSH).
SSH_CONFIG_FILES = ("~/.ssh/config", "/etc/ssh/ssh_config")
MATCH_EXEC = re.compile(r"^\s*match\b.*\bexec\b", re.IGNORECASE | re.MULTILINE)
CONFIG_LIMIT = 1 << 20  # bytes of one SSH config file read (a bigger one is read no further)


def _config_texts() -> list[tuple[str, str]]:
    """(name, text) of each SSH config file there is; one over CONFIG_LIMIT is refused (ValueError), never
    read in part (a line cut short could name another host)."""
    texts = []
    for name in SSH_CONFIG_FILES:
        try:
            with open(os.path.expanduser(name), encoding="utf-8", errors="replace") as f:
                text = f.read(CONFIG_LIMIT + 1)
        except OSError:
            continue
        if len(text) > CONFIG_LIMIT:
            raise ValueError(f"{name}: larger than {CONFIG_LIMIT >> 20} MiB")
        texts.append((name, text))
    return texts


def _import_paramiko() -> Any:
    """paramiko, its ssh_config module without invoke (see `host_config` for `Match exec`)."""
    if "paramiko" in sys.modules or "invoke" in sys.modules:
        import paramiko

        return paramiko
    sys.modules["invoke"] = None  # type: ignore[assignment]  # `import invoke` fails: paramiko goes without
    try:
        import paramiko
    finally:
        if sys.modules.get("invoke", 0) is None:
            del sys.modules["invoke"]
    return paramiko


paramiko = _import_paramiko()


def host_config(host: str) -> dict[str, Any]:
    """HOST's entry in the SSH config files, as paramiko reads them (keys lower-case: hostname, user, port,
    identityfile, proxyjump, proxycommand...). A file paramiko cannot parse is named (ValueError). Where a file
    has a `Match exec` line, invoke is loaded first and handed to paramiko, which runs the line's command
    through it (as OpenSSH would run it); paramiko.config looks it up as its module attribute `invoke`."""
    config = paramiko.SSHConfig()
    for name, text in _config_texts():
        if MATCH_EXEC.search(text) and getattr(paramiko.config, "invoke", None) is None:
            import invoke

            paramiko.config.invoke = invoke
        try:
            config.parse(text.splitlines(keepends=True))
        except Exception as exc:  # paramiko's ConfigParseError, or a value it cannot read
            raise ValueError(f"{name}: {exc}") from None
    return dict(config.lookup(host))


class Client:
    """One SSH connection to a host: its address, user, port and keys resolved as OpenSSH would (explicit
    values first, then the host's SSH config entry, then the local user and port 22), host keys checked
    by the policy the caller sets on `client`, the socket (or jump channel) given by the caller."""

    def __init__(self, host: str, user: str | None, port: int | None, key: str | None, ssh_config: dict):
        self.ssh_config = ssh_config
        self.host = ssh_config.get("hostname", host)
        self.user = user or ssh_config.get("user") or getpass.getuser()
        given = port or ssh_config.get("port", 22)
        if not str(given).isdigit() or not 0 < int(given) < 65536:
            raise ValueError(f"Port {given!r} for {host} is not a TCP port")
        self.port = int(given)
        self.keys = [os.path.expanduser(k) for k in ([key] if key else []) + list(ssh_config.get("identityfile", []))]
        self.client = paramiko.SSHClient()
        self.transport: Any = None

    @property
    def jump(self) -> str | None:
        """The entry's ProxyJump, unless it is `none`."""
        jump = self.ssh_config.get("proxyjump")
        return jump if jump and jump.lower() != "none" else None

    @property
    def proxy_command(self) -> str | None:
        """The entry's ProxyCommand (its tokens expanded by paramiko), unless it is `none`."""
        command = self.ssh_config.get("proxycommand")
        return command if command and command.lower() != "none" else None

    def load_host_keys(self, known_hosts: Path) -> None:
        if known_hosts.exists():
            self.client.load_host_keys(str(known_hosts))

    def open(self, sock: Any, timeout: float, connect_timeout: int) -> None:
        """Key exchange, host key check and authentication over `sock` (agent and default keys as OpenSSH)."""
        kwargs: dict[str, Any] = {"key_filename": self.keys} if self.keys else {}
        self.client.connect(
            hostname=self.host,
            port=self.port,
            username=self.user,
            sock=sock,
            timeout=connect_timeout,
            banner_timeout=timeout,
            auth_timeout=timeout,
            **kwargs,
        )
        self.transport = self.client.get_transport()

    @property
    def is_connected(self) -> bool:
        return self.transport is not None and self.transport.is_active()

    def close(self) -> None:
        self.client.close()  # (the transport is kept: closed, it says so, for a thread still looking at it)
