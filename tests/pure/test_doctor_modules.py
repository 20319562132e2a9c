"""`launcher doctor` runs every engine's argv through that engine's own parser: each engine's module maps
to an engine of launcher/remote/engine_check.py (the real parses are in tests/local/test_real_parsers.py)."""

from __future__ import annotations

from launcher.operations import checks as doctor
from launcher.plan.engines import ENGINES
from launcher.remote import engine_check


def test_every_engine_module_has_a_parser_check_in_doctor():
    modules = {name: tuple(e.module) for name, e in ENGINES.items() if getattr(e, "module", None)}
    assert set(modules) == {"dynamo-sglang", "dynamo-vllm", "sglang", "mocker", "vllm"}  # `command` runs anything
    for name, module in modules.items():
        assert module in doctor.MODULES, f"engine {name}: doctor does not check {' '.join(module)}"
        assert doctor.MODULES[module] in engine_check.ENGINES
    assert doctor.MODULES[("python3", "-m", "dynamo.vllm")] == "dynamo-vllm"


def test_vllm_serve_is_checked_from_its_model_on():
    """`vllm serve MODEL ...`: engine_check's vllm parser takes what follows `vllm serve`, the model first."""
    assert doctor.engine_argv(["vllm", "serve", "/m", "--port", "8200"]) == ("vllm", ["/m", "--port", "8200"])
    assert doctor.engine_argv(["python3", "-m", "dynamo.vllm", "--model", "/m"]) == ("dynamo-vllm", ["--model", "/m"])
    assert doctor.engine_argv(["sh", "-c", "true"]) is None


def test_the_verdict_names_the_files_the_parser_read(tmp_path, monkeypatch):
    """`reads`: a file the parser opened (a --config file) is named, so `up` does not keep that verdict
    (runtime/verdicts); the parser's own code, compiled code wherever it is, and /proc are not files of
    the argv's."""
    config = tmp_path / "engine.yaml"
    config.write_text("tp: 8\n")
    compiled = tmp_path / "pycache" / "args.cpython-311.pyc"  # compiled code (PYTHONPYCACHEPREFIX's place)
    compiled.parent.mkdir()
    compiled.write_bytes(b"")

    def loader():
        def check(argv: list[str]) -> list[str]:
            with open(argv[1]) as f, open("/proc/self/status") as g, open(compiled, "rb") as h:
                f.read(), g.read(), h.read()
            import json  # noqa: F401 - code the parser imports is not a read

            return []

        return {}, check

    monkeypatch.setitem(engine_check._LOADERS, "fake", loader)
    monkeypatch.setitem(engine_check._PROGRAM, "fake", "fake")
    result, status = engine_check.check_argv("fake", ["--config", str(config)])
    assert status == 0 and result["ok"] and result["reads"] == [str(config)]
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(engine_check.sys, "path", ["", *engine_check.sys.path])  # as `python3 -` has it
    relative, _ = engine_check.check_argv("fake", ["--config", "engine.yaml"])
    assert relative["reads"] == [str(config)]
    plain, _ = engine_check.check_argv("fake", ["--config", "/proc/self/status"])
    assert plain["reads"] == [] and '"reads": []' in engine_check.json.dumps(plain)
