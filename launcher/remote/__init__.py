"""Programs the launcher ships to nodes and runs there, inside the image or the python_env: standard
library and the engine's own packages only (they cannot import the launcher; the launcher may import
them: transport/relay.py shares relay_core.py with the node's relay).

`program(name)` is the one way the launcher loads one: its text, ready for `python3 -`, `python3 -c` or
`exec`, with the sibling modules it imports (`from . import x`, `from .x import y`) bundled in, so that
it runs on a node where the launcher is not installed. A program that imports no sibling is sent as it
is. Bundled, each sibling's source is a string literal registered as a module (`launcher_remote.x`) in
`sys.modules` before the program itself runs as `__main__`: plain text, so it goes wherever a program
went before (stdin, `-c`, a batch script) and needs no file or zip on the node, and a traceback names
the real file and line."""

from __future__ import annotations

import ast
import functools
from importlib import resources

PACKAGE = "launcher_remote"  # the bundled siblings' package on the node (not `launcher`: that is not there)

# Runs first on the node; python 3.8 and the standard library, like the programs.
BUNDLE_HEAD = f"""# A launcher remote program and the sibling modules it imports, bundled (launcher/remote/__init__.py).
import sys as _sys, types as _types
_launcher_package = _sys.modules.setdefault({PACKAGE!r}, _types.ModuleType({PACKAGE!r}))
_launcher_package.__path__ = []
def _launcher_module(name, text):
    module = _types.ModuleType({PACKAGE!r} + "." + name)
    module.__package__ = {PACKAGE!r}
    _sys.modules[module.__name__] = module
    setattr(_launcher_package, name, module)
    exec(compile(text, "launcher/remote/" + name + ".py", "exec"), module.__dict__)
"""


def source(name: str) -> str:
    return resources.files(__name__).joinpath(f"{name}.py").read_text()


def siblings(name: str) -> list:
    """The sibling modules `name` imports, at any depth, each after those it imports itself."""
    order = []

    def visit(module: str, path: tuple) -> None:
        for sibling in direct_siblings(module):
            if sibling in path:
                raise ImportError(f"launcher/remote: {' -> '.join(path + (sibling,))} is a cycle")
            if sibling not in order:
                visit(sibling, path + (sibling,))
                order.append(sibling)

    visit(name, (name,))
    return order


def direct_siblings(name: str) -> list:
    found = []
    for node in ast.walk(ast.parse(source(name))):
        if isinstance(node, ast.ImportFrom) and node.level:
            if node.level != 1:
                raise ImportError(f"launcher/remote/{name}.py: only `from .x import y` reaches a sibling")
            found += [node.module] if node.module else [alias.name for alias in node.names]
            continue
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
        names += [node.module or ""] if isinstance(node, ast.ImportFrom) else []
        if any(n == "launcher" or n.startswith("launcher.") for n in names):
            raise ImportError(f"launcher/remote/{name}.py imports the launcher, which is not on the nodes")
    return [module for module in dict.fromkeys(found) if module != name]


@functools.cache
def program(name: str) -> str:
    """The text of remote program `name` (e.g. "relay"), with its siblings bundled in when it has any."""
    text = source(name)
    needed = siblings(name)
    if not needed:
        return text
    parts = [BUNDLE_HEAD]
    parts += [f"_launcher_module({sibling!r}, {source(sibling)!r})" for sibling in needed]
    parts += [f"__package__ = {PACKAGE!r}", f"exec(compile({text!r}, 'launcher/remote/{name}.py', 'exec'))"]
    return "\n".join(parts) + "\n"
