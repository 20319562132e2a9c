"""Read the engine commands out of the seed write-ups in ../shared/seeds (markdown with YAML/bash blocks)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import yaml

SEEDS = Path(__file__).resolve().parent.parent.parent / "shared" / "seeds"


def _walk(node, found: list[list[str]]) -> None:
    if isinstance(node, dict):
        command = node.get("command")
        if isinstance(command, list) and any("sglang.launch_server" in str(c) for c in command):
            argv = [str(c) for c in command] + [str(a) for a in node.get("args") or []]
            found.append(argv[argv.index("sglang.launch_server") + 1 :])
        for value in node.values():
            _walk(value, found)
    elif isinstance(node, list):
        for value in node:
            _walk(value, found)


def lws_commands(name: str) -> list[list[str]]:
    """Every `python3 -m sglang.launch_server` argv in the seed's manifests, in order."""
    text = (SEEDS / name).read_text()
    found: list[list[str]] = []
    for block in re.findall(r"```yaml\n(.*?)```", text, flags=re.S):
        for doc in yaml.safe_load_all(block):
            _walk(doc, found)
    return found


def bash_commands(name: str, module: str) -> list[list[str]]:
    """Every `python3 -m MODULE ...` command in the seed's bash blocks (line continuations joined)."""
    text = (SEEDS / name).read_text()
    out = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        joined = block.replace("\\\n", " ")
        for line in joined.splitlines():
            if f"-m {module} " in line:
                argv = shlex.split(line.split(f"-m {module}", 1)[1])
                out.append(argv)
    return out


def lws_pods(name: str) -> list[dict]:
    """Every container of the seed's manifests that runs MODULE, with its argv (after the module) and env."""
    text = (SEEDS / name).read_text()
    pods: list[dict] = []

    def walk(node) -> None:
        if isinstance(node, dict):
            command = node.get("command")
            if isinstance(command, list) and len(command) > 2 and command[1] == "-m":
                env = {e["name"]: str(e["value"]) for e in node.get("env") or [] if "value" in e}
                pods.append({"module": command[2], "argv": [str(c) for c in command[3:]], "env": env, "spec": node})
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    for block in re.findall(r"```yaml\n(.*?)```", text, flags=re.S):
        for doc in yaml.safe_load_all(block):
            walk(doc)
    return pods
