"""Engine argvs checked by the engines' real argument parsers (SGLang 0.5.21, ai-dynamo 1.6.1), CPU only.

`scripts/parser-env` builds (once; cached under .cache/parser-env/) a venv holding SGLang and Dynamo's
parsers, and `launcher/remote/engine_check.py` parses an argv with them without starting anything.

Other tests can import the helpers:

    from tests.local.test_real_parsers import check_args
    result = check_args("dynamo-sglang", argv)   # argv without `python3 -m dynamo.sglang`
    assert result["ok"], result["errors"]

`check_args` builds the env on first use (about two minutes from scratch) and keeps one checker process
per interpreter alive for the session, because importing dynamo.sglang's parser takes 20-30 s.
The dynamo-mocker and dynamo-frontend parsers run under this interpreter (the project venv has
ai-dynamo 1.6.1); sglang and dynamo-sglang under the parser env.
"""

from __future__ import annotations

import atexit
import functools
import json
import os
import shlex
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
PARSER_ENV = REPO / "scripts" / "parser-env"
CHECKER = REPO / "launcher" / "remote" / "engine_check.py"
DEFAULT_SGLANG = "0.5.21"
ENV_BUILD_TIMEOUT = 1800  # seconds; a cold build takes about two minutes here

pytestmark = pytest.mark.slow


@functools.cache
def parser_env_python(sglang: str = DEFAULT_SGLANG) -> Path:
    """The python of the parser env for this SGLang release, building the env if needed (once a session)."""

    done = subprocess.run(
        [sys.executable, str(PARSER_ENV), "--sglang", sglang],
        stdout=subprocess.PIPE,
        text=True,
        timeout=ENV_BUILD_TIMEOUT,
        check=True,
    )
    return Path(done.stdout.strip().splitlines()[-1])


class _Checker:
    """One `check_engine_args.py --batch` process, fed a JSON request per line."""

    def __init__(self, python: Path):
        self._log = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 - lives as long as the process
        self._proc = subprocess.Popen(
            [str(python), str(CHECKER), "--batch"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
            bufsize=1,
        )
        self._lock = threading.Lock()

    def check(self, engine: str, argv: list[str], env: dict[str, str] | None) -> dict[str, Any]:
        request = json.dumps({"engine": engine, "argv": [str(a) for a in argv], "env": env or {}})
        with self._lock:
            assert self._proc.stdin is not None and self._proc.stdout is not None
            self._proc.stdin.write(request + "\n")
            self._proc.stdin.flush()
            line = self._proc.stdout.readline()
        if not line:
            self._log.seek(0)
            raise RuntimeError(f"checker process ended; its stderr ends with:\n{self._log.read()[-4000:]}")
        return json.loads(line)

    def close(self) -> None:
        if self._proc.poll() is None:
            self._proc.stdin.close()  # type: ignore[union-attr]
            try:
                self._proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._proc.kill()
        self._log.close()


_checkers: dict[Path, _Checker] = {}
_checkers_lock = threading.Lock()


@atexit.register
def _close_checkers() -> None:
    for checker in _checkers.values():
        checker.close()


def check_args(
    engine: str, argv: list[str], *, sglang: str = DEFAULT_SGLANG, env: dict[str, str] | None = None
) -> dict[str, Any]:
    """Parse `argv` with the real parser of `engine`; returns the checker's JSON verdict.

    engine: "sglang" | "dynamo-sglang" (parser env for `sglang`), "dynamo-mocker" | "dynamo-frontend"
    (this interpreter). The verdict has "ok", "engine", "version", "errors", "warnings", "notes".
    `env` is set in the checker process before the engine is imported, and stays set there.
    """

    python = Path(sys.executable) if engine in ("dynamo-mocker", "dynamo-frontend") else parser_env_python(sglang)
    with _checkers_lock:
        checker = _checkers.get(python)
        if checker is None:
            checker = _checkers[python] = _Checker(python)
    return checker.check(engine, argv, env)


@pytest.fixture(scope="session")
def parser_env() -> Path:
    """Build the SGLang 0.5.21 + ai-dynamo 1.6.1 parser env (CI builds it here; never skipped)."""

    return parser_env_python(DEFAULT_SGLANG)


# --- seed 004: the DeepSeek-R1 wide-EP recipe from the Dynamo docs (written for an older SGLang) -----

SEED_004_PREFILL = shlex.split("""
  --model-path /model/ --served-model-name deepseek-ai/DeepSeek-R1 --skip-tokenizer-init
  --disaggregation-mode prefill --disaggregation-transfer-backend nixl --disaggregation-bootstrap-port 30001
  --dist-init-addr 10.0.0.1:29500 --nnodes 4 --node-rank 0 --tp-size 32 --dp-size 32 --enable-dp-attention
  --decode-log-interval 1 --enable-deepep-moe --page-size 1 --trust-remote-code --moe-dense-tp-size 1
  --enable-dp-lm-head --disable-radix-cache --watchdog-timeout 1000000 --enable-two-batch-overlap
  --deepep-mode normal --mem-fraction-static 0.85 --deepep-config /configs/deepep.json
  --ep-num-redundant-experts 32 --ep-dispatch-algorithm dynamic --eplb-algorithm deepseek
""")

SEED_004_DECODE = shlex.split("""
  --model-path /model/ --served-model-name deepseek-ai/DeepSeek-R1 --skip-tokenizer-init
  --disaggregation-mode decode --disaggregation-transfer-backend nixl --disaggregation-bootstrap-port 30001
  --dist-init-addr 10.0.0.2:29500 --nnodes 9 --node-rank 0 --tp-size 72 --dp-size 72 --enable-dp-attention
  --decode-log-interval 1 --enable-deepep-moe --page-size 1 --trust-remote-code --moe-dense-tp-size 1
  --enable-dp-lm-head --disable-radix-cache --watchdog-timeout 1000000 --enable-two-batch-overlap
  --deepep-mode low_latency --mem-fraction-static 0.835 --ep-num-redundant-experts 32 --cuda-graph-bs 128
""")


def fix_for_sglang_0_5_21(argv: list[str]) -> list[str]:
    """The documented renames: --enable-deepep-moe -> --moe-a2a-backend deepep, --cuda-graph-bs -> -decode."""

    fixed: list[str] = []
    for token in argv:
        if token == "--enable-deepep-moe":
            fixed += ["--moe-a2a-backend", "deepep"]
        elif token == "--cuda-graph-bs":
            fixed.append("--cuda-graph-bs-decode")
        else:
            fixed.append(token)
    return fixed


def _one_line(result: dict[str, Any]) -> str:
    return json.dumps({k: result.get(k) for k in ("ok", "errors", "warnings", "notes")}, indent=1)


def test_seed_004_prefill_is_rejected(parser_env: Path) -> None:
    result = check_args("dynamo-sglang", SEED_004_PREFILL)
    assert result["ok"] is False, _one_line(result)
    assert result["version"] == "1.6.1"
    assert result["versions"]["sglang"] == "0.5.21"
    assert any("unrecognized arguments: --enable-deepep-moe" in e for e in result["errors"]), _one_line(result)


def test_seed_004_decode_is_rejected_for_both_old_flags(parser_env: Path) -> None:
    result = check_args("dynamo-sglang", SEED_004_DECODE)
    assert result["ok"] is False, _one_line(result)
    errors = "\n".join(result["errors"])
    # argparse stops at the first error; the checker drops the named option and parses again to find the rest.
    assert "ambiguous option: --cuda-graph-bs could match --cuda-graph-bs-decode, --cuda-graph-bs-prefill" in errors
    assert "unrecognized arguments: --enable-deepep-moe" in errors


@pytest.mark.parametrize("engine", ["dynamo-sglang", "sglang"])
@pytest.mark.parametrize("argv", [SEED_004_PREFILL, SEED_004_DECODE], ids=["prefill", "decode"])
def test_seed_004_with_the_renames_parses(parser_env: Path, engine: str, argv: list[str]) -> None:
    result = check_args(engine, fix_for_sglang_0_5_21(argv))
    assert result["ok"] is True, _one_line(result)
    # --enable-dp-attention is still a plain flag in 0.5.21 (deprecated for --attn-dp-size from 0.5.22).
    assert result["warnings"] == [], _one_line(result)


def test_sglang_deprecated_flag_is_a_warning(parser_env: Path) -> None:
    result = check_args("sglang", ["--model-path", "/model/", "--disable-cuda-graph"])
    assert result["ok"] is True, _one_line(result)
    assert any("'--disable-cuda-graph' is deprecated" in w for w in result["warnings"]), _one_line(result)


def test_abbreviated_option_parses_with_a_warning(parser_env: Path) -> None:
    # allow_abbrev is on: a unique prefix is accepted silently by SGLang; the checker says so.
    result = check_args("dynamo-sglang", ["--model-path", "/model/", "--watchdog", "1000000"])
    assert result["ok"] is True, _one_line(result)
    assert any("--watchdog was taken as --watchdog-timeout" in w for w in result["warnings"]), _one_line(result)


def test_sglang_invalid_choice_is_rejected(parser_env: Path) -> None:
    result = check_args("dynamo-sglang", ["--model-path", "/model/", "--moe-a2a-backend", "deepep-moe"])
    assert result["ok"] is False
    assert any("argument --moe-a2a-backend: invalid choice: 'deepep-moe'" in e for e in result["errors"]), _one_line(
        result
    )


def test_dynamo_sglang_own_flags_parse(parser_env: Path) -> None:
    argv = ["--model-path", "/model/", "--namespace", "ds", "--discovery-backend", "etcd", "--request-plane", "tcp"]
    argv += ["--endpoint", "dyn://ds.prefill.generate", "--disaggregation-mode", "prefill"]
    result = check_args("dynamo-sglang", argv)
    assert result["ok"] is True, _one_line(result)


def test_mocker_argv_parses_and_bogus_flag_is_rejected() -> None:
    argv = ["--model-path", "/x", "--model-name", "tiny", "--disaggregation-mode", "prefill"]
    result = check_args("dynamo-mocker", [*argv, "--bootstrap-ports", "30001"])
    assert result["ok"] is True, _one_line(result)
    assert result["version"] == "1.6.1"

    result = check_args("dynamo-mocker", [*argv, "--bogus-flag", "1"])
    assert result["ok"] is False
    assert any("unrecognized arguments: --bogus-flag 1" in e for e in result["errors"]), _one_line(result)

    # Dynamo's own checks after argparse count too.
    result = check_args("dynamo-mocker", [*argv, "--bootstrap-ports", "30001,30002"])
    assert result["ok"] is False
    assert any("--bootstrap-ports must have exactly --num-workers (1) ports" in e for e in result["errors"])


def test_frontend_argv_parses_and_bogus_flag_is_rejected() -> None:
    result = check_args("dynamo-frontend", ["--http-port", "8000", "--http-host", "0.0.0.0"])
    assert result["ok"] is True, _one_line(result)

    result = check_args("dynamo-frontend", ["--http-port", "8000", "--bogus"])
    assert result["ok"] is False
    assert any("--bogus" in e for e in result["errors"]), _one_line(result)


def test_single_shot_cli_prints_json_and_sets_exit_status() -> None:
    good = subprocess.run(
        [sys.executable, str(CHECKER), "--engine", "dynamo-frontend", "--", "--http-port", "8000"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert good.returncode == 0, good.stderr[-2000:]
    verdict = json.loads(good.stdout)
    assert verdict["ok"] is True and verdict["engine"] == "dynamo-frontend" and verdict["errors"] == []

    bad = subprocess.run(
        [sys.executable, str(CHECKER), "--engine", "dynamo-frontend", "--", "--router-mode", "nope"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert bad.returncode == 1
    verdict = json.loads(bad.stdout)
    assert verdict["ok"] is False
    assert any("argument --router-mode: invalid choice: 'nope'" in e for e in verdict["errors"])


# -- the launcher's own rendered plans --------------------------------------------------------


def _plan_services(config_name: str, inventory: str | None = None) -> list[dict[str, Any]]:
    from launcher.config.load import load as load_config
    from launcher.output import plan_views
    from launcher.plan.build import build as build_plan

    repo = Path(__file__).resolve().parents[2]
    inv = repo / inventory if inventory else None
    environ = {"TESTBED_IMAGE": "testbed:test"} if config_name.startswith("testbed") else {}
    loaded = load_config(repo / "configs" / config_name, inv, environ=environ)
    return plan_views.to_json(build_plan(loaded))["services"]


@pytest.mark.parametrize("config_name", ["dsr1-104gpu.yaml", "testbed-dsr1.yaml"])
@pytest.mark.parametrize("role", ["prefill", "decode"])
def test_dsr1_104gpu_argv_parse_under_the_pinned_dynamo_sglang(parser_env: Path, role: str, config_name: str) -> None:
    """Every rank of the 104-GPU plan, exactly as rendered, parses under Dynamo 1.6.1 + SGLang 0.5.21; and so
    do those of its testbed shape (the same groups, args, ports and leaders on 13 testbed nodes, which start
    with --no-args: the testbed's image has no SGLang, so only here are its argv parsed)."""
    inv = "tests/data/inventory-32.yaml" if config_name.startswith("testbed") else None
    ranks = [s for s in _plan_services(config_name, inv) if s["role"] == role]
    assert len(ranks) == {"prefill": 4, "decode": 9}[role]
    for service in (ranks[0], ranks[-1]):  # leader and a follower differ only in --node-rank
        argv = service["command"]
        assert argv[:3] == ["python3", "-m", "dynamo.sglang"]
        result = check_args("dynamo-sglang", argv[3:])
        assert result["ok"], _one_line(result)
        assert not result["warnings"], result["warnings"]


MOCKER_AND_FRONTEND = {  # config -> (mocker ranks, frontends) its plan must hold: all of them are parsed
    "testbed-104.yaml": (13, 1),
    "testbed-small.yaml": (4, 1),
    "local.yaml": (2, 1),
    "dsr1-104gpu.yaml": (0, 1),
    "vllm-wideep-16gpu.yaml": (0, 1),
}


@pytest.mark.parametrize("config_name", sorted(MOCKER_AND_FRONTEND))
def test_mocker_and_frontend_argv_of_shipped_configs_parse(config_name: str) -> None:
    inv = "tests/data/inventory-32.yaml" if config_name.startswith("testbed") else None
    engines = {"python3 -m dynamo.mocker": "dynamo-mocker", "python3 -m dynamo.frontend": "dynamo-frontend"}
    parsed = {"dynamo-mocker": 0, "dynamo-frontend": 0}
    for service in _plan_services(config_name, inv):
        engine = engines.get(" ".join(service["command"][:3]))
        if engine is None:
            assert not any("dynamo.mocker" in a or "dynamo.frontend" in a for a in service["command"]), service
            continue
        result = check_args(engine, service["command"][3:])
        assert result["ok"], (service["name"], _one_line(result))
        assert result["engine"] == engine and result["version"] == "1.6.1", _one_line(result)
        parsed[engine] += 1
    assert (parsed["dynamo-mocker"], parsed["dynamo-frontend"]) == MOCKER_AND_FRONTEND[config_name]


# -- flag drift: the real parser agrees with the offline table and the migration ----------------


def test_seed_000_rejected_then_migrated_then_parses(parser_env: Path) -> None:
    from launcher.plan import flagdrift
    from tests.seeds import lws_commands

    commands = lws_commands("000_6e7791af198eea82.txt")
    assert len(commands) >= 2  # prefill and decode leaders (and workers)
    # LeaderWorkerSet fills these in on Kubernetes; the launcher computes them per rank.
    k8s = {"$(LWS_GROUP_SIZE)": "2", "$(LWS_WORKER_INDEX)": "0", "$(LWS_LEADER_ADDRESS)": "10.0.0.1"}
    for argv in commands[:2]:
        for old, new in k8s.items():
            argv = [a.replace(old, new) for a in argv]
        before = check_args("sglang", argv)
        assert not before["ok"], "the seed's own flags must fail on SGLang 0.5.21"
        after = check_args("sglang", flagdrift.migrate_argv(argv, "0.5.21"))
        assert after["ok"], _one_line(after)


def test_seed_004_rejected_then_migrated_then_parses(parser_env: Path) -> None:
    from launcher.plan import flagdrift
    from tests.seeds import bash_commands

    commands = bash_commands("004_70099621d036eea2.txt", "dynamo.sglang")
    assert len(commands) == 2  # prefill and decode
    for argv in commands:
        argv = [
            a.replace("${HEAD_PREFILL_NODE_IP}", "10.0.0.1").replace("${HEAD_DECODE_NODE_IP}", "10.0.0.2") for a in argv
        ]
        assert not check_args("dynamo-sglang", argv)["ok"]
        after = check_args("dynamo-sglang", flagdrift.migrate_argv(argv, "0.5.21"))
        assert after["ok"], _one_line(after)


def test_seed_002_config_parses_under_sglang_0_5_21(parser_env: Path) -> None:
    services = _plan_services("sglang-tp16-2node.yaml")
    assert len(services) == 2  # both ranks
    for service in services:
        assert service["command"][:3] == ["python3", "-m", "sglang.launch_server"]
        result = check_args("sglang", service["command"][3:])
        assert result["ok"], _one_line(result)
        assert not result["warnings"], result["warnings"]


@pytest.mark.parametrize("role", ["prefill", "decode"])
def test_seed_000_001_config_parses_under_sglang_0_5_21(parser_env: Path, role: str) -> None:
    ranks = [s for s in _plan_services("sglang-1p1d-32gpu.yaml") if s["role"] == role]
    assert len(ranks) == 2
    for service in ranks:
        assert service["command"][:3] == ["python3", "-m", "sglang.launch_server"]
        result = check_args("sglang", service["command"][3:])
        assert result["ok"], _one_line(result)
        assert not result["warnings"], result["warnings"]


# -- vLLM 0.31.0 (the release ai-dynamo 1.6.1's [vllm] extra pins) and dynamo.vllm -------------------
# A second parser env (scripts/parser-env --vllm): vLLM's serve parser and dynamo.vllm's, CPU torch.

DEFAULT_VLLM = "0.31.0"
LAUNCHER = str(Path(sys.executable).with_name("launcher"))
WIDEEP = "configs/vllm-wideep-16gpu.yaml"
# Seed 003's own `vllm serve` line, from the llm-d wide-ep-lws manifest (../shared/reference/
# sglang-and-vllm.md §5.2), decode worker 1 of 2 with LeaderWorkerSet's values filled in.
SEED_003_VLLM_SERVE = shlex.split("""
  deepseek-ai/DeepSeek-R1-0528 --port 8200 --data-parallel-hybrid-lb --enable-expert-parallel
  --tensor-parallel-size 1 --data-parallel-size 16 --data-parallel-size-local 8 --data-parallel-address 10.0.0.1
  --data-parallel-rpc-port 5555 --data-parallel-start-rank 8
  --kv_transfer_config '{"kv_connector":"NixlConnector","kv_role":"kv_both"}' --async-scheduling --enable-dbo
  --dbo-decode-token-threshold 32 --enable-eplb --eplb-config '{"num_redundant_experts":"32"}'
  --compilation_config '{"cudagraph_mode": "FULL_DECODE_ONLY"}'
""")


@functools.cache
def vllm_parser_env_python(vllm: str = DEFAULT_VLLM) -> Path:
    """The python of the vLLM parser env (with ai-dynamo 1.6.1), building it if needed (once a session)."""

    done = subprocess.run(
        [sys.executable, str(PARSER_ENV), "--vllm", vllm],
        stdout=subprocess.PIPE,
        text=True,
        timeout=ENV_BUILD_TIMEOUT,
        check=True,
    )
    return Path(done.stdout.strip().splitlines()[-1])


def check_vllm_args(engine: str, argv: list[str], *, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Like check_args, for "vllm" (argv after `vllm serve`) and "dynamo-vllm", in the vLLM parser env."""

    python = vllm_parser_env_python()
    with _checkers_lock:
        checker = _checkers.get(python)
        if checker is None:
            checker = _checkers[python] = _Checker(python)
    return checker.check(engine, argv, env)


@pytest.fixture(scope="session")
def vllm_parser_env() -> Path:
    """Build the vLLM 0.31.0 + ai-dynamo 1.6.1 parser env (CI builds it here; never skipped)."""

    return vllm_parser_env_python(DEFAULT_VLLM)


@functools.cache
def _wideep_ranks() -> tuple[tuple[str, tuple[str, ...], tuple[tuple[str, str], ...]], ...]:
    """(role, argv after `python3 -m dynamo.vllm`, env) per dynamo.vllm rank, by `launcher plan --format json`."""

    environ = {k: v for k, v in os.environ.items() if k not in ("VLLM_IMAGE", "DSR1_MODEL_DIR", "NET_IFNAME")}
    proc = subprocess.run(
        [LAUNCHER, "plan", WIDEEP, "--format", "json"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
        env=environ,
    )
    assert proc.returncode == 0, proc.stderr
    ranks = []
    for service in json.loads(proc.stdout)["services"]:
        if service["command"][:3] == ["python3", "-m", "dynamo.vllm"]:
            ranks.append((service["role"], tuple(service["command"][3:]), tuple(sorted(service["env"].items()))))
    return tuple(ranks)


def _without(argv: list[str], flag: str) -> list[str]:
    i = argv.index(flag)
    return argv[:i] + argv[i + 2 :]


def _replace_value(argv: list[str], flag: str, value: str) -> list[str]:
    i = argv.index(flag)
    return [*argv[: i + 1], value, *argv[i + 2 :]]


def test_vllm_wideep_every_rank_parses_under_dynamo_vllm(vllm_parser_env: Path) -> None:
    """Seed 003's config as rendered, rank by rank, through `python3 -m dynamo.vllm`'s own parse."""
    ranks = _wideep_ranks()
    assert sorted(role for role, _, _ in ranks) == ["decode", "prefill"]  # one process per node, one node each
    for role, argv, env in ranks:
        result = check_vllm_args("dynamo-vllm", list(argv), env=dict(env))
        assert result["ok"], (role, _one_line(result))
        assert result["warnings"] == [], (role, result["warnings"])
        assert result["version"] == "1.6.1" and result["versions"]["vllm"] == DEFAULT_VLLM
        assert any("dynamo.vllm.args parsed and validated" in n for n in result["notes"]), result["notes"]


def test_vllm_wideep_engine_flags_are_vllm_serve_flags(vllm_parser_env: Path) -> None:
    """dynamo.vllm hands what it does not know to vLLM's AsyncEngineArgs parser: without Dynamo's one
    flag (--disaggregation-mode), every rank's argv parses under vLLM 0.31.0's own `vllm serve`."""
    for role, argv, env in _wideep_ranks():
        rest = _without(list(argv), "--disaggregation-mode")
        model = rest.index("--model")
        serve_argv = [rest[model + 1], *rest[:model], *rest[model + 2 :]]  # vllm serve takes the model first
        result = check_vllm_args("vllm", serve_argv, env=dict(env))
        assert result["ok"], (role, _one_line(result))
        assert result["warnings"] == [], (role, result["warnings"])
        assert result["version"] == DEFAULT_VLLM


def test_seed_003_own_vllm_serve_line_parses_under_vllm_0_31_0(vllm_parser_env: Path) -> None:
    result = check_vllm_args("vllm", SEED_003_VLLM_SERVE)
    assert result["ok"], _one_line(result)
    assert result["warnings"] == [], result["warnings"]


def test_dynamo_vllm_rejects_a_wrong_flag_and_a_wrong_value_naming_each(vllm_parser_env: Path) -> None:
    role, argv, env = next(r for r in _wideep_ranks() if r[0] == "decode")
    # --num-redundant-experts: an EPLB flag of older vLLM, now a key of --eplb-config
    wrong = [*_replace_value(list(argv), "--all2all-backend", "deepep_low_latncy"), "--num-redundant-experts", "32"]
    result = check_vllm_args("dynamo-vllm", wrong, env=dict(env))
    assert result["ok"] is False, _one_line(result)
    errors = "\n".join(result["errors"])
    assert "argument --all2all-backend: invalid choice: 'deepep_low_latncy'" in errors, errors
    assert "unrecognized arguments: --num-redundant-experts 32" in errors, errors

    # a value vLLM's config class refuses after argparse took it
    bad_eplb = _replace_value(list(argv), "--eplb-config", '{"num_redundant_experts": "many"}')
    result = check_vllm_args("dynamo-vllm", bad_eplb, env=dict(env))
    assert result["ok"] is False, _one_line(result)
    assert any("argument --eplb-config:" in e and "num_redundant_experts" in e for e in result["errors"]), _one_line(
        result
    )


def test_vllm_serve_rejects_dynamo_flags_and_typos(vllm_parser_env: Path) -> None:
    result = check_vllm_args("vllm", ["/model", "--disaggregation-mode", "decode", "--enable-eplbb"])
    assert result["ok"] is False
    assert any("unrecognized arguments: --disaggregation-mode decode --enable-eplbb" in e for e in result["errors"]), (
        _one_line(result)
    )


def test_dynamo_vllm_own_checks_run_after_argparse(vllm_parser_env: Path) -> None:
    """dynamo.vllm 1.6.1 refuses a prefill worker without --kv-transfer-config (why the launcher adds one)."""
    role, argv, env = next(r for r in _wideep_ranks() if r[0] == "prefill")
    result = check_vllm_args("dynamo-vllm", _without(list(argv), "--kv-transfer-config"), env=dict(env))
    assert result["ok"] is False
    assert any("you must explicitly provide --kv-transfer-config" in e for e in result["errors"]), _one_line(result)


def test_doctor_runs_dynamo_vllm_parser_per_role(vllm_parser_env: Path, tmp_path: Path) -> None:
    """doctor.check_args as `launcher doctor` runs it (the checker on stdin of `python3 -`), with the vLLM
    parser env as the process runtime's Python (in the image it is the image's python3): one check per
    role; a bad value in one group fails that group's check only, naming the flag."""
    import dataclasses

    import yaml

    from launcher.config.load import load as load_config
    from launcher.operations import checks as doctor
    from launcher.operations.context import Target
    from launcher.plan.build import build as build_plan
    from launcher.runtime import for_plan
    from launcher.transport.fleet import Fleet
    from launcher.transport.host import Options
    from launcher.transport.local import LocalHost

    data = yaml.safe_load((REPO / WIDEEP).read_text())
    data["groups"]["decode"]["args"]["all2all-backend"] = "deepep_ll"  # a typo of deepep_low_latency
    broken = tmp_path / "wideep.yaml"
    broken.write_text(yaml.safe_dump(data))
    built = build_plan(load_config(broken, environ={}))
    engines = [s for s in built.services if s.group]  # the frontend's parser is not in this env
    built = dataclasses.replace(
        built, services=engines, runtime="process", python_env=str(vllm_parser_env.parent.parent)
    )
    fleet = Fleet([])
    fleet.hosts = {node.index: LocalHost(node, Options()) for node in built.nodes}
    checks = {c.name: c for c in doctor.check_args(Target(broken, None, built, for_plan(built), fleet))}

    assert sorted(checks) == ["args:decode", "args:prefill"]
    assert (checks["args:prefill"].status, checks["args:prefill"].detail) == (
        "ok",
        "dynamo-vllm 1.6.1 accepts the argv",
    ), checks["args:prefill"]
    assert checks["args:decode"].status == "fail", checks["args:decode"]
    assert "dynamo-vllm 1.6.1 rejects" in checks["args:decode"].detail
    assert "argument --all2all-backend: invalid choice: 'deepep_ll'" in checks["args:decode"].detail
