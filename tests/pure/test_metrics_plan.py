"""`metrics:` in the deployment file: the Prometheus and Grafana services the plan adds, their scrape
targets (from the plan), port clashes refused naming both, and the shipped dashboard checked against
Grafana's published JSON schemas (tests/data/grafana-schema: Grafana cannot be installed here)."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
import yaml

from launcher.config.load import load
from launcher.errors import ConfigError
from launcher.plan import dashboard, metrics
from launcher.plan.build import build
from tests.helpers import CONFIGS, REPO, run_cli

SCHEMAS = Path(__file__).resolve().parents[1] / "data" / "grafana-schema"


PASSWORD = "grafana-admin-pw-7c1e"


def with_metrics(tmp_path: Path, config: str, secrets: tuple[str, ...] = (), **settings) -> Path:
    data = yaml.safe_load((CONFIGS / config).read_text())
    data["metrics"] = settings
    if secrets:
        data["secrets"] = [*data.get("secrets", []), *secrets]
    path = tmp_path / config
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


GRAFANA = {"grafana": True, "grafana_admin_password_env": "GRAFANA_PW", "secrets": ("GRAFANA_PW",)}
INVENTORY = REPO / "tests" / "data" / "inventory-32.yaml"


def plan_of(path: Path, inventory: Path | None = INVENTORY):
    environ = {"TESTBED_IMAGE": "img", "TESTBED_PYTHON_HOME": "/py", "TESTBED_VENV": "/venv", "TESTBED_REPO": "/r"}
    environ["GRAFANA_PW"] = PASSWORD
    return build(load(path, inventory, environ=environ))


def test_prometheus_scrapes_every_metrics_endpoint_of_the_plan(tmp_path):
    plan = plan_of(with_metrics(tmp_path, "testbed-104.yaml", prometheus=True, port=9099, retention="2d"))
    prom = next(s for s in plan.services if s.role == "prometheus")
    assert prom.node.index == 0 and prom.ports == [9099] and prom.probe.url.endswith(":9099/-/ready")
    assert "--storage.tsdb.retention.time=2d" in prom.command
    config = yaml.safe_load(prom.env[metrics.PROMETHEUS_CONFIG_ENV])
    jobs = {job["job_name"]: job["static_configs"] for job in config["scrape_configs"]}
    workers = {(c["labels"]["group"], c["labels"]["rank"]): c["targets"][0] for c in jobs["worker"]}
    # every rank of both groups, at its node's address and the group's system port
    expected = {(s.group, str(s.rank)): f"{s.node.address}:9090" for s in plan.services if s.group}
    assert workers == expected and len(workers) == 13
    assert jobs["frontend"][0]["targets"] == [f"{plan.nodes[0].address}:8000"]
    assert jobs["prometheus"][0]["targets"] == [f"{plan.nodes[0].address}:9099"]
    # started with the workers, so `up` waits for it and `down` removes it like any service
    from launcher.commands.up import phases

    assert prom in phases(plan.services)[-1]


def test_a_metrics_port_another_service_uses_is_refused_naming_both(tmp_path, capsys):
    path = with_metrics(tmp_path, "testbed-104.yaml", prometheus=True)  # 9090: prefill r0's system port on node 0
    with pytest.raises(ConfigError) as caught:
        plan_of(path)
    assert "prefill-r0 and prometheus both want port 9090" in str(caught.value)
    assert caught.value.key == "metrics.port" and caught.value.line is not None
    path = with_metrics(tmp_path, "testbed-104.yaml", prometheus=True, port=9099, grafana_port=8000, **GRAFANA)
    with pytest.raises(ConfigError, match="frontend and grafana both want port 8000") as caught:
        plan_of(path)
    assert caught.value.key == "metrics.grafana_port"


@pytest.mark.parametrize(
    ("settings", "other"),
    [
        ({"port": 19099, "dcgm_exporter_port": 19099}, "prometheus"),
        ({"port": 19099, "dcgm_exporter_port": 3000, **GRAFANA}, "grafana"),
    ],
)
def test_a_dcgm_port_of_prometheus_or_grafana_is_refused_naming_both(tmp_path, capsys, settings, other):
    """The exporter runs on every GPU node, the head included, where Prometheus and Grafana listen."""
    path = with_metrics(tmp_path, "dsr1-104gpu.yaml", prometheus=True, **settings)
    with pytest.raises(ConfigError, match=f"the DCGM exporter and {other} both want port") as caught:
        plan_of(path)
    assert caught.value.key == "metrics.dcgm_exporter_port" and caught.value.line is not None


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        ({"grafana": True}, "grafana: true needs prometheus: true"),
        ({"prometheus": True, "retention": "two weeks"}, "metrics.retention"),
        ({"prometheus": True, "port": 70000}, "metrics.port"),
        ({"prometheus": "yes please"}, "metrics.prometheus"),
        ({"prometheus": True, "node": "nope"}, "metrics.node"),
    ],
)
def test_bad_metrics_settings_are_one_line_exit_2(tmp_path, capsys, settings, expected):
    path = with_metrics(tmp_path, "local.yaml", **settings)
    code, out, err = run_cli(["plan", str(path)], capsys)
    assert code == 2, out + err
    assert expected in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert err.startswith(f"error: {path}:")


def test_plan_text_shows_the_stack_and_what_it_scrapes(tmp_path, capsys):
    path = with_metrics(tmp_path, "local.yaml", prometheus=True, port=19099)
    code, out, _ = run_cli(["plan", str(path)], capsys)
    assert code == 0
    assert "prometheus on node 0" in out and "--web.listen-address=127.0.0.1:19099" in out
    assert "scrapes 4 target(s): frontend 127.0.0.1:8000, prefill r0 127.0.0.1:19090, decode r0 127.0.0.1:19091" in out
    assert "global:" not in out  # the config's text is in `--format json`, not spread over the text view


def test_the_router_and_sglang_enable_metrics_are_scraped(tmp_path):
    plan = plan_of(CONFIGS / "sglang-1p1d-32gpu.yaml")
    kinds = {(t.kind, t.url.rsplit(":", 1)[1]) for t in metrics.scrape_targets(plan.services)}
    assert ("router", "29000/metrics") in kinds
    data = yaml.safe_load((CONFIGS / "sglang-1p1d-32gpu.yaml").read_text())
    data["groups"]["decode"]["args"]["enable-metrics"] = True
    path = tmp_path / "m.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    plan = plan_of(path)
    workers = [t for t in metrics.scrape_targets(plan.services) if t.kind == "worker"]
    assert workers and {t.service.group for t in workers} == {"decode"}
    assert all(t.url == f"http://{t.service.node.address}:30000/metrics" for t in workers)


def test_grafana_gets_the_datasource_and_the_dashboard(tmp_path):
    path = with_metrics(tmp_path, "testbed-104.yaml", prometheus=True, port=9099, dcgm_exporter_port=9400, **GRAFANA)
    plan = plan_of(path)
    grafana = next(s for s in plan.services if s.role == "grafana")
    datasource = yaml.safe_load(grafana.env[metrics.GRAFANA_DATASOURCE_ENV])["datasources"][0]
    assert datasource["url"] == f"http://{plan.nodes[0].address}:9099" and datasource["uid"] == metrics.DATASOURCE_UID
    board = json.loads(grafana.env[metrics.GRAFANA_DASHBOARD_ENV])
    assert board == dashboard.build(metrics.DATASOURCE_UID, gpu_panels=True)
    assert grafana.probe.url == f"http://{plan.nodes[0].address}:3000/api/health"
    # anonymous visitors read only; the admin password comes from the secret, through the env file only
    assert grafana.env["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer"
    assert grafana.secret_env == {"GF_SECURITY_ADMIN_PASSWORD": PASSWORD}
    assert all(PASSWORD not in v for v in [*grafana.command, *grafana.env.values()])
    # testbed nodes have no GPU: no DCGM target, though the panels are there for a real cluster
    prom = next(s for s in plan.services if s.role == "prometheus")
    assert "dcgm" not in prom.env[metrics.PROMETHEUS_CONFIG_ENV]
    # a GPU cluster: every GPU node's exporter is a target
    plan = plan_of(with_metrics(tmp_path, "dsr1-104gpu.yaml", prometheus=True, port=9099, dcgm_exporter_port=9400))
    config = yaml.safe_load(next(s for s in plan.services if s.role == "prometheus").env[metrics.PROMETHEUS_CONFIG_ENV])
    dcgm = next(j for j in config["scrape_configs"] if j["job_name"] == "dcgm")["static_configs"]
    gpu_nodes = {s.node.address for s in plan.services if s.group}  # the 13 nodes with ranks, of 32
    assert sorted(c["targets"][0] for c in dcgm) == sorted(f"{a}:9400" for a in gpu_nodes) and len(dcgm) == 13


def schema(name: str, definition: str | None = None) -> dict:
    document = json.loads((SCHEMAS / f"{name}.jsonschema.json").read_text())
    if definition:
        document = {**document, "$ref": f"#/definitions/{definition}"}
    return document


def dashboard_errors(board: dict) -> list[str]:
    """Every way the dashboard breaks Grafana's schemas: the dashboard, each timeseries panel's options
    and field config, and each Prometheus query."""
    errors = [e.message for e in jsonschema.Draft7Validator(schema("dashboard")).iter_errors(board)]
    options = jsonschema.Draft7Validator(schema("timeseries", "Options"))
    custom = jsonschema.Draft7Validator(schema("timeseries", "FieldConfig"))
    query = jsonschema.Draft7Validator(schema("prometheus"))
    for panel in board.get("panels", []):
        errors += [f"{panel['title']}: options: {e.message}" for e in options.iter_errors(panel["options"])]
        errors += [
            f"{panel['title']}: custom: {e.message}"
            for e in custom.iter_errors(panel["fieldConfig"]["defaults"]["custom"])
        ]
        for target in panel["targets"]:
            errors += [f"{panel['title']}: query: {e.message}" for e in query.iter_errors(target)]
    return errors


@pytest.mark.parametrize("gpu_panels", [False, True])
def test_the_dashboard_is_valid_against_grafanas_schemas(gpu_panels):
    board = dashboard.build(metrics.DATASOURCE_UID, gpu_panels=gpu_panels)
    assert dashboard_errors(board) == []
    titles = [p["title"] for p in board["panels"]]
    assert any("Time to first token" in t for t in titles) and any("KV-cache" in t for t in titles)
    assert any("Queue depth" in t for t in titles) and any("tokens/s per role" in t for t in titles)
    assert any("GPU" in t for t in titles) == gpu_panels


def test_the_schema_check_catches_a_broken_dashboard():
    """Positive control: the same check refuses what Grafana's schema refuses."""
    board = dashboard.build(metrics.DATASOURCE_UID, gpu_panels=False)
    board["panels"][0]["gridPos"]["w"] = 30  # wider than Grafana's 24 columns
    board["panels"][1]["targets"][0].pop("expr")  # a Prometheus query without its expression
    board["panels"][2]["options"]["tooltip"]["mode"] = "everything"
    del board["schemaVersion"]
    errors = dashboard_errors(board)
    assert len(errors) >= 4, errors


def test_the_shipped_dashboard_file_is_the_one_the_plan_provisions():
    shipped = json.loads((REPO / "dashboards" / "launcher.json").read_text())
    assert shipped == dashboard.build(metrics.DATASOURCE_UID, gpu_panels=True)


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        ({}, "metrics.grafana_admin_password_env: grafana: true needs the name of a secret"),
        ({"grafana_admin_password_env": "NOT_DECLARED"}, "NOT_DECLARED: expected a secret declared under `secrets:`"),
    ],
)
def test_grafana_without_an_admin_password_secret_is_refused(tmp_path, capsys, settings, expected):
    """Grafana's default admin/admin on a reachable port is anyone's: no password secret, no plan."""
    path = with_metrics(tmp_path, "local.yaml", prometheus=True, port=19099, grafana=True, **settings)
    code, out, err = run_cli(["plan", str(path)], capsys)
    assert code == 2, out + err
    assert err.startswith(f"error: {path}:") and expected in err and len(err.strip().splitlines()) == 1


def test_grafanas_password_is_in_no_plan_view(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("GRAFANA_PW", PASSWORD)
    path = with_metrics(tmp_path, "local.yaml", prometheus=True, port=19099, grafana_port=13999, **GRAFANA)
    for view in (["plan", str(path)], ["plan", str(path), "--format", "json"], ["plan", str(path), "-f", "script"]):
        code, out, err = run_cli(view, capsys)
        assert code == 0, out + err
        assert "grafana" in out and PASSWORD not in out + err
