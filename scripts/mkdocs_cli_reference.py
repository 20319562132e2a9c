"""mkdocs hook: the command reference (docs/reference.md) rendered from the typer app at build time.

docs/reference.md holds only an introduction and the marker below; every build walks `launcher.cli.app` (the
same click command `launcher --help` prints) and writes one section per command: its usage line, its help,
its arguments and options with their types and defaults. Nothing generated is committed, so the page cannot
drift from the command line. `render()` is also what tests/pure/test_docs.py checks against the app.
"""

from __future__ import annotations

import html
import inspect
from collections.abc import Iterator
from enum import Enum

MARKER = "<!-- launcher-command-reference -->"


def commands() -> Iterator[tuple[tuple[str, ...], object, object]]:
    """(path, click command, its context) for `launcher` and every command under it, in the app's order;
    hidden ones left out, as `--help` leaves them out."""
    import typer.main

    from launcher.cli import app

    def walk(command, path: tuple[str, ...], parent) -> Iterator[tuple[tuple[str, ...], object, object]]:
        ctx = command.context_class(command, info_name=path[-1] if path else "launcher", parent=parent)
        yield path, command, ctx
        for name, sub in (getattr(command, "commands", None) or {}).items():
            if not getattr(sub, "hidden", False):
                yield from walk(sub, (*path, name), ctx)

    yield from walk(typer.main.get_command(app), (), None)


def cell(text: object) -> str:
    """A table cell: one line, pipes escaped, angle brackets shown as text (not read as HTML)."""
    one = " ".join(str(text).split())
    return one.replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")


def code(text: str) -> str:
    """Code in a table cell: Python-Markdown keeps the backslash of `\\|` inside backticks, so HTML."""
    return "<code>" + html.escape(text, quote=False).replace("|", "&#124;") + "</code>"


def type_of(param, ctx) -> str:
    """The type as `--help` shows it (`<path>`, `<int range> [x>=1]`), `flag` for an on/off option."""
    if getattr(param, "is_flag", False):
        return "flag"
    shown = param.display_type_rich(ctx=ctx) or ""
    bounds = param._get_number_range_help_str()
    return f"{shown} [{bounds}]" if bounds else shown


def default_of(param) -> str:
    value = getattr(param, "default", None)
    if isinstance(value, Enum):
        value = value.value
    if value is None or value is False or value == [] or type(value).__name__ == "Sentinel":
        return ""
    if getattr(param, "is_flag", False) and getattr(param, "secondary_opts", None):
        return param.opts[0] if value else param.secondary_opts[0]
    return f"`{value}`" if value is not True else "yes"


def section(path: tuple[str, ...], command, ctx) -> str:
    name = " ".join(("launcher", *path))
    usage = " ".join([name, *command.collect_usage_pieces(ctx)])
    lines = [f"## `{name}`", "", f"```\n{usage}\n```", "", inspect.cleandoc(command.help or ""), ""]
    subs = {n: c for n, c in (getattr(command, "commands", None) or {}).items() if not getattr(c, "hidden", False)}
    if subs:
        lines += ["| command | what it does |", "| --- | --- |"]
        lines += [f"| [`{name} {n}`](#{'-'.join(('launcher', *path, n))}) | {cell(c.get_short_help_str(200))} |"
                  for n, c in subs.items()]  # fmt: skip
        lines.append("")
    params = [p for p in command.get_params(ctx) if not getattr(p, "hidden", False)]
    arguments = [p for p in params if p.param_type_name == "argument"]
    options = [p for p in params if p.param_type_name == "option"]
    if arguments:
        lines += ["| argument | what |", "| --- | --- |"]
        lines += [f"| {code(p.metavar or p.name.upper())} | {cell(getattr(p, 'help', '') or '')} |" for p in arguments]
        lines.append("")
    if options:
        lines += ["| option | type | default | what |", "| --- | --- | --- | --- |"]
        for p in options:
            names = ", ".join(f"`{o}`" for o in (*p.opts, *p.secondary_opts))
            lines.append(f"| {names} | {cell(type_of(p, ctx))} | {default_of(p)} | {cell(p.help or '')} |")
        lines.append("")
    return "\n".join(lines)


def render() -> str:
    return "\n".join(section(path, command, ctx) for path, command, ctx in commands())


def on_page_markdown(markdown: str, page, config, files) -> str:
    """mkdocs' hook: the marker on the reference page becomes the sections."""
    return markdown.replace(MARKER, render()) if MARKER in markdown else markdown
