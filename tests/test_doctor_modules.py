"""`launcher doctor` runs every engine's argv through that engine's own parser: each engine's module maps
to an engine of launcher/remote/engine_check.py (the real parses are in tests/test_real_parsers.py)."""

from __future__ import annotations

from launcher.commands import doctor
from launcher.plan.engines import ENGINES
from launcher.remote import engine_check


def test_every_engine_module_has_a_parser_check_in_doctor():
    modules = {name: tuple(e.module) for name, e in ENGINES.items() if getattr(e, "module", None)}
    assert set(modules) == {"dynamo-sglang", "dynamo-vllm", "sglang", "mocker"}  # `command` runs anything
    for name, module in modules.items():
        assert module in doctor.MODULES, f"engine {name}: doctor does not check {' '.join(module)}"
        assert doctor.MODULES[module] in engine_check.ENGINES
    assert doctor.MODULES[("python3", "-m", "dynamo.vllm")] == "dynamo-vllm"
