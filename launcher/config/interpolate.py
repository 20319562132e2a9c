"""`${VAR}` and `${VAR:-default}` in every string value of a loaded document.

Interpolation works on parsed values, never on the YAML text, so a value containing quotes or
colons cannot change the document's structure. `$$` writes a literal `$`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from launcher.config.limits import MAX_TEXT
from launcher.config.yamlfile import KeyPath, dotted
from launcher.errors import ConfigError

_TOKEN = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}|\$\{([^}]*)\}?")


class Interpolator:
    def __init__(self, sources: list[Mapping[str, str | None]], file: str, lines: dict[KeyPath, int]):
        self.sources = sources
        self.file = file
        self.lines = lines
        self.used: set[str] = set()
        self.written = 0  # characters variables put into the document, bounded (a value may be used often)

    def lookup(self, name: str) -> str | None:
        for source in self.sources:
            value = source.get(name)
            if value is not None:
                return value
        return None

    def string(self, value: str, path: KeyPath) -> str:
        def replace(match: re.Match[str]) -> str:
            if match.group(0) == "$$":
                return "$"
            name, default = match.group(1), match.group(2)
            if name is None:
                raise ConfigError(
                    f"malformed variable reference {match.group(0)!r}: expected ${{NAME}} or ${{NAME:-default}}",
                    file=self.file,
                    key=dotted(path),
                    line=self.lines.get(path),
                )
            self.used.add(name)
            found = self.lookup(name)
            if found is not None and found != "":
                return self.count(found, name, path)
            if default is not None:
                return default
            if found == "":
                return ""
            raise ConfigError(
                f"${{{name}}} is not set: define it in the environment or in .env beside the file,"
                f" or write ${{{name}:-default}}",
                file=self.file,
                key=dotted(path),
                line=self.lines.get(path),
            )

        return _TOKEN.sub(replace, value)

    def count(self, value: str, name: str, path: KeyPath) -> str:
        self.written += len(value)
        if self.written > MAX_TEXT:
            raise ConfigError(
                f"${{{name}}}: the variables write more than {MAX_TEXT // 2**20} MiB of text into the file"
                " (the launcher's limit)",
                file=self.file,
                key=dotted(path),
                line=self.lines.get(path),
            )
        return value

    def walk(self, data: Any, path: KeyPath = ()) -> Any:
        if isinstance(data, str):
            return self.string(data, path)
        if isinstance(data, dict):
            return {key: self.walk(value, path + (key,)) for key, value in data.items()}
        if isinstance(data, list):
            return [self.walk(value, path + (i,)) for i, value in enumerate(data)]
        return data
