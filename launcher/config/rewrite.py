"""Edit one value of a deployment file in place, keeping its comments and layout: a round trip through
ruamel.yaml (it keeps comments, quotes, flow and block styles), never string surgery on the text.

ruamel.yaml writes every block with one indentation: the one that reproduces the file as read is chosen
(tried on the file unchanged); `null` is written as `null` where the file spells it so. Whatever else
the round trip still changed is counted, so the caller can say so rather than let it pass unseen.
"""

from __future__ import annotations

import io
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from launcher.errors import ConfigError

# (mapping, sequence, offset) indentations tried, the common ones first
INDENTS = ((2, 4, 2), (2, 2, 0), (4, 4, 0), (4, 6, 2), (2, 4, 0))


@dataclass
class Rewrite:
    text: str  # the file with the value set
    old: Any  # the value before (None: the key was absent)
    other_lines: int  # lines the round trip changed besides the edited one (0: byte-for-byte the rest)


def _yaml(indent: tuple[int, int, int], nulls: bool):  # noqa: ANN202 (ruamel's YAML, imported here: start-up time)
    from ruamel.yaml import YAML

    yaml = YAML(typ="rt", pure=True)
    yaml.preserve_quotes = True
    yaml.width = 1 << 20  # never re-wrap a long line
    yaml.indent(mapping=indent[0], sequence=indent[1], offset=indent[2])
    if nulls:
        yaml.representer.add_representer(type(None), lambda r, _: r.represent_scalar("tag:yaml.org,2002:null", "null"))
    return yaml


def _dump(yaml, data: Any) -> str:  # noqa: ANN001
    out = io.StringIO()
    yaml.dump(data, out)
    return out.getvalue()


def _changed_lines(before: str, after: str) -> int:
    import difflib

    diff = difflib.unified_diff(before.splitlines(), after.splitlines(), lineterm="", n=0)
    return sum(1 for line in diff if line[:1] in "+-" and not line.startswith(("+++", "---")))


def _best_yaml(text: str, file: str):  # noqa: ANN202
    """The YAML (and the document read with it) whose dump of the file unchanged is closest to the text."""
    nulls = "null" in text
    best = None
    for indent in INDENTS:
        yaml = _yaml(indent, nulls)
        try:
            data = yaml.load(text)
        except Exception as exc:  # ruamel's errors have no common base worth naming: any is bad input
            raise ConfigError(f"cannot be read for editing: {type(exc).__name__}", file=file) from None
        drift = _changed_lines(text, _dump(yaml, data))
        if best is None or drift < best[0]:
            best = (drift, yaml, data)
        if drift == 0:
            break
    assert best is not None
    return best


def set_group_value(text: str, file: str, group: str, key: str, value: int, after: str = "nodes") -> Rewrite:
    """`groups.GROUP.KEY: value` in the file's text (the key added after `after` when absent)."""
    drift, yaml, data = _best_yaml(text, file)
    groups = data.get("groups") if hasattr(data, "get") else None
    entry = groups.get(group) if hasattr(groups, "get") else None
    if not hasattr(entry, "insert"):
        raise ConfigError(f"no group {group!r} to edit", file=file, key="groups")
    old = entry.get(key)
    if key in entry:
        entry[key] = value
    else:
        keys = list(entry)
        entry.insert(keys.index(after) + 1 if after in keys else len(keys), key, value)
    new = _dump(yaml, data)
    return Rewrite(new, old, max(0, _changed_lines(text, new) - (2 if old is not None else 1)))


def replace_checked(
    path: Path, text: str, check: Callable[[Path], None], write: bool = True, unchanged_since: str | None = None
) -> None:
    """The file replaced at once by `text`: written beside it (so that `.env` and ${CONFIG_DIR} resolve as
    for the file itself) with the mode it had, `check`ed there (it raises to refuse), renamed over it
    (`write=False`: checked only, the file left as it is). A symbolic link stays one: its target is replaced.
    `unchanged_since`: the text the edit was made from; the file is refused if it no longer reads so (an
    editor saved it meanwhile). A file or directory that cannot be written is one line, not a traceback."""
    path = path.resolve()
    try:
        mode = path.stat().st_mode & 0o7777
        handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise ConfigError(f"cannot write beside it: {exc.strerror or exc}", file=str(path)) from None
    try:
        with os.fdopen(handle, "w") as out:
            out.write(text)
        os.chmod(temporary, mode)
        check(Path(temporary))
        if write:
            if unchanged_since is not None and path.read_text() != unchanged_since:
                raise ConfigError("changed while it was being edited: nothing written; run it again", file=str(path))
            os.replace(temporary, path)
    except OSError as exc:
        raise ConfigError(f"cannot be replaced: {exc.strerror or exc}", file=str(path)) from None
    finally:
        Path(temporary).unlink(missing_ok=True)
