"""This machine as a node (address 127.0.0.1/localhost): commands run directly, no SSH; HTTP goes
straight to loopback."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
from collections.abc import Callable
from typing import Any

from launcher.plan.types import Node
from launcher.transport import http
from launcher.transport.errors import NodeError
from launcher.transport.forward import Forward
from launcher.transport.host import Completed, Options
from launcher.transport.spawn import spawn_session
from launcher.transport.stream import Conn, Running, socket_conn


class LocalHost:
    def __init__(self, node: Node, options: Options):
        self.node = node
        self.options = options

    def connect(self) -> None:
        """Nothing to open: this machine always answers."""

    def prepare(self) -> None:
        """Nothing to prepare."""

    def close(self) -> None:
        """Nothing to close."""

    def alive(self, timeout: float) -> bool:
        return True

    def run(
        self,
        script: str,
        *,
        stdin: str | None = None,
        timeout: float | None = None,
        out: Callable[[str], None] | None = None,
    ) -> Completed:
        if out is not None:
            return self._stream(script, out)
        try:
            proc = subprocess.run(
                ["bash", "-c", script],
                input=stdin if stdin is not None else "",
                capture_output=True,
                text=True,
                timeout=timeout or self.options.command_timeout,
            )
        except subprocess.TimeoutExpired as exc:
            raise NodeError(self.node, "command timed out", f"after {exc.timeout}s") from None
        return Completed(proc.returncode, proc.stdout, proc.stderr)

    def _stream(self, script: str, out: Callable[[str], None]) -> Completed:
        """Output line by line until the script ends (or the caller is interrupted: then it is ended)."""
        proc = spawn_session(
            ["bash", "-c", script],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                out(line)
        finally:
            if proc.poll() is None:
                proc.terminate()
                proc.wait(5)
        return Completed(proc.returncode or 0, "", "")

    def start(self, script: str) -> Running:
        """The script as a process of its own (own session: `kill` ends its whole process group)."""
        proc = spawn_session(
            ["bash", "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
        stdin, stdout, stderr = proc.stdin, proc.stdout, proc.stderr

        def write(data: bytes) -> None:
            stdin.write(data)
            stdin.flush()

        def exit_code(timeout: float | None) -> int | None:
            try:
                return proc.wait(timeout)
            except subprocess.TimeoutExpired:
                return None

        def kill() -> None:
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                    proc.wait(3)
                except (ProcessLookupError, subprocess.TimeoutExpired):
                    try:
                        os.killpg(proc.pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
            try:
                stdin.close()  # the readers end by themselves once the process group is gone
            except OSError:
                pass

        return Running(
            self.node.label,
            write=write,
            close_stdin=stdin.close,
            read_out=lambda: stdout.read1(65536),
            read_err=lambda: stderr.read1(65536),
            exit_code=exit_code,
            kill=kill,
            pid=proc.pid,
        )

    def open_port(self, port: int, address: str | None = None, timeout: float = 10.0) -> Conn:
        conn = socket_conn(address or self.node.address, port, timeout)
        conn.settimeout(None)
        return conn

    def http(
        self,
        method: str,
        url: str,
        body: Any = None,
        timeout: float = 5.0,
        limit: int | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, Any]:
        host, port, path = http.target(url, self.node.address)

        def open_socket() -> socket.socket:
            return socket.create_connection((host, port), timeout=timeout)

        return http.request(open_socket, method, host, port, path, body, timeout, limit, headers)

    def forward(self, host: str, port: int) -> Forward:
        """This machine reaches its own ports directly: the address itself."""
        return Forward(host, port, f"{host}:{port}")
