"""The deployment file and the inventory, validated.

Reading order: inventory (nodes, SSH defaults, vars) -> deployment YAML -> `${VAR}` interpolation from
the environment, `.env` beside the deployment file, the inventory's `vars` and built-ins -> pydantic
models. Nothing here touches the network.
"""

from __future__ import annotations

import difflib
import os
import re
import types
import typing
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from dotenv import dotenv_values
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from launcher.errors import ConfigError, ConfigErrors
from launcher.interpolate import Interpolator
from launcher.yamlfile import KeyPath, dotted, line_of, load_yaml

# Env names whose values are secret even when the file does not list them under `secrets`.
SECRET_NAME = re.compile(
    r"(^HF_TOKEN$|^HUGGING_FACE_HUB_TOKEN$|_TOKEN$|_SECRET$|_PASSWORD$|_API_KEY$|^NATS_AUTH_|^ETCD_AUTH_)"
)

NAME_RE = r"^[a-zA-Z0-9][a-zA-Z0-9_.-]*$"
# An environment variable name a shell can `export`: anything else would be dropped or, worse, run.
EnvName = Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]
EnvMap = dict[EnvName, str | int | float | bool]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class SSHSettings(Strict):
    user: str | None = None
    port: Annotated[int, Field(ge=1, le=65535)] | None = None
    key: str | None = None
    jump: str | None = Field(default=None, description="ProxyJump host: [user@]host[:port]")
    known_hosts: str | None = None
    connect_timeout: Annotated[float, Field(gt=0, le=600)] | None = None
    host_key_policy: Literal["strict", "accept-new"] | None = None

    def merged(self, override: SSHSettings) -> SSHSettings:
        data = self.model_dump(exclude_none=True)
        data.update(override.model_dump(exclude_none=True))
        return SSHSettings(**data)


class NodeSpec(Strict):
    address: Annotated[str, Field(min_length=1)]
    name: Annotated[str, Field(pattern=NAME_RE)] | None = None
    ssh: SSHSettings = SSHSettings()
    gpus: Annotated[int, Field(ge=0)] | None = None
    ib_devices: list[str] | None = None

    @field_validator("address")
    @classmethod
    def _no_space(cls, value: str) -> str:
        if any(ch.isspace() for ch in value) or value.startswith("-"):
            raise ValueError("an address is a host name or IP without spaces or leading '-'")
        if ":" in value:
            # URLs, --dist-init-addr HOST:PORT and NIXL side channels are built as HOST:PORT everywhere.
            raise ValueError("IPv6 addresses are not supported yet: use an IPv4 address or a host name")
        return value


class ContainerSettings(Strict):
    """How a service's container is run. Group values override top-level ones key by key."""

    network: str | None = None
    ipc: str | None = None
    shm_size: str | None = None
    ulimits: dict[str, str | int | None] | None = None  # null drops a default limit
    cap_add: list[str] | None = None
    devices: list[str] | None = None
    privileged: bool | None = None
    gpus: str | None = Field(default=None, description="'all', 'none', or a GPU list like '0,1,2,3'")
    volumes: list[str] | None = None
    env: EnvMap | None = None
    run_options: list[str] | None = None
    workdir: str | None = None
    user: str | None = None

    @field_validator("volumes")
    @classmethod
    def _volume_form(cls, value: list[str] | None) -> list[str] | None:
        for volume in value or []:
            if ":" not in volume:
                raise ValueError(f"volume {volume!r} must be HOST_PATH:CONTAINER_PATH[:ro]")
        return value

    def over(self, base: ContainerSettings) -> ContainerSettings:
        """self layered over base: scalars replace, mappings merge, lists append (deduplicated)."""
        out: dict[str, Any] = {}
        for name in type(self).model_fields:
            mine, theirs = getattr(self, name), getattr(base, name)
            if mine is None:
                out[name] = theirs
            elif isinstance(mine, dict) and isinstance(theirs, dict):
                out[name] = {k: v for k, v in {**theirs, **mine}.items() if v is not None}
            elif isinstance(mine, list) and isinstance(theirs, list):
                out[name] = list(dict.fromkeys(theirs + mine))
            else:
                out[name] = mine
        return ContainerSettings(**out)


# Defaults every wide-EP recipe uses (Dynamo's DeepSeek-R1 doc): host network and IPC, a large shm,
# unlimited locked memory for RDMA, ptrace for py-spy.
DEFAULT_CONTAINER = ContainerSettings(
    network="host",
    ipc="host",
    shm_size="10g",
    ulimits={"memlock": -1, "stack": 67108864, "nofile": "65536:65536"},
    cap_add=["SYS_PTRACE"],
    devices=[],
    privileged=False,
    gpus="all",
    volumes=[],
    env={},
    run_options=[],
)

NodeRef = Annotated[int, Field(ge=0)] | str


class EtcdSpec(Strict):
    enabled: bool = True
    node: NodeRef = 0
    client_port: Annotated[int, Field(ge=1, le=65535)] = 2379
    peer_port: Annotated[int, Field(ge=1, le=65535)] = 2380
    image: str | None = None
    args: list[str] = []
    container: ContainerSettings = ContainerSettings()
    timeout: Annotated[float, Field(gt=0)] = 60


class NatsSpec(Strict):
    enabled: bool = True
    node: NodeRef = 0
    port: Annotated[int, Field(ge=1, le=65535)] = 4222
    monitor_port: Annotated[int, Field(ge=1, le=65535)] = 8222
    image: str | None = None
    args: list[str] = []
    container: ContainerSettings = ContainerSettings()
    timeout: Annotated[float, Field(gt=0)] = 60


EngineArgs = dict[str, Any] | list[str | int | float] | str


class FrontendSpec(Strict):
    enabled: bool = True
    node: NodeRef = 0
    port: Annotated[int, Field(ge=1, le=65535)] = 8000
    image: str | None = None
    args: EngineArgs = {}
    env: EnvMap = {}
    container: ContainerSettings = ContainerSettings()
    timeout: Annotated[float, Field(gt=0)] = 300


class RouterSpec(Strict):
    """SGLang's P/D router in front of plain `sglang` prefill and decode groups (no Dynamo)."""

    enabled: bool = False
    node: NodeRef = 0
    port: Annotated[int, Field(ge=1, le=65535)] = 8000
    # The router panics if its Prometheus port is taken: always set explicitly, never left to chance.
    prometheus_port: Annotated[int, Field(ge=1, le=65535)] = 29000
    kind: Literal["router", "mini_lb"] = Field(
        default="router",
        description="router: sglang_router.launch_router (pin versions.sglang_router); "
        "mini_lb: sglang.srt.disaggregation.mini_lb (SGLang 0.4.6.post1 to 0.5.1 only)",
    )
    policy: str | None = None
    image: str | None = None
    args: EngineArgs = {}
    env: EnvMap = {}
    container: ContainerSettings = ContainerSettings()
    timeout: Annotated[float, Field(gt=0)] = 1800


class ServicesSpec(Strict):
    etcd: EtcdSpec = EtcdSpec()
    nats: NatsSpec = NatsSpec()
    frontend: FrontendSpec = FrontendSpec()
    router: RouterSpec = RouterSpec()


class ModelSpec(Strict):
    path: Annotated[str, Field(min_length=1)]
    name: Annotated[str, Field(min_length=1)] | None = None


class GroupSpec(Strict):
    engine: str
    nodes: Annotated[int, Field(ge=1)] | list[NodeRef]
    mode: Literal["prefill", "decode", "agg"] | None = None
    gpus: list[Annotated[int, Field(ge=0)]] | None = Field(
        default=None, description="GPU indices on each node used by this group (default: all)"
    )
    args: EngineArgs = []
    env: EnvMap = {}
    image: str | None = None
    container: ContainerSettings = ContainerSettings()
    dist_init_port: Annotated[int, Field(ge=1, le=65535)] = 29500
    bootstrap_port: Annotated[int, Field(ge=1, le=65535)] | None = None
    port: Annotated[int, Field(ge=1, le=65535)] | None = None
    # Dynamo keeps DYN_SYSTEM_PORT in a signed 16-bit integer: a higher port crashes the worker.
    system_port: Annotated[int, Field(ge=1, le=32767)] | None = None
    timeout: Annotated[float, Field(gt=0)] = 1800


class VersionsSpec(Strict):
    sglang: str | None = None
    dynamo: str | None = None
    vllm: str | None = None
    sglang_router: str | None = None


class DeploymentSpec(Strict):
    deployment: Annotated[str, Field(pattern=NAME_RE, max_length=48)]
    image: str | None = None
    runtime: Literal["docker", "process"] = "docker"
    python_env: str | None = Field(
        default=None, description="process runtime: a Python environment on the nodes; its bin/ leads PATH"
    )
    gpus_per_node: Annotated[int, Field(ge=0)] = 8
    versions: VersionsSpec = VersionsSpec()
    model: ModelSpec | None = None
    nodes: Annotated[list[NodeSpec], Field(min_length=1)] | None = None
    ssh: SSHSettings = SSHSettings()
    container: ContainerSettings = ContainerSettings()
    secrets: list[EnvName] = []
    services: ServicesSpec = ServicesSpec()
    groups: dict[Annotated[str, Field(pattern=r"^[a-z][a-z0-9-]*$")], GroupSpec]
    state_dir: str = "/var/tmp/launcher"

    @model_validator(mode="after")
    def _runtime_needs(self) -> DeploymentSpec:
        if self.runtime == "docker" and not self.image:
            raise ValueError("`image` is required with the docker runtime (or set `runtime: process`)")
        return self

    @field_validator("groups")
    @classmethod
    def _some_groups(cls, value: dict[str, GroupSpec]) -> dict[str, GroupSpec]:
        if not value:
            raise ValueError("at least one worker group is needed (for example prefill and decode)")
        return value


class InventorySpec(Strict):
    ssh: SSHSettings = SSHSettings()
    vars: dict[str, str | int | float | bool] = {}
    nodes: Annotated[list[NodeSpec], Field(min_length=1)]


# ---------------------------------------------------------------------------------------------
# Error reporting: pydantic's errors become one line each, with the key path and its line.


def _model_at(model: type[BaseModel], loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The pydantic model that owns the last key of loc (to suggest field names)."""
    current: Any = model
    for part in loc:
        current = _unwrap(current)
        if isinstance(current, type) and issubclass(current, BaseModel):
            field = current.model_fields.get(str(part))
            if field is None:
                return current if part == loc[-1] else None
            current = field.annotation
        else:
            args = typing.get_args(current)
            current = args[-1] if args else None
    return None


def _unwrap(annotation: Any) -> Any:
    while True:
        origin = typing.get_origin(annotation)
        if origin is Annotated:
            annotation = typing.get_args(annotation)[0]
        elif origin in (Union, types.UnionType):
            models = [a for a in typing.get_args(annotation) if isinstance(a, type) and issubclass(a, BaseModel)]
            containers = [a for a in typing.get_args(annotation) if typing.get_origin(a) in (dict, list)]
            if models:
                annotation = models[0]
            elif containers:
                annotation = containers[0]
            else:
                return annotation
        else:
            return annotation


def _expected(error: dict[str, Any]) -> str:
    kind = error["type"]
    ctx = error.get("ctx") or {}
    given = error.get("input")
    shown = repr(given) if not isinstance(given, (dict, list)) else type(given).__name__
    if kind == "missing":
        return "required key is missing"
    if kind == "literal_error":
        return f"expected one of {ctx.get('expected')}, got {shown}"
    if kind in ("int_type", "int_parsing", "int_from_float"):
        return f"expected a whole number, got {shown}"
    if kind in ("float_type", "float_parsing"):
        return f"expected a number, got {shown}"
    if kind in ("string_type",):
        return f"expected a string, got {shown}"
    if kind in ("bool_type", "bool_parsing"):
        return f"expected true or false, got {shown}"
    if kind in ("list_type",):
        return f"expected a list, got {shown}"
    if kind in ("dict_type", "model_type", "model_attributes_type"):
        return f"expected a mapping, got {shown}"
    if kind == "string_pattern_mismatch":
        return f"{shown} does not match the allowed form {ctx.get('pattern')}"
    if kind in ("greater_than_equal", "greater_than", "less_than_equal", "less_than"):
        return f"{error['msg'].lower()}, got {shown}"
    if kind == "value_error":
        return str(ctx.get("error", error["msg"]))
    return f"{error['msg']}, got {shown}"


def _clean_loc(loc: tuple[Any, ...]) -> tuple[Any, ...]:
    """Drop pydantic's union branch names (`int`, `list[...]`, `function-after[...]`) from a location."""
    out = []
    for part in loc:
        if isinstance(part, str) and (
            "[" in part or part in ("int", "str", "float", "bool", "constrained-int", "constrained-str")
        ):
            continue
        out.append(part)
    return tuple(out)


def validation_errors(
    exc: ValidationError, model: type[BaseModel], file: str, lines: dict[KeyPath, int]
) -> ConfigErrors:
    found: list[ConfigError] = []
    seen: set[tuple[Any, ...]] = set()
    # Unknown keys first: a misspelt key also makes its real name "missing", which says less.
    errors = sorted(exc.errors(), key=lambda e: e["type"] != "extra_forbidden")
    suggested: set[tuple[Any, ...]] = set()
    for error in errors:
        loc = _clean_loc(tuple(error["loc"]))
        if loc in seen or (error["type"] == "missing" and loc in suggested):
            continue  # one line per key, even when several union branches failed
        seen.add(loc)
        if error["type"] == "extra_forbidden":
            owner = _model_at(model, loc)
            names = sorted(owner.model_fields) if owner else []
            close = difflib.get_close_matches(str(loc[-1]), names, n=1)
            hint = f"did you mean '{close[0]}'?" if close else f"allowed keys: {', '.join(names)}"
            if close:
                suggested.add(loc[:-1] + (close[0],))
            message = f"unknown key: {hint}"
        else:
            message = _expected(error)
        found.append(ConfigError(message, file=file, key=dotted(loc), line=line_of(lines, loc)))
    return ConfigErrors(found)


def validate(model: type[BaseModel], data: Any, file: str, lines: dict[KeyPath, int]) -> Any:
    if not isinstance(data, dict):
        raise ConfigError("expected a mapping at the top of the file", file=file)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise validation_errors(exc, model, file, lines) from None


# ---------------------------------------------------------------------------------------------
# Loading


class Loaded(BaseModel):
    """A validated deployment plus what came with it: where it was read, resolved secrets."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    spec: DeploymentSpec
    file: str
    inventory_file: str | None
    nodes: list[NodeSpec]
    ssh: SSHSettings
    secret_values: dict[str, str]
    lines: dict[Any, int]

    def line(self, *path: str | int) -> int | None:
        return line_of(self.lines, tuple(path))


def load_inventory(path: Path) -> InventorySpec:
    data, lines = load_yaml(path)
    return validate(InventorySpec, data, str(path), lines)


def load(
    path: str | Path,
    inventory: str | Path | None = None,
    environ: dict[str, str] | None = None,
) -> Loaded:
    """Read, interpolate and validate a deployment file (and optional inventory)."""
    path = Path(path)
    file = str(path)
    environ = dict(os.environ if environ is None else environ)
    inv = load_inventory(Path(inventory)) if inventory else None
    data, lines = load_yaml(path)
    if not isinstance(data, dict):
        raise ConfigError("expected a mapping at the top of the file", file=file)

    dotenv_path = path.parent / ".env"
    dotenv = {k: v for k, v in dotenv_values(dotenv_path).items() if v is not None} if dotenv_path.exists() else {}
    inventory_vars = {k: _scalar_str(v) for k, v in (inv.vars if inv else {}).items()}
    builtins = {"CONFIG_DIR": str(path.resolve().parent)}
    interp = Interpolator([environ, dotenv, inventory_vars, builtins], file, lines)
    data = interp.walk(data)
    spec: DeploymentSpec = validate(DeploymentSpec, data, file, lines)

    if inv is not None:
        nodes = inv.nodes
        ssh = inv.ssh.merged(spec.ssh)
    elif spec.nodes:
        nodes = spec.nodes
        ssh = spec.ssh
    else:
        raise ConfigError("no nodes: list them under `nodes:` or pass an inventory with -i", file=file, key="nodes")

    secret_values: dict[str, str] = {}
    for i, name in enumerate(spec.secrets):
        value = environ.get(name) or dotenv.get(name)
        if not value:
            raise ConfigError(
                f"secret {name} is named but not defined: set it in the environment or in {dotenv_path}",
                file=file,
                key=f"secrets[{i}]",
                line=line_of(lines, ("secrets", i)),
            )
        secret_values[name] = value
    # Values interpolated from secret-looking variables are secrets too, wherever they landed.
    for name in interp.used:
        if SECRET_NAME.search(name) and name not in secret_values:
            value = interp.lookup(name)
            if value:
                secret_values[name] = value

    return Loaded(
        spec=spec,
        file=file,
        inventory_file=str(inventory) if inventory else None,
        nodes=nodes,
        ssh=ssh,
        secret_values=secret_values,
        lines=lines,
    )


def _scalar_str(value: str | int | float | bool) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def is_secret_name(name: str, declared: list[str] | set[str]) -> bool:
    return name in declared or bool(SECRET_NAME.search(name))
