"""Engine arguments as users write them (a mapping, a list, or a pasted command string) -> argv."""

from __future__ import annotations

import json
import shlex
from typing import Any

from launcher.config.schema import as_text


def normalize(args: Any) -> list[str]:
    """Turn the file's `args` into argv tokens.

    mapping: `{tp-size: 32, enable-dp-attention: true, cuda-graph-bs: [1, 2]}` ->
    `--tp-size 32 --enable-dp-attention --cuda-graph-bs 1 2`; false/null drop the flag; a nested
    mapping becomes one JSON argument. list: tokens kept as written. string: split like a shell
    (backslash-newlines from pasted commands are fine).
    """
    if isinstance(args, str):
        return shlex.split(args.replace("\\\n", " "))
    if isinstance(args, list):
        return [as_text(v) for v in args]
    argv: list[str] = []
    for key, value in (args or {}).items():
        flag = key if key.startswith("-") else f"--{key}"
        if value is None or value is False:
            continue
        if value is True:
            argv.append(flag)
        elif isinstance(value, list):
            argv.append(flag)
            argv.extend(as_text(v) for v in value)
        elif isinstance(value, dict):
            argv += [flag, json.dumps(value, separators=(",", ":"))]
        else:
            argv += [flag, as_text(value)]
    return argv


def flags(argv: list[str]) -> dict[str, list[str]]:
    """`--flag v1 v2` and `--flag=v` -> {"--flag": [values]} (later occurrences win)."""
    out: dict[str, list[str]] = {}
    current: str | None = None
    for token in argv:
        if token.startswith("--"):
            name, eq, value = token.partition("=")
            out[name] = [value] if eq else []
            current = None if eq else name
        elif current is not None:
            out[current].append(token)
    return out


def value(argv: list[str], *names: str) -> str | None:
    found = flags(argv)
    for name in names:
        if name in found:
            return found[name][0] if found[name] else ""
    return None


def has(argv: list[str], *names: str) -> bool:
    found = flags(argv)
    return any(name in found for name in names)


def without(argv: list[str], *names: str) -> list[str]:
    """argv with the named flags and their values removed."""
    out: list[str] = []
    skipping = False
    for token in argv:
        if token.startswith("--"):
            skipping = token.partition("=")[0] in names
            if not skipping:
                out.append(token)
            if "=" in token:
                skipping = False
        elif not skipping:
            out.append(token)
    return out


def override(argv: list[str], changes: dict[str, Any]) -> list[str]:
    """argv with each flag of `changes` (a mapping as `normalize` takes it) replaced, added at the end,
    or removed (`null`/`false`): how a profile changes a group's args."""
    out = list(argv)
    for key, value in changes.items():
        flag = key if key.startswith("-") else f"--{key}"
        out = without(out, flag) + normalize({flag: value})
    return out
