"""YAML loading that remembers where each key was written, so errors can name a line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from launcher.errors import ConfigError

KeyPath = tuple[str | int, ...]


def _walk(node: yaml.Node, path: KeyPath, lines: dict[KeyPath, int], file: str) -> None:
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key_node, value_node in node.value:
            key = key_node.value
            if key in seen:
                raise ConfigError(
                    "duplicate key (YAML would silently keep only the last one)",
                    file=file,
                    key=dotted(path + (key,)),
                    line=key_node.start_mark.line + 1,
                )
            seen.add(key)
            lines[path + (key,)] = key_node.start_mark.line + 1
            _walk(value_node, path + (key,), lines, file)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            lines[path + (i,)] = item.start_mark.line + 1
            _walk(item, path + (i,), lines, file)


def read_file(path: Path) -> str:
    """A deployment file's text; what keeps it from being read is bad input (exit 2), said in one line."""
    file = str(path)
    try:
        if path.exists() and not path.is_file():
            # A directory, a FIFO or /dev/zero: reading would fail or never end.
            raise ConfigError("not a regular file", file=file)
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError("file not found", file=file) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read: {exc}", file=file) from None


def load_yaml(path: Path) -> tuple[Any, dict[KeyPath, int]]:
    """Return the document and a map from key path to its line number."""
    file = str(path)
    text = read_file(path)
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        problem = exc.problem or exc.context or "invalid YAML"
        raise ConfigError(f"YAML syntax error: {problem}", file=file, line=line) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"YAML error: {exc}", file=file) from None
    lines: dict[KeyPath, int] = {}
    if node is not None:
        _walk(node, (), lines, file)
    return data, lines


def load_yaml_all(path: Path) -> list[tuple[Any, dict[KeyPath, int]]]:
    """Every document of a multi-document file (`---`), each with its map from key path to line."""
    file = str(path)
    text = read_file(path)
    try:
        nodes = list(yaml.compose_all(text, Loader=yaml.SafeLoader))
        docs = list(yaml.safe_load_all(text))
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        problem = exc.problem or exc.context or "invalid YAML"
        raise ConfigError(f"YAML syntax error: {problem}", file=file, line=mark.line + 1 if mark else None) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"YAML error: {exc}", file=file) from None
    out = []
    for node, data in zip(nodes, docs, strict=True):
        lines: dict[KeyPath, int] = {}
        if node is not None:
            _walk(node, (), lines, file)
        out.append((data, lines))
    return out


def dotted(path: KeyPath) -> str:
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def line_of(lines: dict[KeyPath, int], path: KeyPath) -> int | None:
    """The line of the deepest written prefix of path (a missing key points at its parent)."""
    for end in range(len(path), 0, -1):
        if path[:end] in lines:
            return lines[path[:end]]
    return None
