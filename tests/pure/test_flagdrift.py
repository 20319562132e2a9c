"""Offline flag-drift knowledge: what is stale for a declared SGLang version, and the rewrites."""

from __future__ import annotations

from launcher.plan import flagdrift as F
from tests.helpers import CONFIGS, run_cli
from tests.seeds import bash_commands, lws_commands


def test_versions_order_as_pep_440_says():
    # 0.5.3 removed --enable-deepep-moe; its release candidate still accepted it (deprecated since 0.4.10.post2)
    severity = {v: [f.severity for f in F.check(["--enable-deepep-moe"], {}, v)] for v in ("0.5.3rc0", "0.5.3")}
    assert severity == {"0.5.3rc0": ["warning"], "0.5.3": ["error"]}
    assert F.check(["--enable-deepep-moe"], {}, "0.4.10") == []  # before the deprecation
    assert [f.severity for f in F.check(["--enable-deepep-moe"], {}, "0.4.10.post2")] == ["warning"]


def test_removed_flags_are_errors_with_their_replacement():
    found = F.check(["--tp", "16", "--enable-deepep-moe", "--cuda-graph-bs", "128"], {}, "0.5.21")
    by = {f.what: f for f in found}
    assert by["--enable-deepep-moe"].severity == "error"
    assert "use --moe-a2a-backend deepep" in by["--enable-deepep-moe"].message
    assert "use --cuda-graph-bs-decode 128" in by["--cuda-graph-bs"].message


def test_old_versions_accept_old_flags():
    assert F.check(["--enable-deepep-moe", "--cuda-graph-bs", "128"], {}, "0.4.7") == []
    (finding,) = F.check(["--enable-deepep-moe"], {}, "0.5.1")
    assert finding.severity == "warning"


def test_silently_ignored_and_inverted_env_vars():
    env = {"SGLANG_NUM_RESERVED_DECODE_TOKENS": "102", "SGL_DISABLE_TP_MEMORY_INBALANCE_CHECK": "1"}
    found = {f.what: f for f in F.check([], env, "0.5.21")}
    assert "silently ignored" in found["SGLANG_NUM_RESERVED_DECODE_TOKENS"].message
    assert "inverting its meaning" in found["SGL_DISABLE_TP_MEMORY_INBALANCE_CHECK"].message


def test_migrate_argv_of_seed_000():
    prefill, *_ = lws_commands("000_6e7791af198eea82.txt")
    migrated = F.migrate_argv(prefill, "0.5.21")
    assert "--enable-deepep-moe" not in migrated
    assert migrated[migrated.index("--moe-a2a-backend") + 1] == "deepep"
    assert F.check(migrated, {}, "0.5.21") == []


def test_migrate_argv_of_seed_004():
    prefill, decode = bash_commands("004_70099621d036eea2.txt", "dynamo.sglang")
    for argv in (prefill, decode):
        migrated = F.migrate_argv(argv, "0.5.21")
        assert not [f for f in F.check(migrated, {}, "0.5.21") if f.severity == "error"]
    assert F.migrate_argv(decode, "0.5.21")[-2:] == ["--cuda-graph-bs-decode", "128"]


def test_plan_reports_stale_flags_and_up_refuses(tmp_path, capsys):
    text = (CONFIGS / "dsr1-104gpu.yaml").read_text()
    text = text.replace("moe-a2a-backend: deepep", "enable-deepep-moe: true")
    old = tmp_path / "old.yaml"
    old.write_text(text)
    code, out, err = run_cli(["plan", str(old)], capsys)
    assert code == 0
    assert "warning: groups.prefill: --enable-deepep-moe was removed in SGLang 0.5.5" in out
    code, out, err = run_cli(["up", str(old)], capsys)
    assert code == 2 and "nothing was started" in err and "launcher migrate" in err


def test_migrate_command_rewrites_and_prints_the_diff(tmp_path, capsys):
    text = (CONFIGS / "dsr1-104gpu.yaml").read_text()
    old = tmp_path / "old.yaml"
    old.write_text(
        text.replace("moe-a2a-backend: deepep", "enable-deepep-moe: true").replace(
            "cuda-graph-bs-decode: 128", "cuda-graph-bs: 128"
        )
    )
    code, out, err = run_cli(["migrate", str(old), "--sglang", "0.5.21"], capsys)
    assert code == 0, err
    assert "-      enable-deepep-moe: true" in out and "+      moe-a2a-backend: deepep" in out
    assert "+      cuda-graph-bs-decode: 128" in out
    code, out, err = run_cli(["plan", str(old)], capsys)
    assert code == 0 and "warning" not in out
    code, out, err = run_cli(["migrate", str(old), "--sglang", "0.5.21"], capsys)
    assert "nothing to change" in out


def test_migrate_bad_version(tmp_path, capsys):
    code, out, err = run_cli(["migrate", str(CONFIGS / "dsr1-104gpu.yaml"), "--sglang", "latest"], capsys)
    assert code == 2 and "--sglang expects a version" in err
