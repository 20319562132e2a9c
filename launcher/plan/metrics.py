"""Where every service of a plan serves Prometheus metrics, and the deployment's own metrics stack
(`metrics:` in the file): a Prometheus server scraping those targets, and Grafana with the project's
dashboard. Pure: the services' argv, env and probes; the files they need travel in their env and are
written by their own start command.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import yaml

from launcher.config.schema import MetricsSpec
from launcher.plan import dashboard
from launcher.plan.engines import args as A
from launcher.plan.infra import Infra, bind_host
from launcher.plan.types import Node, Probe, Service

PROMETHEUS_CONFIG_ENV = "LAUNCHER_PROMETHEUS_CONFIG"
GRAFANA_DATASOURCE_ENV = "LAUNCHER_GRAFANA_DATASOURCE"
GRAFANA_PROVIDER_ENV = "LAUNCHER_GRAFANA_DASHBOARDS"
GRAFANA_DASHBOARD_ENV = "LAUNCHER_GRAFANA_DASHBOARD"
GRAFANA_PASSWORD_ENV = "GF_SECURITY_ADMIN_PASSWORD"
FILE_ENVS = (PROMETHEUS_CONFIG_ENV, GRAFANA_DATASOURCE_ENV, GRAFANA_PROVIDER_ENV, GRAFANA_DASHBOARD_ENV)
DATASOURCE_UID = "launcher-prometheus"


@dataclass(frozen=True)
class ScrapeTarget:
    """One `/metrics` endpoint: whose it is, and what kind of service serves it."""

    service: Service
    url: str
    kind: str  # frontend | router | worker | prometheus | grafana

    @property
    def host_port(self) -> str:
        return self.url.split("//", 1)[1].split("/", 1)[0]


def scrape_targets(services: list[Service]) -> list[ScrapeTarget]:
    """Every service's metrics endpoint, from its argv and env: the frontend's HTTP port, the router's
    --prometheus-port, Dynamo's per-worker system port (DYN_SYSTEM_PORT), plain SGLang's own port when its
    args carry --enable-metrics, and the metrics stack itself."""
    out = []
    for s in services:
        url = metrics_url(s)
        if url:
            kind = s.role if s.role in ("frontend", "router", "prometheus", "grafana") else "worker"
            out.append(ScrapeTarget(s, url, kind))
    return out


def metrics_url(s: Service) -> str | None:
    base = f"http://{s.node.address}"
    argv = s.command
    if s.role == "frontend":
        port = A.value(argv, "--http-port")
        return f"{base}:{port}/metrics" if port else None
    if s.role == "router":
        port = A.value(argv, "--prometheus-port")  # absent for mini_lb, which serves no metrics
        return f"{base}:{port}/metrics" if port else None
    if s.role in ("prometheus", "grafana"):
        return f"{base}:{s.ports[0]}/metrics"
    if s.group is None:
        return None
    if s.env.get("DYN_SYSTEM_PORT"):
        return f"{base}:{s.env['DYN_SYSTEM_PORT']}/metrics"
    if s.engine == "sglang" and A.has(argv, "--enable-metrics"):
        port = A.value(argv, "--port")
        return f"{base}:{port}/metrics" if port else None
    return None


def prometheus_config(targets: list[ScrapeTarget], spec: MetricsSpec, gpu_nodes: list[Node]) -> str:
    """prometheus.yml: one job per kind of target, each target labelled with its role, group, rank and node."""
    jobs: dict[str, list[dict]] = {}
    for t in targets:
        labels = {"service": t.service.service, "role": t.service.role, "node": t.service.node.name}
        if t.service.group is not None:
            labels["group"] = t.service.group
        if t.service.rank is not None:
            labels["rank"] = str(t.service.rank)
        jobs.setdefault(t.kind, []).append({"targets": [t.host_port], "labels": labels})
    if spec.dcgm_exporter_port and gpu_nodes:
        jobs["dcgm"] = [
            {"targets": [f"{n.address}:{spec.dcgm_exporter_port}"], "labels": {"node": n.name}} for n in gpu_nodes
        ]
    config = {
        "global": {"scrape_interval": spec.scrape_interval, "evaluation_interval": spec.scrape_interval},
        "scrape_configs": [{"job_name": job, "static_configs": statics} for job, statics in jobs.items()],
    }
    return yaml.safe_dump(config, sort_keys=False)


def _in_dir(scratch: str, setup: str, command: list[str]) -> list[str]:
    """`sh -c`: go to the service's own directory, write its files from its env, then exec the server."""
    script = f'mkdir -p "$0" && cd "$0" && {setup} && exec "$@"'
    return ["sh", "-c", script, scratch, *command]


def prometheus(spec: MetricsSpec, node: Node, scratch: str, config: str) -> Infra:
    """The Prometheus server: its config (written from its env), its data and retention, its port."""
    command = [
        "prometheus",
        "--config.file=prometheus.yml",
        "--storage.tsdb.path=data",
        f"--storage.tsdb.retention.time={spec.retention}",
        f"--web.listen-address={bind_host(node)}:{spec.port}",
    ]
    setup = f'printf "%s" "${PROMETHEUS_CONFIG_ENV}" > prometheus.yml'
    return Infra(
        _in_dir(f"{scratch}/launcher-prometheus", setup, command),
        Probe(kind="http", url=f"http://{node.address}:{spec.port}/-/ready"),
        [spec.port],
        url=f"http://{node.address}:{spec.port}",
        env={PROMETHEUS_CONFIG_ENV: config},
    )


def grafana(spec: MetricsSpec, node: Node, scratch: str, prometheus_url: str, gpu_panels: bool) -> Infra:
    """Grafana with the Prometheus datasource and the project's dashboard provisioned from its env."""
    datasource = {
        "apiVersion": 1,
        "datasources": [
            {"name": "Prometheus", "uid": DATASOURCE_UID, "type": "prometheus", "access": "proxy",
             "url": prometheus_url, "isDefault": True},
        ],
    }  # fmt: skip
    provider = {
        "apiVersion": 1,
        "providers": [{"name": "launcher", "type": "file", "options": {"path": "dashboards"}}],
    }
    board = dashboard.build(DATASOURCE_UID, gpu_panels=gpu_panels)
    setup = (
        "mkdir -p data dashboards provisioning/datasources provisioning/dashboards provisioning/plugins"
        " provisioning/alerting provisioning/notifiers"
        f' && printf "%s" "${GRAFANA_DATASOURCE_ENV}" > provisioning/datasources/launcher.yaml'
        f' && printf "%s" "${GRAFANA_PROVIDER_ENV}" > provisioning/dashboards/launcher.yaml'
        f' && printf "%s" "${GRAFANA_DASHBOARD_ENV}" > dashboards/launcher.json'
        # Grafana takes relative paths from its home path: every path here is made absolute
        ' && sed -i "s#path: dashboards#path: $PWD/dashboards#" provisioning/dashboards/launcher.yaml'
        ' && export GF_PATHS_PROVISIONING="$PWD/provisioning" GF_PATHS_DATA="$PWD/data"'
    )
    home = spec.grafana_home
    env = {
        GRAFANA_DATASOURCE_ENV: yaml.safe_dump(datasource, sort_keys=False),
        GRAFANA_PROVIDER_ENV: yaml.safe_dump(provider, sort_keys=False),
        GRAFANA_DASHBOARD_ENV: json.dumps(board, separators=(",", ":")),
        "GF_SERVER_HTTP_ADDR": bind_host(node),
        "GF_SERVER_HTTP_PORT": str(spec.grafana_port),
        # anyone reaching the port may look (Viewer, read-only); changes need the admin password, which
        # the plan adds as GRAFANA_PASSWORD_ENV to the service's secret env (never on a command line)
        "GF_AUTH_ANONYMOUS_ENABLED": "true",
        "GF_AUTH_ANONYMOUS_ORG_ROLE": "Viewer",
        "GF_USERS_ALLOW_SIGN_UP": "false",
        "GF_ANALYTICS_REPORTING_ENABLED": "false",
        "GF_ANALYTICS_CHECK_FOR_UPDATES": "false",
    }
    command = ["grafana", "server", f"--homepath={home}"]
    return Infra(
        _in_dir(f"{scratch}/launcher-grafana", setup, command),
        Probe(kind="http", url=f"http://{node.address}:{spec.grafana_port}/api/health", expect={"database": "ok"}),
        [spec.grafana_port],
        url=f"http://{node.address}:{spec.grafana_port}",
        env=env,
    )
