"""Every module of the package imports alone, in a fresh interpreter.

A shared pytest process hides import cycles: once an earlier test imported the engines, a module that
would fail on its own imports fine. Each module gets its own `python -c "import MODULE"` here (run a
few at a time), so an import order that breaks `launcher migrate` for a user breaks this test too.
"""

from __future__ import annotations

import pkgutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import launcher

MODULES = sorted(
    info.name
    for info in pkgutil.walk_packages(launcher.__path__, prefix="launcher.")
    if info.name != "launcher.__main__"
)


def _import_alone(module: str) -> tuple[str, int, str]:
    proc = subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True, text=True, timeout=120)
    return module, proc.returncode, proc.stderr.strip().splitlines()[-1:] and proc.stderr.strip().splitlines()[-1]


def test_the_package_has_modules_to_check() -> None:
    # A walk that found nothing would make the test below pass vacuously.
    assert "launcher.cli" in MODULES and "launcher.plan.flagdrift" in MODULES
    assert len(MODULES) >= 20


def test_every_module_imports_alone_in_a_fresh_interpreter() -> None:
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(_import_alone, MODULES))
    broken = [f"{module}: {last}" for module, code, last in results if code != 0]
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
