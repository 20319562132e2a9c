"""Every module of the package imports alone, with no other module of the package loaded.

A shared pytest process hides import cycles: once an earlier test imported the engines, a module that
would fail on its own imports fine. Here one interpreter (not pytest's) imports the whole package once,
so that the libraries it uses are loaded, then forgets every `launcher` module and forks one child per
module, which imports that module alone: in each child the package's own import order runs from scratch
as in a fresh interpreter, and the libraries (typer, rich, pydantic, paramiko: most of the time of a
fresh start) are not loaded 110 times over. So an import order that breaks `launcher migrate` for a user
breaks this test too; tests/pure/test_cli_fresh.py runs the program itself in fresh interpreters.
"""

from __future__ import annotations

import json
import os
import pkgutil
import socket
import subprocess
import sys
from pathlib import Path

import launcher

REPO = Path(__file__).resolve().parents[2]

MODULES = sorted(
    info.name
    for info in pkgutil.walk_packages(launcher.__path__, prefix="launcher.")
    if info.name != "launcher.__main__"
)

# argv: the modules. Prints one JSON line: {module: the last line of its traceback, or "" if it imported}.
FORKED_IMPORTS = r"""
import importlib, json, os, sys, traceback
modules = sys.argv[1:]
for name in modules:  # load what the package uses, then forget the package itself
    try:
        importlib.import_module(name)
    except Exception:
        pass  # its own child says why
for name in [m for m in sys.modules if m == "launcher" or m.startswith("launcher.")]:
    del sys.modules[name]
results, running = {}, {}
def reap():
    pid, status = os.wait()
    name, reader = running.pop(pid)
    with os.fdopen(reader) as r:
        results[name] = r.read().strip() or ("" if status == 0 else f"exit status {status}")
for name in modules:
    if len(running) >= 4:
        reap()
    reader, writer = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(reader)
        code = 0
        try:
            assert not [m for m in sys.modules if m.startswith("launcher")], "a launcher module was loaded"
            importlib.import_module(name)
        except BaseException:
            os.write(writer, traceback.format_exc().strip().splitlines()[-1].encode())
            code = 1
        os._exit(code)
    os.close(writer)
    running[pid] = (name, reader)
while running:
    reap()
print(json.dumps(results))
"""


def test_the_package_has_modules_to_check() -> None:
    # A walk that found nothing would make the test below pass vacuously.
    assert "launcher.cli" in MODULES and "launcher.plan.flagdrift" in MODULES
    assert len(MODULES) >= 20


def test_every_module_imports_alone() -> None:
    proc = subprocess.run([sys.executable, "-c", FORKED_IMPORTS, *MODULES], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    results = json.loads(proc.stdout.splitlines()[-1])
    assert sorted(results) == MODULES  # every module was tried, in a child of its own
    broken = [f"{module}: {last}" for module, last in results.items() if last]
    assert not broken, "modules that fail to import on their own:\n" + "\n".join(broken)


def test_bytecode_is_kept_where_pythondontwritebytecode_is_set(tmp_path) -> None:
    """CI images and containers set PYTHONDONTWRITEBYTECODE: the launcher keeps its bytecode anyway
    (issue 25: compiling some 300 modules again was half of every start), for its own modules and for
    what it imports after them. A copy of the package, so the checkout's own caches prove nothing."""
    import shutil
    from pathlib import Path

    copy = tmp_path / "launcher"
    shutil.copytree(Path(launcher.__file__).parent, copy, ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / "after_launcher.py").write_text("X = 1\n")
    env = {**__import__("os").environ, "PYTHONDONTWRITEBYTECODE": "1", "PYTHONPATH": str(tmp_path)}
    code = "import launcher.cli, after_launcher; print(launcher.cli.__file__)"
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120
    )
    assert proc.returncode == 0 and proc.stdout.strip() == str(copy / "cli.py"), proc.stderr
    assert list((copy / "__pycache__").glob("cli.*.pyc")), "no bytecode kept for launcher.cli"
    assert list((tmp_path / "__pycache__").glob("after_launcher.*.pyc")), "none for what it imported after"


def test_a_deployment_on_this_machine_alone_never_loads_the_ssh_stack(tmp_path):
    """paramiko costs 0.13 CPU-s of every `launcher` process that loads it (0.27 with invoke, which its
    ssh_config module imports for `Match exec` only): a command whose nodes are all this machine, and a
    refusal, go without (CI runs hundreds of such processes); a command with a node over SSH loads paramiko
    when its fleet is made, without invoke (no SSH config here has a `Match exec`), and still tells a refused
    connection as such."""

    home = tmp_path / "home"  # the user's ~/.ssh/config is not this test's
    (home / ".ssh").mkdir(parents=True)

    def loaded(*argv: str) -> tuple[set[str], str]:
        env = {**os.environ, "HOME": str(home)}
        done = subprocess.run([sys.executable, "-X", "importtime", "-m", "launcher", *argv], capture_output=True,
                              text=True, timeout=120, cwd=REPO, env=env)  # fmt: skip
        lines = done.stderr.splitlines()
        names = {line.split("|")[-1].strip() for line in lines if line.startswith("import time:")}
        said = "\n".join(line for line in lines if not line.startswith("import time:"))
        names = (names - {"invoke"}) | ({"invoke"} if "invoke.context" in names else set())  # tried is not loaded
        return names & {"paramiko", "fabric", "invoke", "prometheus_client"}, said + done.stdout

    assert loaded("plan", "configs/local.yaml")[0] == set()
    assert loaded("up", "configs/nope.yaml")[0] == set()
    # the same deployment with its node at 127.0.0.2, over SSH to a port nothing listens on (9, discard)
    text = (REPO / "configs" / "local.yaml").read_text().replace("${CONFIG_DIR}/..", str(REPO))
    config = tmp_path / "ssh.yaml"
    config.write_text(text.replace("address: 127.0.0.1}", "address: 127.0.0.2, ssh: {port: 9}}"))
    assert "address: 127.0.0.2" in config.read_text()
    modules, said = loaded("exec", "-c", str(config), "--all", "--connect-timeout", "1", "--", "true")
    assert "paramiko" in modules and not modules & {"fabric", "invoke"}, modules
    assert "connection refused: nothing listens on the SSH port" in said
    # A `Match exec` in ~/.ssh/config needs invoke (paramiko runs the command through it): then it is loaded,
    # and the line is honoured. Here it gives the port (the file names none): a socket that is no SSH server
    # (no banner) where the line matches, port 22 (nothing listens there) where it does not.
    config.write_text(text.replace("address: 127.0.0.1}", "address: 127.0.0.2}"))
    with socket.create_server(("127.0.0.2", 0)) as silent:
        for matched in ("true", "false"):
            port = silent.getsockname()[1]
            (home / ".ssh" / "config").write_text(f"Match exec {matched}\n    Port {port}\n")
            modules, said = loaded("exec", "-c", str(config), "--all", "--connect-timeout", "1", "--", "true")
            assert {"paramiko", "invoke"} <= modules, modules
            refused = "connection refused: nothing listens on the SSH port" in said
            assert refused == (matched == "false"), said
