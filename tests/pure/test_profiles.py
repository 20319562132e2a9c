"""Profiles (`profiles:` in the deployment file, `--profile NAME` on `plan`/`up`): args and env added or
overridden per group; the spec hashes change only for the groups a profile touches, so `up` recreates
exactly those; bad names are one line, exit 2."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

from launcher.config.load import load
from launcher.operations.context import LAST, remember, target
from launcher.plan import reconcile
from launcher.plan.build import build
from launcher.plan.engines import args as A
from launcher.plan.state import Container
from tests.helpers import MINIMAL, REPO, fresh_env, write

DSR1 = REPO / "configs" / "dsr1-104gpu.yaml"
PREFILL_FLAGS = [
    "--max-running-requests",
    "8192",
    "--max-total-tokens",
    "131072",
    "--context-length",
    "8192",
    "--init-expert-location",
    "/configs/prefill_in4096.json",
    "--chunked-prefill-size",
    "524288",
]  # fmt: skip  (seed 004, "Benchmarking": the flags to add to the prefill command)
DECODE_FLAGS = [
    "--max-running-requests", "18432", "--context-length", "4500",
    "--init-expert-location", "/configs/decode_in2000out100.json",
]  # fmt: skip


def plan_of(path, profile=None):
    return build(load(path, environ={}, profile=profile))


def commands(plan, role):
    return [s.command for s in plan.services if s.role == role]


def running(plan) -> list[Container]:
    """What the nodes would report after `up` of this plan: every service running with its labels."""
    return [
        Container(s.node.index, f"id{i}", s.name, plan.labels(s), "running", 0) for i, s in enumerate(plan.services)
    ]


def test_dsr1_profiles_render_the_seed_flags_on_their_group_only():
    base = plan_of(DSR1)
    for profile, role, flags, other in (
        ("prefill-stress", "prefill", PREFILL_FLAGS, "decode"),
        ("decode-stress", "decode", DECODE_FLAGS, "prefill"),
    ):
        plan = plan_of(DSR1, profile)
        assert plan.profile == profile
        for before, after in zip(commands(base, role), commands(plan, role), strict=True):
            assert after == before + flags  # the seed's flags, values included, once each, at the end
        assert commands(plan, other) == commands(base, other)


def test_up_with_a_profile_recreates_exactly_the_changed_group():
    base = plan_of(DSR1)
    stressed = plan_of(DSR1, "prefill-stress")
    changes = reconcile.compute(stressed, running(base))
    assert sorted(s.service for s in changes.create) == [f"prefill-r{r}" for r in range(4)]
    assert {s.role for s in changes.keep} == {"etcd", "nats", "frontend", "decode"} and len(changes.keep) == 12
    assert all(changes.reasons[f"prefill-r{r}"] == "spec changed" for r in range(4))
    back = reconcile.compute(base, running(stressed))  # `up` without --profile goes back: prefill again
    assert sorted(s.service for s in back.create) == [f"prefill-r{r}" for r in range(4)]
    assert reconcile.compute(stressed, running(stressed)).unchanged


def test_override_replaces_adds_and_removes_flags():
    argv = ["--tp-size", "16", "--enable-x", "--cuda-graph-bs", "1", "2", "--page-size=1"]
    changed = A.override(argv, {"tp-size": 32, "enable-x": None, "page-size": 64, "new": True, "bs": [4, 8]})
    assert changed == ["--cuda-graph-bs", "1", "2", "--tp-size", "32", "--page-size", "64", "--new", "--bs", "4", "8"]
    assert A.override(argv, {}) == argv


def test_profile_env_reaches_the_group_and_only_it(tmp_path):
    data = yaml.safe_load(MINIMAL)
    data["profiles"] = {"hot": {"decode": {"env": {"SGLANG_X": 1}, "args": {"max-running-requests": 7}}}}
    path = write(tmp_path, yaml.safe_dump(data))
    plan = plan_of(path, "hot")
    for s in plan.services:
        assert (s.env.get("SGLANG_X") == "1") is (s.role == "decode"), s.service
    assert all(c[-2:] == ["--max-running-requests", "7"] for c in commands(plan, "decode"))
    assert plan_of(path).profile is None and not any("SGLANG_X" in s.env for s in plan_of(path).services)


def run_launcher(*args, cwd=REPO):
    return subprocess.run(
        [sys.executable, "-m", "launcher", *args], capture_output=True, text=True, env=fresh_env(), cwd=cwd, timeout=60
    )


def test_an_unknown_profile_is_one_line_exit_2():
    out = run_launcher("plan", str(DSR1), "--profile", "nope")
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.strip().splitlines() == [
        f"error: --profile: no profile 'nope' in {DSR1}: expected one of prefill-stress, decode-stress"
    ]
    out = run_launcher("plan", str(REPO / "configs" / "local.yaml"), "--profile", "x")
    assert out.returncode == 2 and "the file has no `profiles:`" in out.stderr


def test_a_profile_naming_no_group_is_one_line_with_its_line(tmp_path):
    data = yaml.safe_load(MINIMAL)
    data["profiles"] = {"hot": {"decod": {"args": {"x": 1}}}}
    path = write(tmp_path, yaml.safe_dump(data, sort_keys=False))
    line = path.read_text().splitlines().index("  hot:") + 2
    out = run_launcher("plan", str(path))
    assert out.returncode == 2
    assert out.stderr.strip() == (
        f"error: {path}:{line}: profiles.hot.decod: no group 'decod': expected one of prefill, decode"
    )
    data["profiles"] = {"hot": {"decode": {"args": "--x 1"}}}  # a profile's args are a mapping
    out = run_launcher("plan", str(write(tmp_path, yaml.safe_dump(data))))
    assert out.returncode == 2 and "profiles.hot.decode.args" in out.stderr and len(out.stderr.splitlines()) == 1


def test_plan_json_names_the_profile_and_later_commands_remember_it(tmp_path, monkeypatch):
    out = run_launcher("plan", str(DSR1), "--profile", "decode-stress", "--format", "json")
    plan = json.loads(out.stdout)
    assert plan["profile"] == "decode-stress"
    decode = [s for s in plan["services"] if s["role"] == "decode"]
    assert all(s["command"][-len(DECODE_FLAGS) :] == DECODE_FLAGS for s in decode)
    assert "profile" not in json.loads(run_launcher("plan", str(DSR1), "--format", "json").stdout)
    # `up --profile` remembers it for `status`, `watch`, `down`, `bench` of the same file
    monkeypatch.chdir(tmp_path)
    remember(target(DSR1, profile="prefill-stress"))
    assert json.loads(LAST.read_text())["profile"] == "prefill-stress"
    assert target(DSR1).profile == "prefill-stress"
    assert target(DSR1, profile="").profile is None  # `up` without --profile applies none
    other = write(tmp_path, MINIMAL)
    assert target(other).profile is None  # another file: not its profile


@pytest.mark.parametrize("bad", ["prefill-stress ", "-x"])
def test_profile_names_follow_the_name_rule(tmp_path, bad):
    data = yaml.safe_load(MINIMAL)
    data["profiles"] = {bad: {"decode": {"args": {"x": 1}}}}
    out = run_launcher("plan", str(write(tmp_path, yaml.safe_dump(data))))
    assert out.returncode == 2 and "profiles" in out.stderr and len(out.stderr.splitlines()) == 1
