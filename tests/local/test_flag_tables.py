"""The shipped flag tables (launcher/plan/flagtables, written by scripts/flag-drift): the diff of two
releases' option sets, read from real argparse parsers; what check, migrate, plan and doctor make of
the table; and the pinned release's option set rebuilt from its real parser env."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import pytest

from launcher.plan import flagdrift, flagtables
from launcher.remote import engine_check
from tests.helpers import REPO, run_cli, write
from tests.local.test_real_parsers import parser_env  # noqa: F401  (the fixture builds or reuses the pinned env)

TABLES = REPO / "launcher" / "plan" / "flagtables"


class RenamedValue(argparse.Action):
    """SGLang's DeprecatedAliasStoreAction shape: an old valued flag that names its successor."""

    def __init__(self, option_strings, dest, new_flag=None, **kwargs):
        self.new_flag = new_flag
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, values)


def old_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="engine")
    parser.add_argument("--page-size", dest="page_size", type=int, default=1)
    parser.add_argument("--old-switch", action="store_true", help="Deprecated. Use --moe-backend=fast instead.")
    parser.add_argument("--graph-bs", action=RenamedValue, new_flag="--graph-bs-decode", type=int)
    parser.add_argument("--graph-bs-decode", type=int)
    parser.add_argument("--mode", choices=["a", "b"], default="a")
    parser.add_argument("--moe-backend", choices=["none", "fast"], default="none")
    parser.add_argument("--retired", type=int, help="Tuning knob.")
    parser.add_argument("--watchdog", "--watchdog-secs", dest="watchdog", type=float, default=300.0)
    return parser


def new_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="engine")
    parser.add_argument("--page-tokens", dest="page_size", type=int, default=1)  # renamed: same field
    parser.add_argument("--graph-bs-decode", type=int)
    parser.add_argument("--mode", choices=["a", "c"], default="c")  # a choice gone, one new, new default
    parser.add_argument("--moe-backend", choices=["none", "fast"], default="none")
    parser.add_argument("--retired-knob-v2", type=int)  # the removed --retired now abbreviates it
    parser.add_argument("--watchdog", dest="watchdog", type=float, default=300.0)  # an alias dropped
    parser.add_argument("--dp", action="store_true", help="(Deprecated: use --attn-dp=auto) DP attention.")
    return parser


def synthetic_table() -> flagtables.Table:
    sets = [
        engine_check.options_of(old_parser(), "sglang", "9.0.0"),
        engine_check.options_of(new_parser(), "sglang", "9.1.0"),
    ]
    return flagtables.Table.from_data(flagtables.table("sglang", sets), TABLES / "sglang.json")


def test_diff_of_two_real_parsers_finds_renames_removals_and_defaults():
    old = engine_check.options_of(old_parser(), "sglang", "9.0.0")
    new = engine_check.options_of(new_parser(), "sglang", "9.1.0")
    drift = flagtables.diff(old, new)
    assert (drift["previous"], drift["version"]) == ("9.0.0", "9.1.0")
    by = {kind: {e["option"]: e for e in drift[kind]} for kind in ("renamed", "removed_with_replacement", "removed")}
    assert by["renamed"]["--page-size"]["new"] == ["--page-tokens"]
    assert by["renamed"]["--watchdog-secs"]["new"] == ["--watchdog"]  # the field stays under its other name
    assert by["removed_with_replacement"]["--old-switch"]["new"] == ["--moe-backend", "fast"]
    assert by["removed_with_replacement"]["--graph-bs"]["new"] == ["--graph-bs-decode"]
    assert by["removed_with_replacement"]["--graph-bs"]["takes_value"] is True
    assert by["removed"] == {
        "--retired": {"option": "--retired", "takes_value": True, "prefix_of": ["--retired-knob-v2"]}
    }
    assert drift["default_changed"] == [{"option": "--mode", "old": "a", "new": "c"}]
    assert drift["choices_changed"] == [{"option": "--mode", "removed": ["b"], "added": ["c"]}]
    assert [(e["option"], e["new"]) for e in drift["deprecated"]] == [("--dp", ["--attn-dp", "auto"])]
    assert drift["new"] == ["--retired-knob-v2", "--dp"]
    # an option the new parser no longer registers but still takes (scripts/flag-drift asks it): not removed
    drift = flagtables.diff(old, {**new, "also_accepts": ["--retired"]})
    assert drift["removed"] == [] and drift["still_accepted"] == ["--retired"]
    # the same set against itself: nothing changed
    same = flagtables.diff(old, old)
    assert not any(same[k] for k in ("renamed", "removed_with_replacement", "removed", "default_changed", "new"))


def test_migrate_rewrites_every_removed_with_replacement_flag_of_a_table(monkeypatch):
    monkeypatch.setattr(flagtables, "load", lambda engine="sglang": synthetic_table())
    argv = ["--tp-size", "8", "--old-switch", "--graph-bs", "64", "--page-size", "16", "--retired", "3"]
    migrated = flagdrift.migrate_argv(argv, "9.1.0")
    assert migrated == ["--tp-size", "8", "--moe-backend", "fast", "--graph-bs-decode", "64", "--page-tokens", "16"]
    assert flagdrift.check(migrated, {}, "9.1.0") == []
    found = {f.what: f for f in flagdrift.check(argv, {}, "9.1.0")}
    assert {w: f.severity for w, f in found.items()} == dict.fromkeys(
        ["--old-switch", "--graph-bs", "--page-size", "--retired"], "error"
    )
    assert "was removed in SGLang 9.1.0 (flag table), where argparse takes it as --retired-knob-v2" in str(
        found["--retired"]
    )
    # the release before: every flag is still there; its parser marks two deprecated (they start)
    before = flagdrift.check(argv, {}, "9.0.0")
    assert [(f.what, f.severity) for f in before] == [("--old-switch", "warning"), ("--graph-bs", "warning")]
    text = "args:\n  old-switch: true\n  graph-bs: 64\n  retired: 3\n  dp: true\n"
    assert flagdrift.migrate_text(text, "9.1.0").splitlines() == [
        "args:",
        "  moe-backend: fast  # was old-switch: true (was removed in SGLang 9.1.0 (flag table))",
        "  graph-bs-decode: 64  # was graph-bs (was removed in SGLang 9.1.0 (flag table),"
        " where argparse takes it as --graph-bs-decode)",
        "  # retired: 3  # was removed in SGLang 9.1.0 (flag table), where argparse takes it as --retired-knob-v2",
        "  dp: true",
    ]
    (warning,) = flagdrift.check(["--dp"], {}, "9.1.0")
    assert (warning.severity, str(warning)) == (
        "warning",
        "--dp is deprecated in SGLang 9.1.0 (its parser: use --attn-dp=auto)",
    )


SHIPPED = {
    "sglang": ("SGLang", ["0.5.21", "0.5.22", "0.5.23"]),
    "vllm": ("vLLM", ["0.31.0", "0.32.0", "0.33.0", "0.34.0"]),
}


@pytest.mark.parametrize("engine", sorted(SHIPPED))
def test_shipped_table_is_the_diff_of_the_shipped_option_sets(engine):
    name, versions = SHIPPED[engine]
    sets = [json.loads(p.read_text()) for p in (TABLES / "options").glob(f"{engine}-*.json")]
    assert sorted(s["version"] for s in sets) == versions
    assert json.loads((TABLES / f"{engine}.json").read_text()) == flagtables.table(engine, sets)
    for release in flagtables.table(engine, sets)["releases"]:
        page = (REPO / "docs" / "drift" / f"{engine}-{release['version']}.md").read_text()
        assert page.startswith(f"# {name} {release['previous']} → {release['version']}\n")
        kinds = ("renamed", "removed_with_replacement", "removed", "deprecated")
        assert all(f"`{e['option']}`" in page for k in kinds for e in release[k])


def test_shipped_sglang_table_drives_the_findings():
    # --cuda-graph-tc-compiler: in 0.5.21's parser, gone from 0.5.22's (no successor named)
    argv = ["--tp-size", "8", "--cuda-graph-tc-compiler", "inductor"]
    assert flagdrift.check(argv, {}, "0.5.21") == []
    (error,) = flagdrift.check(argv, {}, "0.5.22")
    assert error.severity == "error" and "was removed in SGLang 0.5.22 (flag table): remove it" in error.message
    assert flagdrift.migrate_argv(argv, "0.5.23") == ["--tp-size", "8"]
    # --enable-dp-attention: a plain flag in 0.5.21, deprecated by 0.5.22's parser (still starts)
    assert flagdrift.check(["--enable-dp-attention"], {}, "0.5.21") == []
    (warning,) = flagdrift.check(["--enable-dp-attention"], {}, "0.5.22")
    assert warning.severity == "warning"
    assert "is deprecated in SGLang 0.5.22 (its parser: Use --attn-dp-size <dp-size> instead of" in warning.message
    assert flagdrift.migrate_argv(["--enable-dp-attention"], "0.5.23") == ["--enable-dp-attention"]


LOCAL = """\
deployment: drift
runtime: process
state_dir: {tmp}/state
gpus_per_node: 8
versions: {{sglang: "{sglang}"}}
model: {{path: {tmp}/model, name: m}}
nodes: [{{name: local, address: 127.0.0.1}}]
services: {{etcd: {{enabled: false}}, nats: {{enabled: false}}, frontend: {{enabled: false}}}}
groups:
  decode: {{engine: dynamo-sglang, nodes: [0], gpus: [0, 1, 2, 3], args: {{tp-size: 4, {flag}: true}}}}
"""


def test_plan_names_the_table_and_doctor_warns_once_each(tmp_path, capsys):
    """`launcher plan` says which table checked the flags; `launcher doctor` (this machine) warns, one line
    each, about a flag the pinned release deprecated and about a pin older than the newest known release."""
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    old = write(tmp_path, LOCAL.format(tmp=tmp_path, sglang="0.5.22", flag="enable-dp-attention"))
    code, out, err = run_cli(["plan", str(old)], capsys)
    assert code == 0, err
    assert (
        "flag table launcher/plan/flagtables/sglang.json (SGLang 0.5.21 .. 0.5.23) for the declared SGLang 0.5.22"
        in out
    )
    assert "warning: groups.decode: --enable-dp-attention is deprecated in SGLang 0.5.22" in out

    code, out, err = run_cli(["doctor", str(old), "--json", "--no-args"], capsys)
    checks = json.loads(out)["checks"]
    mine = [(c["name"], c["status"], c["detail"]) for c in checks if c["name"] in ("flags", "versions")]
    assert [m[:2] for m in mine] == [("flags", "warn"), ("versions", "warn")], mine
    assert mine[1][2] == (
        "SGLang 0.5.22 is pinned; the newest release the flag table knows is 0.5.23"
        " (`launcher migrate CONFIG --sglang 0.5.23 --dry-run` shows what would change)"
    )

    code, out, err = run_cli(["plan", str(REPO / "configs" / "vllm-wideep-16gpu.yaml")], capsys)
    assert code == 0, err
    assert "flag table launcher/plan/flagtables/vllm.json (vLLM 0.31.0 .. 0.34.0) for the declared vLLM 0.31.0" in out

    newest = write(tmp_path, LOCAL.format(tmp=tmp_path, sglang="0.5.23", flag="enable-dp-lm-head"))
    code, out, err = run_cli(["doctor", str(newest), "--json", "--no-args"], capsys)
    assert not [c for c in json.loads(out)["checks"] if c["name"] in ("flags", "versions")]


def test_migrate_to_the_newest_release_comments_out_a_removed_flag(tmp_path, capsys):
    text = LOCAL.format(tmp=tmp_path, sglang="0.5.21", flag="enable-dp-lm-head").replace(
        '{sglang: "0.5.21"}', '\n  sglang: "0.5.21"'
    )
    text = text.replace("args: {tp-size: 4, enable-dp-lm-head: true}}", "args: {tp-size: 4}}")
    config = write(tmp_path, text + "    # the block form users write\n")
    block = text.split("groups:")[0] + (
        "groups:\n  decode:\n    engine: dynamo-sglang\n    nodes: [0]\n    gpus: [0, 1, 2, 3]\n"
        "    args:\n      tp-size: 4\n      cuda-graph-tc-compiler: inductor\n"
    )
    config.write_text(block)
    code, out, err = run_cli(["plan", str(config)], capsys)
    assert code == 0 and "warning" not in out  # 0.5.21 still has it
    code, out, err = run_cli(["migrate", str(config), "--sglang", "0.5.23"], capsys)
    assert code == 0, err
    assert '-  sglang: "0.5.21"' in out and '+  sglang: "0.5.23"' in out
    assert "+      # cuda-graph-tc-compiler: inductor  # was removed in SGLang 0.5.22 (flag table)" in out
    code, out, err = run_cli(["plan", str(config)], capsys)
    assert code == 0 and "warning" not in out, out


@pytest.mark.slow
def test_pinned_release_option_set_rebuilt_from_its_real_parser_matches_the_shipped_one(parser_env):  # noqa: F811
    """The pinned release's env is the one CI caches (tests/test_real_parsers.py); the newer releases'
    envs are not built in CI, so their option sets are checked only by `scripts/flag-drift --check`."""
    done = subprocess.run(
        [str(parser_env), str(REPO / "launcher" / "remote" / "engine_check.py"), "--options", "sglang"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    rebuilt = json.loads(done.stdout)
    shipped = json.loads((TABLES / "options" / "sglang-0.5.21.json").read_text())
    assert rebuilt["version"] == "0.5.21" and len(rebuilt["options"]) > 400
    assert rebuilt == shipped


if __name__ == "__main__":
    sys.exit(pytest.main([__file__]))
