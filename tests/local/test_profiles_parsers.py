"""configs/dsr1-104gpu.yaml's stress profiles (seed 004's benchmarking flags), every rank exactly as
`launcher plan --profile NAME --format json` renders it, through the real parsers of the pinned Dynamo 1.6.1
+ SGLang 0.5.21 (scripts/parser-env, as tests/local/test_real_parsers.py does): they parse, with no warning, and
a wrong value is rejected by name."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import REPO, fresh_env
from tests.local.test_real_parsers import check_args, parser_env  # noqa: F401  (the fixture builds the env)

pytestmark = pytest.mark.slow


def rendered(profile: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-m", "launcher", "plan", str(REPO / "configs" / "dsr1-104gpu.yaml"), "--profile", profile,
         "--format", "json"],
        capture_output=True, text=True, env=fresh_env(), timeout=60, check=True,
    )  # fmt: skip
    return json.loads(out.stdout)


@pytest.mark.parametrize(
    ("profile", "role", "expected"),
    [
        ("prefill-stress", "prefill", {"max_running_requests": 8192, "max_total_tokens": 131072,
                                       "context_length": 8192, "init_expert_location": "/configs/prefill_in4096.json",
                                       "chunked_prefill_size": 524288}),
        ("decode-stress", "decode", {"max_running_requests": 18432, "context_length": 4500,
                                     "init_expert_location": "/configs/decode_in2000out100.json"}),
    ],
)  # fmt: skip
def test_stress_profiles_parse_under_the_pinned_sglang(parser_env: Path, profile, role, expected) -> None:  # noqa: F811
    plan = rendered(profile)
    ranks = [s for s in plan["services"] if s["role"] == role]
    assert len(ranks) == {"prefill": 4, "decode": 9}[role]
    for service in (ranks[0], ranks[-1]):
        argv = service["command"]
        assert argv[:3] == ["python3", "-m", "dynamo.sglang"]
        result = check_args("dynamo-sglang", argv[3:])
        assert result["ok"], result["errors"]
        assert not result["warnings"], result["warnings"]
        plain = check_args("sglang", [a for a in argv[3:] if a not in ("--skip-tokenizer-init",)])
        assert plain["ok"], plain["errors"]
        for key, value in expected.items():  # the seed's values, once each, in the argv that was parsed
            flag = "--" + key.replace("_", "-")
            assert argv.count(flag) == 1 and argv[argv.index(flag) + 1] == str(value)


def test_a_wrong_value_in_a_profile_is_rejected_by_the_real_parser(parser_env: Path) -> None:  # noqa: F811
    argv = rendered("prefill-stress")["services"]
    prefill = next(s for s in argv if s["role"] == "prefill")["command"][3:]
    broken = [("lots" if token == "8192" and prev == "--max-running-requests" else token)
              for prev, token in zip(["", *prefill[:-1]], prefill, strict=True)]  # fmt: skip
    result = check_args("dynamo-sglang", broken)
    assert not result["ok"] and any("--max-running-requests" in e for e in result["errors"]), result
