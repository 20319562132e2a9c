"""Reading a deployment: inventory (nodes, SSH defaults, vars) -> deployment YAML -> `${VAR}`
interpolation from the environment, `.env` beside the deployment file, the inventory's `vars` and
built-ins -> the pydantic models of `schema`. Every error names the file, the key and its line.
"""

from __future__ import annotations

import collections
import difflib
import io
import os
import types
import typing
from pathlib import Path
from typing import Annotated, Any, Union

from dotenv.main import DotEnv
from dotenv.variables import parse_variables
from pydantic import BaseModel, ConfigDict, ValidationError

from launcher.config.interpolate import Interpolator
from launcher.config.limits import MAX_TEXT
from launcher.config.redact import SECRET_NAME
from launcher.config.schema import DeploymentSpec, InventorySpec, NodeSpec, SSHSettings, as_text
from launcher.config.yamlfile import KeyPath, dotted, line_of, load_yaml, read_file
from launcher.errors import ConfigError, ConfigErrors


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
    if kind == "too_long":
        return f"at most {ctx.get('max_length')} entries (the launcher's limit), got {ctx.get('actual_length')}"
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
    if data and not set(map(str, data)) & set(model.model_fields):
        # Not this kind of file at all (another YAML file, /proc/self/status...): one line, not one per key.
        found = ", ".join(str(k) for k in list(data)[:5]) + (", ..." if len(data) > 5 else "")
        raise ConfigError(
            f"expected a mapping with any of the keys {', '.join(sorted(model.model_fields))};"
            f" none of its {len(data)} top-level key(s) is one ({found})",
            file=file,
        )
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
    # name -> value of every secret: declared ones, secret-looking variables the file used, and the
    # inventory's secret-looking vars (whether used or not: they are redacted wherever they turn up)
    secret_values: dict[str, str]
    # name -> value of every variable the file took from the environment or .env (what the user holds)
    held: dict[str, str] = {}
    lines: dict[Any, int]
    profile: str | None = None  # the profile applied (`--profile`), if any

    def line(self, *path: str | int) -> int | None:
        return line_of(self.lines, tuple(path))


def load_inventory(path: Path) -> InventorySpec:
    data, lines = load_yaml(path)
    return validate(InventorySpec, data, str(path), lines)


def check_profiles(spec: DeploymentSpec, profile: str | None, file: str, lines: dict[KeyPath, int]) -> None:
    """Every profile names groups of the file; `--profile` names a profile of the file."""
    for name, groups in spec.profiles.items():
        for group in groups:
            if group not in spec.groups:
                raise ConfigError(
                    f"no group {group!r}: expected one of {', '.join(spec.groups)}",
                    file=file,
                    key=f"profiles.{name}.{group}",
                    line=line_of(lines, ("profiles", name, group)),
                )
    if profile is not None and profile not in spec.profiles:
        known = f"expected one of {', '.join(spec.profiles)}" if spec.profiles else "the file has no `profiles:`"
        raise ConfigError(f"no profile {profile!r} in {file}: {known}", key="--profile")


def read_dotenv(path: Path) -> dict[str, str]:
    """`.env` as python-dotenv reads it (`${VAR}` expanded from the lines above and the environment), within
    the file limits: a chain of lines that each double the one before is refused, not expanded."""
    resolved: dict[str, str | None] = {}
    env = collections.ChainMap(resolved, os.environ)  # the file's own values first, as dotenv has it
    written = 0
    for name, value in DotEnv(None, stream=io.StringIO(read_file(path)), interpolate=False).parse():
        parts = [atom.resolve(env) for atom in parse_variables(value)] if value is not None else []
        written += sum(len(part) for part in parts)
        if written > MAX_TEXT:
            why = f"its ${{VAR}}s expand past {MAX_TEXT // 2**20} MiB of text (the launcher's limit)"
            raise ConfigError(why, file=str(path), key=name)
        resolved[name] = "".join(parts) if value is not None else None
    return {k: v for k, v in resolved.items() if v is not None}


def load(
    path: str | Path,
    inventory: str | Path | InventorySpec | None = None,
    environ: dict[str, str] | None = None,
    profile: str | None = None,
    inventory_name: str | None = None,
) -> Loaded:
    """Read, interpolate and validate a deployment file (and optional inventory: a file, or one already
    made, such as a Slurm allocation's, named `inventory_name` in messages)."""
    path = Path(path)
    file = str(path)
    environ = dict(os.environ if environ is None else environ)
    if isinstance(inventory, InventorySpec):
        inv: InventorySpec | None = inventory
    else:
        inv = load_inventory(Path(inventory)) if inventory else None
        inventory_name = str(inventory) if inventory else None
    data, lines = load_yaml(path)
    if not isinstance(data, dict):
        raise ConfigError("expected a mapping at the top of the file", file=file)

    dotenv_path = path.parent / ".env"
    dotenv = read_dotenv(dotenv_path) if dotenv_path.exists() else {}
    inventory_vars = {k: as_text(v) for k, v in (inv.vars if inv else {}).items()}
    builtins = {"CONFIG_DIR": str(path.resolve().parent)}
    interp = Interpolator([environ, dotenv, inventory_vars, builtins], file, lines)
    data = interp.walk(data)
    spec: DeploymentSpec = validate(DeploymentSpec, data, file, lines)
    check_profiles(spec, profile, file, lines)

    if inv is not None:
        nodes = inv.nodes
        ssh = inv.ssh.merged(spec.ssh)
    elif spec.nodes:
        nodes = spec.nodes
        ssh = spec.ssh
    else:
        raise ConfigError("no nodes: list them under `nodes:` or pass an inventory with -i", file=file, key="nodes")

    secret_values, held = resolve_secrets(spec, environ, dotenv, inventory_vars, interp, dotenv_path, lines)

    return Loaded(
        spec=spec,
        file=file,
        inventory_file=inventory_name,
        nodes=nodes,
        ssh=ssh,
        secret_values=secret_values,
        held=held,
        lines=lines,
        profile=profile,
    )


def resolve_secrets(
    spec: DeploymentSpec,
    environ: dict[str, str],
    dotenv: dict[str, str],
    inventory_vars: dict[str, str],
    interp: Interpolator,
    dotenv_path: Path,
    lines: dict[KeyPath, int],
) -> tuple[dict[str, str], dict[str, str]]:
    """(secret_values, held) of Loaded: a declared secret must be defined in the environment or .env."""
    secret_values: dict[str, str] = {}
    for i, name in enumerate(spec.secrets):
        value = environ.get(name) or dotenv.get(name)
        if not value:
            raise ConfigError(
                f"secret {name} is named but not defined: set it in the environment or in {dotenv_path}",
                file=str(interp.file),
                key=f"secrets[{i}]",
                line=line_of(lines, ("secrets", i)),
            )
        secret_values[name] = value
    # Values interpolated from secret-looking variables are secrets too, wherever they landed.
    for name in sorted(interp.used):
        if SECRET_NAME.search(name) and name not in secret_values:
            value = interp.lookup(name)
            if value:
                secret_values[name] = value
    for name, value in inventory_vars.items():
        if SECRET_NAME.search(name) and value and name not in secret_values:
            secret_values[name] = value
    held = {}
    for name in sorted(interp.used):
        value = environ[name] if name in environ else dotenv.get(name)  # the interpolator's order
        if value:
            held[name] = value
    held.update({name: secret_values[name] for name in spec.secrets})
    return secret_values, held
