"""Whole-plan checks that no single service can make: port clashes, secrets on a command line."""

from __future__ import annotations

from launcher.config.load import Loaded
from launcher.errors import ConfigError
from launcher.plan.types import Service, split_unit


def check_ports(services: list[Service], loaded: Loaded) -> None:
    """With host networking every port is the node's: two services wanting one port cannot both start."""
    used: dict[tuple[int, int], Service] = {}
    for service in services:
        if service.container.network not in (None, "host"):
            continue
        for port in service.ports:
            key = (service.node.index, port)
            other = used.get(key)
            if other is not None and other is not service:
                raise ConfigError(
                    f"{service.node.label}: {other.service} and {service.service} both want port {port}",
                    file=loaded.file,
                    key=file_key(service),
                    line=loaded.line(*file_key(service).split(".")),
                )
            used[key] = service


def check_no_secret_on_command_line(services: list[Service], secret_values: dict[str, str], loaded: Loaded) -> None:
    """Engine args, run_options, volumes and the image are on the `docker run` line, so in `ps` and
    `docker inspect`: a secret's value there is refused (env values are routed to the 0600 file)."""
    top = loaded.spec
    for s in services:
        exposed = [*s.command, *(s.container.run_options or []), *(s.container.volumes or []), s.image]
        for name, value in secret_values.items():
            if any(value in part for part in exposed):
                raise ConfigError(
                    f"the value of secret {name} would be on the command line of {s.name} (its args, "
                    "run_options, volumes or image), where `ps` and `docker inspect` show it: pass it through "
                    "`env` instead (env values holding a secret go to the node's 0600 env file)",
                    file=loaded.file,
                    key=_where(value, s, top),
                )


def _where(value: str, service: Service, top) -> str:
    """The key that put a secret on the command line: the file's top-level `image` or `container`
    when it came from there (every service inherits them), else the service's own entry."""
    if top.image and value in top.image and value in service.image:
        return "image"
    for key in ("volumes", "run_options"):
        if any(value in part for part in getattr(top.container, key) or []):
            return f"container.{key}"
    return file_key(service)


def file_key(service: Service) -> str:
    """Where the file describes this service: its group, its entry under `services`, or `metrics`."""
    if service.role in ("prometheus", "grafana"):
        return "metrics.port" if service.role == "prometheus" else "metrics.grafana_port"
    return f"groups.{split_unit(service.group)[0]}" if service.group else f"services.{service.role}"
