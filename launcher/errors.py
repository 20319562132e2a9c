"""Errors the user can act on. Each renders as one line; the CLI maps them to exit codes."""

from __future__ import annotations


def one_line(text: str) -> str:
    """A name as the user typed it, on one line: control characters (a newline in a file name) escaped."""
    return text if text.isprintable() else repr(text)[1:-1]


class LauncherError(Exception):
    """Base for errors that are reported as one line without a traceback."""

    exit_code = 1


class ConfigError(LauncherError):
    """Bad input: names the file, the key path (and line when known) and what was expected."""

    exit_code = 2

    def __init__(self, message: str, *, file: str | None = None, key: str | None = None, line: int | None = None):
        self.message = message
        self.file = file
        self.key = key
        self.line = line
        super().__init__(self.render())

    def render(self) -> str:
        # A command-line mistake has no file: then the option (key) alone says where.
        parts = [one_line(self.file) + (f":{self.line}" if self.line is not None else "")] if self.file else []
        if self.key and not self.message.startswith(self.key):
            parts.append(self.key)
        return ": ".join([*parts, self.message])


class ConfigErrors(LauncherError):
    """Several independent problems found in one pass; each still one line."""

    exit_code = 2

    def __init__(self, errors: list[ConfigError]):
        self.errors = errors
        super().__init__("\n".join(e.render() for e in errors))


class Exit(Exception):
    """Leave with this exit code; whatever needed saying was said (a failed check table, Ctrl-C)."""

    def __init__(self, code: int):
        super().__init__(code)
        self.code = code
