"""Shell text from data: the one quoting rule every script on a node is built with."""

from __future__ import annotations

import shlex

# Every value that reaches a shell goes through one of these two.
q = shlex.quote
join = shlex.join


def find_python(python_env: str | None) -> str:
    """Shell: the path of the node's python3, else python_env's (what runs the relay program, doctor's
    manifest check and the GPU health program)."""
    fallback = f"{python_env}/bin/python3" if python_env else "python3"
    return f"command -v python3 || command -v {q(fallback)}"


def write_from_stdin(path: str, body: str, quoted: bool = False) -> str:
    """A line that writes exactly len(body) bytes of stdin to path, mode 0600 (secrets never in argv).

    `quoted`: path is already a shell word (it expands a variable), so it is not quoted again.
    """
    return f"(umask 077; dd bs=1 count={len(body.encode())} status=none of={path if quoted else q(path)})"
