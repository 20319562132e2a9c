"""The deployment a command acts on, resolved once per command: which file (argument, `-c`,
`$LAUNCHER_CONFIG`, then the last `up` here), which inventory, its plan, its runtime, and for commands
that reach the nodes the fleet of connections and the head node."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from launcher.config import allocation
from launcher.config.load import Loaded, load
from launcher.config.yamlfile import load_json
from launcher.errors import ConfigError
from launcher.plan import fabric, spares
from launcher.plan.build import build
from launcher.plan.fabric import Route
from launcher.plan.state import Container
from launcher.plan.types import REPLACES_LABEL, Node, Plan
from launcher.runtime import for_plan
from launcher.runtime import lock as lock_scripts
from launcher.runtime.base import Runtime
from launcher.runtime.network import parse_routes, route_script
from launcher.transport.host import Host, Options

LAST = Path(".launcher") / "last.json"


@dataclass(frozen=True)
class Connection:
    """How to reach the nodes, from the command line (None: the files' `ssh:` settings decide)."""

    parallel: int = 32
    connect_timeout: float | None = None
    host_key_policy: str | None = None


@dataclass
class Target:
    path: Path
    inventory: Path | None
    plan: Plan
    runtime: Runtime
    fleet: Any = None  # a transport.fleet.Fleet while connected
    loaded: Loaded | None = None  # the file as read, to build the plan again with facts from the nodes
    # What the nodes said about their routes (node index -> leader address -> route), once asked.
    routes: dict[int, dict[str, Route]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # substitution labels refused, said by `status`

    def route_prefix(self, host: Host) -> str:
        """Shell to put before a command's first script on a node: it prints the node's routes to its
        groups' leaders (`learn_routes` reads them)."""
        return route_script(fabric.route_targets(self.plan).get(host.node.index, []))

    def learn_routes(self, outputs: dict[int, str]) -> None:
        """Read the routes the nodes printed; with `network.interface: auto` the plan is built again
        with the interfaces they name (the plan stays pure: these are its input)."""
        for i, text in outputs.items():
            self.routes[i] = parse_routes(text)
        if self.plan.network_interface == "auto" and self.loaded is not None:
            found = {i: {a: r.interface for a, r in rs.items() if r.interface} for i, rs in self.routes.items()}
            self.plan = build(self.loaded, found, self.plan.substitutes)

    def adopt_substitutes(self, containers: Iterable[Container]) -> list[str]:
        """Build the plan again with the spares the listed replacement ranks record (launcher.plan.spares:
        a group moved off a lost node stays on its spare); returns one line per substitution taken or
        refused (the labels are the nodes' word)."""
        containers = [c for c in containers if REPLACES_LABEL in c.labels]
        if self.loaded is None or not (containers or self.plan.substitutes):
            return []
        base = build(self.loaded, self.plan.interfaces)
        moves = self.moves_recorded(base) if containers else {}
        plan, lines = spares.apply_recorded(self.loaded, base, containers, moves)
        if plan.substitutes != self.plan.substitutes:
            self.plan = plan
        return lines

    def moves_recorded(self, plan: Plan) -> dict[int, int]:
        """The head node's record of watch's moves (runtime.lock.MOVES_FILE): one read, asked only when a
        listed rank carries a substitution label; a head that does not answer is no record."""
        # behind the state-dir guard, as every lock script on the head (a refusal is not JSON: no record)
        script = (
            lock_scripts.guard_script(plan.state_dir)
            + "\n"
            + lock_scripts.read_moves_script(plan.state_dir, plan.deployment)
        )
        try:
            text = self.head.run(script).stdout
        except Exception:  # the head unreachable or failing: no move is confirmed, every label refused
            return {}
        return spares.parse_moves(plan, text, lock_scripts.MOVES_BYTES)

    def unresolved_interfaces(self) -> dict[int, str]:
        """With `network.interface: auto`: the nodes whose interface to a leader is still unknown, and why."""
        if self.plan.network_interface != "auto":
            return {}
        out = {}
        for i, leaders in fabric.route_targets(self.plan).items():
            for leader in leaders:
                route = self.routes.get(i, {}).get(leader)
                if route is None or not route.interface:
                    why = route.error if route is not None else "not read"
                    out[i] = f"cannot tell which interface routes to the leader {leader}: {why}"
        return out

    @property
    def profile(self) -> str | None:
        return self.plan.profile

    @property
    def head(self) -> Host:
        """The head node's host: where the lock and the audit log live."""
        assert self.fleet is not None, "connect() first"
        return self.fleet.host(self.plan.head.index)

    def check_selection(self, node: str | None, role: str | None, rank: int | None, replica: int | None = None) -> None:
        """--node, --role, --rank and --replica name something in the deployment file: else exit 2 before
        any node is asked (saying what exists)."""
        if node is not None:
            self.node(node)
        services = [s for s in self.plan.services if role is None or role in (s.role, s.group, s.service)]
        if not services:
            roles = sorted({x for s in self.plan.services for x in (s.role, s.group, s.service) if x})
            raise ConfigError(
                f"no service has role or group {role!r}: expected one of {', '.join(roles)}", key="--role"
            )
        ranks = sorted({s.rank for s in services if s.rank is not None})
        if rank is not None and rank not in ranks:
            span = f"{ranks[0]}" + (f"..{ranks[-1]}" if len(ranks) > 1 else "") if ranks else ""
            expected = f"expected {span}" if ranks else "none has ranks"
            raise ConfigError(f"no rank {rank}" + (f" of {role}" if role else "") + f": {expected}", key="--rank")
        replicas = sorted({s.replica or 0 for s in services if s.group is not None})
        if replica is not None and replica not in replicas:
            expected = (
                ("expected 0" + (f"..{replicas[-1]}" if replicas[-1] else "")) if replicas else "none is a group's"
            )
            raise ConfigError(
                f"no replica {replica}" + (f" of {role}" if role else "") + f": {expected}", key="--replica"
            )

    def node(self, ref: str) -> Node:
        """`--node`: an index, a name or an address; anything else is bad input (exit 2)."""
        node = self.plan.node(ref)
        if node is None:
            raise ConfigError(
                f"no node {ref!r}: expected an index 0..{len(self.plan.nodes) - 1}, a name or an address",
                key="--node",
            )
        return node


def inventory_from_env() -> Path | None:
    value = os.environ.get("LAUNCHER_INVENTORY")
    return Path(value) if value else None


def load_file(config: Path, inventory: Path | None, profile: str | None = None) -> Loaded:
    inventory = inventory or inventory_from_env()
    if allocation.requested(inventory):  # `-i slurm`: the nodes of the current Slurm allocation
        return load(config, allocation.inventory(), profile=profile, inventory_name=allocation.KEY)
    return load(config, inventory, profile=profile)


def load_plan(config: Path, inventory: Path | None, profile: str | None = None) -> Plan:
    return build(load_file(config, inventory, profile))


def remembered_profile(path: Path) -> str | None:
    """The profile the last `up` here applied, when it was `up` of this same file (so that `status`,
    `watch`, `down`, `bench` compare the nodes with what `up --profile` started)."""
    try:
        last = load_json(LAST)
        same = Path(last["config"]).resolve() == path.resolve()
    except (ConfigError, OSError, ValueError, KeyError, TypeError):
        return None
    profile = last.get("profile")
    return profile if same and isinstance(profile, str) else None


def resolve(config: Path | None, config_opt: Path | None, inventory: Path | None) -> tuple[Path, Path | None]:
    """The deployment file and inventory: argument, -c, $LAUNCHER_CONFIG, then the last `up` here."""
    env_config = os.environ.get("LAUNCHER_CONFIG")
    chosen = config or config_opt or (Path(env_config) if env_config else None)
    inv = inventory or inventory_from_env()
    if chosen is None and LAST.exists():
        try:
            last = load_json(LAST)
            chosen = Path(last["config"])
            inv = inv or (Path(last["inventory"]) if last.get("inventory") else None)
        except ConfigError as exc:
            raise ConfigError(f"cannot read the last `up` ({exc.message}); pass CONFIG", file=str(LAST)) from None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"cannot read the last `up` ({exc}); pass CONFIG", file=str(LAST)) from None
    if chosen is None:
        raise ConfigError("no deployment given: pass CONFIG, -c FILE or set LAUNCHER_CONFIG (or run `up` here first)")
    return chosen, inv


def target(
    config: Path | None, config_opt: Path | None = None, inventory: Path | None = None, profile: str | None = None
) -> Target:
    """The deployment; `profile`: the one given (`up --profile`), else the one the last `up` of this file applied."""
    path, inv = resolve(config, config_opt, inventory)
    loaded = load_file(path, inv, (profile if profile is not None else remembered_profile(path)) or None)
    plan = build(loaded)
    return Target(path, inv, plan, for_plan(plan), loaded=loaded)


def read_routes(t: Target) -> None:
    """One round trip for the routes alone (`status`, `watch`): only where the plan needs them, for
    `network.interface: auto` (the ranks' env, and so their spec, names the interface)."""
    if t.plan.network_interface != "auto":
        return
    done, _ = t.fleet.run(t.route_prefix, sorted(fabric.route_targets(t.plan)), timeout=30).scripts()
    t.learn_routes({i: r.stdout for i, r in done.items()})


def remember(target: Target) -> None:
    """`up` remembers its file and inventory: `status`, `logs`, `down` run here then need neither."""
    LAST.parent.mkdir(exist_ok=True)
    inventory = target.inventory and (
        allocation.NAME if allocation.requested(target.inventory) else str(target.inventory.resolve())
    )
    LAST.write_text(
        json.dumps({"config": str(target.path.resolve()), "inventory": inventory, "profile": target.profile})
    )


@contextmanager
def connected(target: Target, connection: Connection) -> Iterator[Target]:
    """The target with a fleet of connections (opened on first use, closed on exit). A flag given on
    the command line wins over the files (node, then inventory `ssh:`), then the defaults."""
    # Imported here, not at the top: `plan` and `--help` never load the SSH libraries (start-up time).
    from launcher.transport.fleet import Fleet

    options = Options(
        parallel=connection.parallel,
        connect_timeout=connection.connect_timeout,
        host_key_policy=connection.host_key_policy,
    )
    with Fleet(target.plan.nodes, options) as fleet:
        target.fleet = fleet
        try:
            yield target
        finally:
            target.fleet = None
