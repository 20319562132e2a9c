"""The package's layers, as docs/architecture.md draws them: config -> plan -> runtime | transport -> output
-> operations -> commands -> cli. commands/ holds verbs only, one module per verb the CLI calls, and no verb
imports another (what verbs share is in operations/, which imports no verb). Read from the source (every
import, at any depth, function-level ones included): no import cycle anywhere, and no layer importing one
above it (runtime and transport, side by side, never import each other). remote/ (programs run on nodes)
stands apart: any layer may import it, it imports nothing of the launcher but its own siblings, and at
module level only the standard library, in python 3.8's grammar. Also: no function longer than the screen a
person reads it on."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "launcher"
# Rank of each top-level part: a module may import its own part and parts of a lower rank only.
RANKS = {
    "__init__": 0, "errors": 0,
    "config": 1,
    "plan": 2,
    "runtime": 3, "transport": 3,
    "output": 4,
    "operations": 5,
    "commands": 6,
    "cli": 7, "__main__": 8,
}  # fmt: skip
STANDALONE = "remote"  # programs shipped to nodes: they import nothing of the launcher (the launcher may import them)
IN_IMAGE = {"engine_check"}  # runs with the engine's own python (3.10 or newer), not the host's
MAX_FUNCTION_LINES = 80


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, ast.Module]:
    return {module_name(p): ast.parse(p.read_text(), str(p)) for p in sorted(PACKAGE.rglob("*.py"))}


def imports(name: str, tree: ast.Module, known: set[str]) -> set[str]:
    """The launcher modules `name` imports (a `from package import module` counts as the module)."""
    found: set[str] = set()
    package = name if (PACKAGE.parent / name.replace(".", "/") / "__init__.py").exists() else name.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("launcher")}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(
                    package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else [])
                )
            if not base.startswith("launcher"):
                continue
            for alias in node.names:
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base)
    return {m for m in found if m in known and m != name}


def graph() -> dict[str, set[str]]:
    trees = modules()
    known = set(trees)
    return {name: imports(name, tree, known) for name, tree in trees.items()}


def part(module: str) -> str:
    pieces = module.split(".")
    return pieces[1] if len(pieces) > 1 else "__init__"


def test_the_graph_sees_the_layers() -> None:
    g = graph()
    # A parser that found nothing would let the tests below pass vacuously.
    assert "launcher.plan.build" in g["launcher.operations.context"]
    assert "launcher.transport.fleet" in g["launcher.operations.context"]  # a function-level import counts too
    assert {part(m) for m in g} >= set(RANKS) - {"__init__"} | {STANDALONE}


def test_no_import_cycle() -> None:
    g = graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles: list[list[str]] = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for dep in sorted(g[node]):
            if state.get(dep) == 1:
                cycles.append(path[path.index(dep) :] + [dep] if dep in path else [node, dep])
            elif dep not in state:
                visit(dep, path + [dep])
        state[node] = 2

    for start in sorted(g):
        if start not in state:
            visit(start, [start])
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_no_layer_imports_one_above_it() -> None:
    wrong = []
    for module, deps in graph().items():
        mine = part(module)
        for dep in deps:
            theirs = part(dep)
            if mine == STANDALONE or theirs == STANDALONE:
                if mine == STANDALONE and theirs != STANDALONE:
                    wrong.append(f"{module} -> {dep} (remote programs stand alone)")
            elif theirs != mine and RANKS[theirs] >= RANKS[mine]:
                wrong.append(f"{module} ({mine}) -> {dep} ({theirs})")
    assert not wrong, "imports against the layers:\n" + "\n".join(sorted(wrong))


def test_remote_programs_need_only_the_standard_library_and_python_3_8() -> None:
    """What runs on a node finds no launcher and maybe an old python3 there: at module level it imports
    only the standard library and its siblings (bundled with it: launcher/remote/__init__.py), and it
    parses in python 3.8's grammar (an engine's own packages are imported inside functions, in the image)."""
    wrong = []
    for path in sorted((PACKAGE / STANDALONE).glob("*.py")):
        text = path.read_text()
        for node in ast.parse(text).body:
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and not node.level:
                names.append(node.module or "")
            wrong += [f"{path.name}: imports {n}" for n in names if n.split(".")[0] not in sys.stdlib_module_names]
        if path.stem not in IN_IMAGE:
            try:
                ast.parse(text, str(path), feature_version=(3, 8))
            except SyntaxError as exc:
                wrong.append(f"{path.name}:{exc.lineno}: not python 3.8: {exc.msg}")
    assert not wrong, "remote programs that would not run on a node:\n" + "\n".join(wrong)


def test_the_launcher_may_import_remote_modules_but_not_the_other_way() -> None:
    g = graph()
    assert "launcher.remote.relay_core" in g["launcher.transport.relay"]  # the relay's one core, both ends
    assert "launcher.remote.relay_core" in g["launcher.remote.relay"]  # a relative import counts too
    assert not [m for m in g["launcher.remote.relay"] if part(m) != STANDALONE]


def test_no_function_is_longer_than_a_screen() -> None:
    long = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {node.name}: {lines} lines")
    assert not long, "functions over {MAX_FUNCTION_LINES} lines:\n" + "\n".join(long)


def test_commands_holds_the_verbs_the_cli_calls_and_nothing_else() -> None:
    """One module per verb: every module of commands/ is one the CLI imports as a verb, and every verb the CLI
    imports is there; what verbs share (the deployment, node operations, checks, the lock) is operations/."""
    cli = ast.parse((PACKAGE / "cli.py").read_text())
    called = {
        alias.name
        for node in ast.walk(cli)
        if isinstance(node, ast.ImportFrom) and node.module == "launcher.commands"
        for alias in node.names
    }
    held = {p.stem for p in (PACKAGE / "commands").glob("*.py") if p.stem != "__init__"}
    assert "up" in called and "doctor" in called  # the parser found the verbs
    assert held == called, f"not verbs: {sorted(held - called)}; verbs elsewhere: {sorted(called - held)}"


def test_no_verb_imports_another() -> None:
    """A verb used as a library by another is a library in the wrong layer: what two verbs share moves to
    operations/ (`up` runs doctor's checks from operations.checks, `collect` reads operations.service_status)."""
    wrong = [
        f"{module} -> {dep}"
        for module, deps in graph().items()
        if part(module) == "commands"
        for dep in deps
        if part(dep) == "commands" and dep != "launcher.commands"
    ]
    assert not wrong, "verbs importing verbs:\n" + "\n".join(sorted(wrong))
