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
