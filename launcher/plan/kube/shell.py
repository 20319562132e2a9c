"""A container's command line as it runs for one rank: kubelet's `$(VAR)` expansion, then, for
`sh -c SCRIPT` / `bash -c SCRIPT`, the script's simple statements (assignments, `$VAR`, `${VAR:-x}`,
`$((arithmetic))`). Anything beyond that (pipes, `&&`, conditionals, command substitution) cannot be
turned into one argv and is refused with a ValueError saying what."""

from __future__ import annotations

import ast
import operator
import re
import shlex
from dataclasses import dataclass, field

SHELLS = ("sh", "bash", "/bin/sh", "/bin/bash", "/usr/bin/sh", "/usr/bin/bash")
KUBE_VAR = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)")
NAME = r"[A-Za-z_][A-Za-z0-9_]*"
SHELL_VAR = re.compile(r"\$\{(" + NAME + r")(?:(:?[-=])([^}]*))?\}|\$(" + NAME + r")")
ARITH = re.compile(r"\$\(\((.*?)\)\)")
ASSIGN = re.compile(r"^(?:export\s+)?(" + NAME + r")=(.*)$", re.S)
OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.FloorDiv: operator.floordiv}


@dataclass
class Evaluated:
    """The engine's argv for one rank, and the script's other commands (which the launcher does not run)."""

    argv: list[str]
    steps: list[str] = field(default_factory=list)
    script: bool = False


def kubelet(text: str, env: dict[str, str]) -> str:
    """`$(NAME)` replaced by the container's variable NAME (left as written when undefined); `$$` is `$`."""

    def one(m: re.Match) -> str:
        if m.group(0) == "$$":
            return "$"
        return env.get(m.group(1), m.group(0))

    return KUBE_VAR.sub(one, text)


def evaluate(command: list[str], args: list[str], env: dict[str, str]) -> Evaluated:
    """What the container runs: command + args after kubelet's expansion, and a shell script read through."""
    argv = [kubelet(str(t), env) for t in [*command, *args]]
    if len(argv) >= 3 and argv[0] in SHELLS and argv[1] in ("-c", "-ec", "-ce", "-xc", "-cx"):
        return run_script(argv[2], env)
    return Evaluated(argv)


def run_script(script: str, env: dict[str, str]) -> Evaluated:
    """A script's statements: assignments update the variables, the last command is the engine."""
    variables = dict(env)
    commands: list[list[str]] = []
    for statement in statements(script):
        assign = ASSIGN.match(statement)
        if assign:
            (value,) = shlex.split(expand(assign.group(2), variables)) or [""]
            variables[assign.group(1)] = value
            continue
        argv = shlex.split(expand(statement, variables))
        if argv and argv[0] == "exec":
            argv = argv[1:]
        if argv:
            commands.append(argv)
    if not commands:
        raise ValueError("the script runs no command")
    return Evaluated(commands[-1], [shlex.join(c) for c in commands[:-1]], script=True)


def statements(script: str) -> list[str]:
    """Split at unquoted newlines and `;`, joining backslash-newlines and dropping comments."""
    out: list[str] = []
    buf: list[str] = []
    quote = None
    i = 0
    while i < len(script):
        c = script[i]
        if quote:
            buf.append(c)
            if c == quote:
                quote = None
            elif c == "\\" and quote == '"' and i + 1 < len(script):
                buf.append(script[i + 1])
                i += 1
        elif c in "'\"":
            quote = c
            buf.append(c)
        elif c == "\\" and script[i + 1 : i + 2] == "\n":
            i += 1
        elif c == "#" and (not buf or buf[-1] in " \t"):
            while i + 1 < len(script) and script[i + 1] != "\n":
                i += 1
        elif c in "\n;":
            out.append("".join(buf).strip())
            buf = []
        elif c in "&|<>`":
            raise ValueError(f"the script uses {c!r} (pipes, redirections, && or background jobs)")
        else:
            buf.append(c)
        i += 1
    if quote:
        raise ValueError("the script has an unclosed quote")
    out.append("".join(buf).strip())
    for s in out:
        if s.split(" ", 1)[0] in ("if", "for", "while", "case", "until", "function"):
            raise ValueError(f"the script has a `{s.split(' ', 1)[0]}` block")
    return [s for s in out if s]


def expand(text: str, variables: dict[str, str]) -> str:
    """Expand `$((...))`, `${VAR}`, `${VAR:-x}`, `$VAR` outside single quotes; values are quoted for shlex."""
    out: list[str] = []
    quote = None
    i = 0
    while i < len(text):
        c = text[i]
        if quote == "'":
            out.append(c)
            quote = None if c == "'" else quote
        elif c == "'" and quote is None:
            quote = "'"
            out.append(c)
        elif c == '"':
            quote = None if quote == '"' else '"'
            out.append(c)
        elif c == "$":
            value, length = _dollar(text[i:], variables)
            out.append(_requote(value, quote))
            i += length
            continue
        else:
            out.append(c)
        i += 1
    return "".join(out)


def _dollar(text: str, variables: dict[str, str]) -> tuple[str, int]:
    m = ARITH.match(text)
    if m:
        return str(arithmetic(m.group(1), variables)), m.end()
    if text.startswith("$("):
        raise ValueError(f"the script uses command substitution ({text[:24]}...)")
    m = SHELL_VAR.match(text)
    if not m:
        return "$", 1
    name = m.group(1) or m.group(4)
    if name in variables and (variables[name] or m.group(2) != ":-"):
        return variables[name], m.end()
    if m.group(2):
        return m.group(3), m.end()
    raise ValueError(f"the script reads ${name}, which the container does not set")


def _requote(value: str, quote: str | None) -> str:
    if quote == '"':
        return value.replace("\\", "\\\\").replace('"', '\\"').replace("$", "\\$")
    return shlex.quote(value) if value else "''"


def arithmetic(expr: str, variables: dict[str, str]) -> int:
    """`$(( ... ))` with + - * / on whole numbers and variables (`$X`, `${X:-0}` or bare names)."""
    text = expand(expr, variables).replace("'", "")

    def value(node: ast.AST) -> int:
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            return node.value
        if isinstance(node, ast.Name):
            raw = variables.get(node.id)
            if raw is None or not raw.lstrip("-").isdigit():
                raise ValueError(f"$(({expr})): {node.id} is not a whole number here")
            return int(raw)
        if isinstance(node, ast.BinOp) and type(node.op) in (*OPS, ast.Div):
            op = OPS.get(type(node.op), operator.floordiv)
            return op(value(node.left), value(node.right))
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            return -value(node.operand)
        raise ValueError(f"$(({expr})) is more arithmetic than the launcher reads")

    try:
        return value(ast.parse(text.strip(), mode="eval").body)
    except SyntaxError:
        raise ValueError(f"$(({expr})) is not arithmetic the launcher reads") from None
