"""The SGLang P/D router as a service of the plan: argv, version pin, mini_lb by SGLang version, errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from launcher.config.load import load as load_config
from launcher.errors import ConfigError
from launcher.plan import infra
from launcher.plan.build import build as build_plan
from tests.helpers import CONFIGS, run_cli


def routed(tmp_path: Path, **router) -> dict:
    data = yaml.safe_load((CONFIGS / "sglang-1p1d-32gpu.yaml").read_text())
    data["services"]["router"].update(router)
    return data


def build(tmp_path: Path, data: dict):
    path = tmp_path / "deploy.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return build_plan(load_config(path, environ={}))


def router_of(p):
    (router,) = [s for s in p.services if s.role == "router"]
    return router


def test_router_starts_with_the_workers_and_owns_the_endpoint(tmp_path):
    p = build(tmp_path, routed(tmp_path, node=3))
    r = router_of(p)
    assert r.node.index == 3 and p.endpoint == "http://192.0.2.43:8000" and p.entry is r
    assert not p.has_dynamo_frontend
    assert r.ports == [8000, 29000] and r.group is None


def two_prefill_groups(tmp_path: Path) -> dict:
    """The 1P1D file with a second prefill group on node pd-4, its bootstrap port 8999."""
    data = routed(tmp_path)
    data["nodes"].append({"name": "pd-4", "address": "192.0.2.44"})
    data["groups"]["prefill-b"] = {**data["groups"]["prefill"], "nodes": 1, "bootstrap_port": 8999}
    data["groups"]["prefill-b"]["args"] = {**data["groups"]["prefill"]["args"], "tp-size": 8, "dp-size": 8}
    data["groups"]["prefill-b"]["mode"] = "prefill"
    return data


def test_two_prefill_groups_each_with_its_bootstrap_port(tmp_path):
    argv = router_of(build(tmp_path, two_prefill_groups(tmp_path))).command
    i = argv.index("--pd-disaggregation")
    assert argv[i:].count("--prefill") == 2
    assert "http://192.0.2.44:30000" in argv and argv[argv.index("http://192.0.2.44:30000") + 1] == "8999"


def test_each_worker_goes_back_into_the_router_as_its_argv_gave_it(tmp_path):
    """What a roll's route_back POSTs for each worker: its type and (prefill) its own bootstrap port."""
    from launcher.plan import drain

    p = build(tmp_path, two_prefill_groups(tmp_path))
    router = router_of(p)
    specs = {name: drain.router_worker_spec(r, url) for name, (r, url) in drain.routed(p.services).items()}
    assert sorted((s["worker_type"], s.get("bootstrap_port")) for s in specs.values()) == [
        ("decode", None), ("prefill", 8998), ("prefill", 8999)
    ]  # fmt: skip
    assert specs[next(n for n in specs if "prefill-b" in n)]["url"] == "http://192.0.2.44:30000"
    assert drain.router_worker_spec(router, "http://192.0.2.99:30000") is None  # not given: nothing to add


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"versions": {"sglang": "0.5.21"}}, "versions.sglang_router"),
        ({"services": {"frontend": {"enabled": True}}}, "disable one"),
        ({"router": {"args": {"port": 9000}}}, "--port is set by the launcher"),
        ({"router": {"kind": "mini_lb"}}, "0.4.6.post1 to 0.5.1 only"),
        ({"router": {"port": 30000}}, "both want port 30000"),
        ({"drop": "decode"}, "at least one `sglang` group with mode prefill and one with mode decode"),
    ],
)
def test_bad_router_settings_name_the_key(tmp_path, change, message):
    data = routed(tmp_path)
    if "versions" in change:
        data["versions"] = change["versions"]
    if "services" in change:
        data["services"]["frontend"] = change["services"]["frontend"]
    if "router" in change:
        data["services"]["router"].update(change["router"])
    if "drop" in change:
        del data["groups"][change["drop"]]
    with pytest.raises(ConfigError) as err:
        build(tmp_path, data)
    assert message in str(err.value)
    assert "services.router" in str(err.value) or "groups.prefill" in str(err.value)


@pytest.mark.parametrize(
    ("version", "lists"),
    [("0.4.6.post1", "comma"), ("0.4.10", "space"), ("0.5.1", "space")],
)
def test_mini_lb_for_sglang_versions_that_have_it(tmp_path, version, lists):
    data = routed(tmp_path, kind="mini_lb")
    data["versions"]["sglang"] = version
    data["nodes"].append({"name": "pd-4", "address": "192.0.2.44"})
    data["groups"]["decode-b"] = {**data["groups"]["decode"], "nodes": 1, "args": {"tp-size": 8}}
    data["groups"]["decode-b"]["mode"] = "decode"
    for g in data["groups"].values():  # keep the old versions' flag checks out of this test
        g["args"] = {"tp-size": g["args"].get("tp-size", 16)}
    r = router_of(build(tmp_path, data))
    assert r.command[:3] == ["python3", "-m", "sglang.srt.disaggregation.mini_lb"]
    decode = r.command[r.command.index("--decode") + 1 : r.command.index("--host")]
    urls = ["http://192.0.2.42:30000", "http://192.0.2.44:30000"]
    assert decode == ([",".join(urls)] if lists == "comma" else urls)
    assert r.probe.url.endswith("/health") and r.ports == [8000]


def test_plan_cli_reports_a_missing_pin_as_exit_2(tmp_path, capsys):
    data = routed(tmp_path)
    del data["versions"]["sglang_router"]
    path = tmp_path / "deploy.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    code, out, err = run_cli(["plan", str(path)], capsys)
    assert code == 2 and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1 and "services.router" in err and "versions.sglang_router" in err


@pytest.mark.parametrize(("pinned", "code"), [("0.3.2", 0), ("0.3.1", 3)])
def test_the_pin_check_refuses_another_installed_router(pinned, code, tmp_path):
    """The wrapper the router runs under, against the real sglang-router installed in this venv (0.3.2)."""
    env = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin"}
    proc = subprocess.run(
        ["sh", "-c", infra.ROUTER_PIN_CHECK, pinned, "--help"], capture_output=True, text=True, env=env, timeout=60
    )
    assert proc.returncode == code, proc.stderr
    if code:
        assert proc.stderr.strip() == (
            "launcher: sglang-router 0.3.2 is installed here but the file pins 0.3.1 (versions.sglang_router)"
        )
    else:
        assert "--pd-disaggregation" in proc.stdout and "--prometheus-port" in proc.stdout


@pytest.mark.parametrize(("version", "kind"), [("0.4.10.post2", "log"), ("0.5.0", "log"), ("0.5.1", "http")])
def test_sglang_rank0_readiness_by_version(tmp_path, version, kind):
    """Before 0.5.1 rank 0's /health says 200 before the warm-up: the "fired up" log line decides."""
    data = routed(tmp_path)
    data["versions"]["sglang"] = version
    data["services"]["router"]["enabled"] = False
    for g in data["groups"].values():
        g["args"] = {"tp-size": 16}
    p = build(tmp_path, data)
    rank0 = next(s for s in p.services if s.group == "prefill" and s.rank == 0)
    rank1 = next(s for s in p.services if s.group == "prefill" and s.rank == 1)
    assert rank0.probe.kind == kind and rank1.probe.kind == "http"  # rank 1's dummy /health is honest
    if kind == "log":
        assert rank0.probe.expect == {"line": "The server is fired up and ready to roll!"}
