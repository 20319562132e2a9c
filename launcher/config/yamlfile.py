"""Every YAML and JSON file the launcher reads (deployment file, inventory, manifests, bench results), read
one way: bounded in size, in nesting and in the values a document expands to (each alias counted as often
as it is used), so that a hostile file is one line and exit 2, never minutes, gigabytes or a traceback.
YAML keeps the line of every key so that errors can name it."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml
from yaml.composer import Composer
from yaml.constructor import SafeConstructor
from yaml.resolver import Resolver

from launcher.config.limits import MAX_DEPTH, MAX_FILE_BYTES, MAX_NUMBER_CHARS, MAX_VALUES
from launcher.errors import ConfigError

KeyPath = tuple[str | int, ...]

try:  # libyaml's parser reads events in C (a 4 MiB scalar in milliseconds); the composer below is Python
    from yaml.cyaml import CParser as _Parser
except ImportError:  # pragma: no cover - PyYAML built without libyaml
    from yaml.parser import Parser
    from yaml.reader import Reader
    from yaml.scanner import Scanner

    class _Parser(Reader, Scanner, Parser):  # type: ignore[no-redef]
        def __init__(self, stream: str) -> None:
            Reader.__init__(self, stream)
            Scanner.__init__(self)
            Parser.__init__(self)


def _line(mark: Any) -> int | None:
    return mark.line + 1 if mark is not None else None


class _Loader(Composer, _Parser, SafeConstructor, Resolver):
    """PyYAML's safe loader whose composer counts: values composed, and lists/mappings open at once."""

    def __init__(self, text: str, file: str) -> None:
        _Parser.__init__(self, text)
        Composer.__init__(self)
        SafeConstructor.__init__(self)
        Resolver.__init__(self)
        self.file = file
        self.composed = 0
        self.depth = 0
        self.anchor_of: dict[int, str] = {}  # id(node) -> its anchor, to name a recursive one

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            return super().compose_node(parent, index)
        event = self.peek_event()
        self.composed += 1
        if self.composed > MAX_VALUES:
            raise too_many_values(self.file, _line(event.start_mark))
        nested = isinstance(event, yaml.CollectionStartEvent)
        if nested and self.depth >= MAX_DEPTH:
            raise too_deep(self.file, _line(event.start_mark))
        self.depth += nested
        try:
            node = super().compose_node(parent, index)
        finally:
            self.depth -= nested
        if event.anchor is not None:
            self.anchor_of[id(node)] = event.anchor
        return node


def _bounded_scalar(kind: str):  # noqa: ANN202 (a PyYAML constructor)
    """PyYAML's constructor for a plain int, float or timestamp, refusing what it would choke on: a long
    one (a traceback past 4,300 digits, minutes for a base-60 number of a million parts) and one whose
    conversion fails (a ValueError or OverflowError traceback)."""
    base = SafeConstructor.yaml_constructors[f"tag:yaml.org,2002:{kind}"]
    noun = "timestamp" if kind == "timestamp" else "number"

    def construct(loader: _Loader, node: yaml.ScalarNode) -> Any:
        if len(node.value) > MAX_NUMBER_CHARS:
            raise ConfigError(
                f"a {noun} of {len(node.value):,} characters: over the launcher's limit of {MAX_NUMBER_CHARS}"
                " characters (quote it if it is text)",
                file=loader.file,
                line=_line(node.start_mark),
            )
        try:
            return base(loader, node)
        except (ValueError, OverflowError) as exc:
            raise ConfigError(f"not a valid {noun}: {exc}", file=loader.file, line=_line(node.start_mark)) from None

    return construct


for _kind in ("int", "float", "timestamp"):
    _Loader.add_constructor(f"tag:yaml.org,2002:{_kind}", _bounded_scalar(_kind))


def too_many_values(file: str, line: int | None) -> ConfigError:
    return ConfigError(
        f"more than {MAX_VALUES:,} values (each alias counted as often as it is used): over the launcher's limit",
        file=file,
        line=line,
    )


def too_deep(file: str, line: int | None) -> ConfigError:
    return ConfigError(f"nested deeper than {MAX_DEPTH} levels: over the launcher's limit", file=file, line=line)


def check_expansion(node: yaml.Node, loader: _Loader) -> None:
    """What the document expands to, aliases followed: at most MAX_VALUES values, MAX_DEPTH levels, no
    alias inside the value it names. Each node is measured once (a billion laughs costs its own size)."""
    measured: dict[int, tuple[int, int]] = {}  # id(node) -> (values, levels)
    open_now: set[int] = set()

    def measure(node: yaml.Node) -> tuple[int, int]:
        # Recursion is as deep as the written nesting (<= MAX_DEPTH): an alias names a node that was
        # measured already, since it comes after it in the document, or one that is open (refused).
        key = id(node)
        if key in measured:
            return measured[key]
        if key in open_now:
            name = loader.anchor_of.get(key, "?")
            raise ConfigError(
                f"the alias *{name} is used inside the value &{name} names (a recursive alias)",
                file=loader.file,
                line=_line(node.start_mark),
            )
        if isinstance(node, yaml.ScalarNode):
            return 1, 0
        open_now.add(key)
        children = node.value if isinstance(node, yaml.SequenceNode) else [n for pair in node.value for n in pair]
        values, levels = 1, 0
        for child in children:
            child_values, child_levels = measure(child)
            values, levels = values + child_values, max(levels, child_levels)
            if values > MAX_VALUES:
                raise too_many_values(loader.file, _line(node.start_mark))
        if levels + 1 > MAX_DEPTH:
            raise too_deep(loader.file, _line(node.start_mark))
        open_now.discard(key)
        measured[key] = (values, levels + 1)
        return measured[key]

    measure(node)


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
    """A file's text, at most MAX_FILE_BYTES; what keeps it from being read is bad input (exit 2), one line."""
    file = str(path)
    try:
        if path.exists() and not path.is_file():
            # A directory, a FIFO or /dev/zero: reading would fail or never end.
            raise ConfigError("not a regular file", file=file)
        with path.open("rb") as handle:
            data = handle.read(MAX_FILE_BYTES + 1)  # a file that grows while read is still bounded
        if len(data) > MAX_FILE_BYTES:
            raise ConfigError(f"larger than {MAX_FILE_BYTES // 2**20} MiB: over the launcher's limit", file=file)
        return data.decode("utf-8")
    except FileNotFoundError:
        raise ConfigError("file not found", file=file) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read: {exc}", file=file) from None


def _nodes(loader: _Loader, single: bool) -> Iterator[yaml.Node | None]:
    if single:
        yield loader.get_single_node()  # None for an empty file; an error for a second document
        return
    while loader.check_node():
        yield loader.get_node()


def _documents(path: Path, single: bool) -> list[tuple[Any, dict[KeyPath, int]]]:
    """Each document of the file with its map from key path to line, every limit checked."""
    file = str(path)
    loader = _Loader(read_file(path), file)
    out = []
    try:
        for node in _nodes(loader, single):
            lines: dict[KeyPath, int] = {}
            data = None
            if node is not None:
                check_expansion(node, loader)
                data = loader.construct_document(node)
                _walk(node, (), lines, file)
            out.append((data, lines))
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        problem = exc.problem or exc.context or "invalid YAML"
        if "maximum nesting depth" in problem:  # libyaml's own bound (1,000), met while it reads ahead
            raise too_deep(file, _line(mark)) from None
        raise ConfigError(f"YAML syntax error: {problem}", file=file, line=_line(mark)) from None
    except yaml.YAMLError as exc:
        # A ReaderError (a NUL or control character) spans two lines: "...\n  in "<unicode string>", position N"
        raise ConfigError(f"YAML error: {' '.join(str(exc).split())}", file=file) from None
    finally:
        loader.dispose()
    return out


def load_yaml(path: Path) -> tuple[Any, dict[KeyPath, int]]:
    """Return the document and a map from key path to its line number."""
    return _documents(path, single=True)[0]


def load_yaml_all(path: Path) -> list[tuple[Any, dict[KeyPath, int]]]:
    """Every document of a multi-document file (`---`), each with its map from key path to line."""
    return _documents(path, single=False)


_JSON_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{}]')


def _json_line_too_deep(text: str) -> int | None:
    """The line where the nesting passes MAX_DEPTH (strings skipped); only read when it does."""
    depth = 0
    for match in _JSON_TOKEN.finditer(text):
        token = match.group()
        if token in "[{":
            depth += 1
            if depth > MAX_DEPTH:
                return text.count("\n", 0, match.start()) + 1
        elif token in "]}":
            depth -= 1
    return None


def _check_json(data: Any, text: str, file: str) -> None:
    """At most MAX_VALUES values (keys included) and MAX_DEPTH levels; walked without recursion."""
    stack = [(data, 0)]
    values = 0
    while stack:
        value, depth = stack.pop()
        values += 1
        if values > MAX_VALUES:
            raise too_many_values(file, None)
        if isinstance(value, dict | list):
            if depth + 1 > MAX_DEPTH:
                raise too_deep(file, _json_line_too_deep(text))
            items = [*value, *value.values()] if isinstance(value, dict) else value
            stack.extend((item, depth + 1) for item in items)


def load_json(path: Path) -> Any:
    """A JSON file's value, within the same limits as YAML (its size bounds what parsing it costs)."""
    file = str(path)
    text = read_file(path)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"JSON syntax error: {exc.msg}", file=file, line=exc.lineno) from None
    except RecursionError:  # the C parser gives up near 1,000 levels
        raise too_deep(file, _json_line_too_deep(text)) from None
    except ValueError as exc:  # an integer past Python's 4,300-digit limit
        raise ConfigError(f"not a number Python reads: {exc}", file=file) from None
    _check_json(data, text, file)
    return data


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
