"""Validated config -> plan: nodes resolved, groups placed, every service's argv and env computed.

`build` runs the steps in order: the single-node services (etcd, NATS, the frontend), every worker
group rank by rank, the router (which needs the groups' addresses), then the whole-plan checks.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field

from launcher.config.load import Loaded
from launcher.config.redact import is_secret_name, searchable
from launcher.config.schema import (
    DEFAULT_CONTAINER,
    ContainerSettings,
    GroupSpec,
    ProfileGroup,
    ServiceSpec,
    WatchPolicy,
    as_text,
)
from launcher.errors import ConfigError
from launcher.plan import drain, engines, fabric, flagdrift, infra, metrics
from launcher.plan.checks import check_no_secret_on_command_line, check_ports
from launcher.plan.engines import args as A
from launcher.plan.engines.base import Engine, GroupContext
from launcher.plan.nodes import node_at, place_groups, resolve_nodes
from launcher.plan.types import Group, Node, Plan, Service

SGLANG_ENGINES = ("dynamo-sglang", "sglang")
VLLM_ENGINES = ("dynamo-vllm", "vllm")
# Replicas of a group that share a node (only engines that need no GPU may) are apart by this many
# ports: replica K listens on the group's ports + K x REPLICA_PORT_STEP.
REPLICA_PORT_STEP = 100


def _default(engine: Engine, what: str, ctx: GroupContext) -> int | None:
    """The port an engine uses when the file names none (`bootstrap_port`, `port`), if it has one."""
    method = getattr(engine, what, None)
    return method(ctx) if callable(method) else None


def build(
    loaded: Loaded, interfaces: dict[int, dict[str, str]] | None = None, substitutes: dict[int, int] | None = None
) -> Plan:
    """The plan of a loaded file. `interfaces` (node index -> leader address -> interface name) are
    facts read on the nodes by `up`/`doctor`, for `network.interface: auto`. `substitutes` (lost node
    index -> spare node index): the group ranks placed on a lost node are placed on its spare instead
    (checked by launcher.plan.spares, which is how callers give them)."""
    b = Builder(loaded, resolve_nodes(loaded), interfaces=interfaces or {}, substitutes=dict(substitutes or {}))
    urls = b.add_infra()
    b.add_groups(urls)
    if loaded.spec.services.router.enabled:
        urls["endpoint"] = b.add_router()
    b.add_metrics()
    check_ports(b.services, loaded)
    check_no_secret_on_command_line(b.services, b.secret_values, loaded)
    spec = loaded.spec
    return Plan(
        deployment=spec.deployment,
        file=loaded.file,
        nodes=b.nodes,
        services=b.services,
        groups=b.groups,
        state_dir=spec.state_dir,
        runtime=spec.runtime,
        python_env=spec.python_env,
        model_name=spec.model.name if spec.model else None,
        model_path=spec.model.path if spec.model else None,
        endpoint=urls.get("endpoint"),
        profile=loaded.profile,
        warnings=b.warnings,
        findings=b.findings,
        peers=fabric.collect_peers(b.groups, b.services, b.served) + b.router_peers,
        network_interface=spec.network.interface,
        interfaces=b.interfaces,
        fabric=spec.fabric,
        secrets=dict(loaded.secret_values),
        secret_sources=secret_sources(b.services, loaded),
        drain_timeout=spec.drain_timeout,
        migration_limit=spec.services.frontend.migration_limit if spec.services.frontend.enabled else None,
        watch_webhook_env=b.watch_webhook(),
        lost_after=spec.watch.lost_after,
        substitutes=b.substitutes,
        flag_tables=flag_table_use(spec),
    )


def flag_table_use(spec) -> list[flagdrift.TableUse]:
    """Which flag tables checked the engine groups' flags, for the declared releases (none: no group of
    that engine, or no declared release, so nothing was checked)."""
    used = []
    for engine, members, version in (("sglang", SGLANG_ENGINES, spec.versions.sglang),
                                      ("vllm", VLLM_ENGINES, spec.versions.vllm)):  # fmt: skip
        if version and any(g.engine in members for g in spec.groups.values()):
            use = flagdrift.table_use(version, engine)
            used += [use] if use is not None else []
    return used


def secret_sources(services: list[Service], loaded: Loaded) -> dict[str, str]:
    """Each secret env name of the plan -> the variable the user holds its value in (environment or
    .env): the name itself, or the one it was written from (`OPENAI_KEY: ${MY_KEY}` -> MY_KEY). What
    the exports and the node scripts ask the user to set. Found by value: the services hold values."""
    sources: dict[str, str] = {}
    for s in services:
        for name, value in s.secret_env.items():
            if name in sources:
                continue
            if loaded.held.get(name) == value:
                sources[name] = name
                continue
            same = sorted(n for n, v in loaded.held.items() if v == value)
            # a declared or secret-looking variable before any other that happens to hold the same value
            ranked = [n for n in same if n in loaded.secret_values] + same
            sources[name] = ranked[0] if ranked else name
    return sources


@dataclass
class Builder:
    """The plan under construction, and the rules every service is built by (env, container, secrets)."""

    loaded: Loaded
    nodes: list[Node]
    services: list[Service] = field(default_factory=list)
    groups: list[Group] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    findings: list[tuple[str, flagdrift.Finding]] = field(default_factory=list)
    # name -> (engine, context) of every group, for the router
    contexts: dict[str, tuple[Engine, GroupContext]] = field(default_factory=dict)
    interfaces: dict[int, dict[str, str]] = field(default_factory=dict)
    served: list[fabric.Served] = field(default_factory=list)  # ports ranks serve to other nodes
    router_peers: list = field(default_factory=list)  # the router's worker URLs, as peer ports
    substitutes: dict[int, int] = field(default_factory=dict)  # lost node index -> its spare's

    def __post_init__(self) -> None:
        spec = self.loaded.spec
        self.spec = spec
        self.base_container = spec.container.over(DEFAULT_CONTAINER)
        self.secret_names = set(spec.secrets)
        # Values too short to search for (test placeholders like "x", "true") would match everywhere.
        self.secret_values = {k: v for k, v in self.loaded.secret_values.items() if searchable(v)}

    # -- rules shared by every service ----------------------------------------------------------

    def error(self, message: str, *key: str | int) -> ConfigError:
        return ConfigError(
            message, file=self.loaded.file, key=".".join(str(k) for k in key), line=self.loaded.line(*key)
        )

    def env(self, *layers: dict, with_secrets: bool = False) -> tuple[dict[str, str], dict[str, str]]:
        """Merge env layers into (plain, secret): secret-named entries, and any value holding a
        secret's value (`OPENAI_KEY: ${MY_API_KEY}`), go to the env file, never to the command line.

        Declared secrets reach the engines and the frontend (`with_secrets`), not etcd or NATS."""
        merged: dict[str, str] = {}
        for layer in layers:
            merged.update({k: as_text(v) for k, v in layer.items()})
        plain = {k: v for k, v in merged.items() if not self._secret(k, v)}
        hidden = {k: v for k, v in merged.items() if k not in plain}
        if with_secrets:
            hidden.update({k: v for k, v in self.loaded.secret_values.items() if k in self.secret_names})
        return plain, hidden

    def _secret(self, name: str, value: str) -> bool:
        return is_secret_name(name, self.secret_names) or any(v in value for v in self.secret_values.values())

    def container_env(self, override: ContainerSettings) -> dict:
        return {**(self.base_container.env or {}), **(override.env or {})}

    def container(self, override: ContainerSettings) -> ContainerSettings:
        """The file's container settings under the override; env is kept apart (it goes to `env`)."""
        return override.over(self.base_container).model_copy(update={"env": {}})

    # -- etcd, NATS, the frontend, the router ---------------------------------------------------

    def single(self, role: str, spec: ServiceSpec, node: Node, part: infra.Infra, *env_layers: dict) -> Service:
        """One service on one node, no GPU. Of these, declared secrets reach the frontend only."""
        with_secrets = role == "frontend"
        plain, hidden = self.env(self.container_env(spec.container), part.env, *env_layers, with_secrets=with_secrets)
        return Service(
            deployment=self.spec.deployment, service=role, role=role, node=node,
            image=spec.image or self.spec.image or "", command=part.command, env=plain, secret_env=hidden,
            container=self.container(spec.container.over(ContainerSettings(gpus="none"))), probe=part.probe,
            timeout=spec.timeout, ports=part.ports,
        )  # fmt: skip

    def add_infra(self) -> dict[str, str | None]:
        """etcd and NATS, then the frontend (which points at both); returns their URLs."""
        svc = self.spec.services
        # Scratch space of etcd/NATS: the container's own /tmp, or the process's private directory.
        scratch = "." if self.spec.runtime == "process" else "/tmp"
        urls: dict[str, str | None] = {"etcd": None, "nats": None, "endpoint": None}
        for role, spec, describe in (("etcd", svc.etcd, infra.etcd), ("nats", svc.nats, infra.nats)):
            if spec.enabled:
                node = node_at(self.nodes, spec.node, self.loaded, ("services", role, "node"))
                part = describe(spec, node, scratch)
                self.services.append(self.single(role, spec, node, part))
                urls[role] = part.url
        if svc.frontend.enabled:
            node = node_at(self.nodes, svc.frontend.node, self.loaded, ("services", "frontend", "node"))
            try:
                part = infra.frontend(svc.frontend, node, urls["etcd"], urls["nats"])
            except ValueError as exc:
                raise self.error(str(exc), "services", "frontend", "args") from None
            self.services.append(self.single("frontend", svc.frontend, node, part, svc.frontend.env))
            urls["endpoint"] = part.url
        return urls

    def add_router(self) -> str | None:
        """SGLang's P/D router: every `sglang` prefill group's rank 0 (with its bootstrap port) and decode's."""
        spec, rspec = self.spec, self.spec.services.router
        if spec.services.frontend.enabled:
            raise self.error(
                "the router fronts plain `sglang` groups and Dynamo's frontend fronts Dynamo workers: disable one"
                " (services.frontend.enabled: false)",
                "services",
                "router",
                "enabled",
            )
        prefill, decode, workers = [], [], []
        for engine, ctx in self.contexts.values():
            if engine.name != "sglang" or ctx.mode not in ("prefill", "decode"):
                continue
            url = f"http://{ctx.leader.address}:{engine.port(ctx)}"
            rank0 = next(s for s in self.services if s.group == ctx.unit and s.rank == 0)
            workers.append((rank0, engine.port(ctx)))
            if ctx.mode == "prefill":
                prefill.append(infra.Worker(url, engine.bootstrap_port(ctx)))
            else:
                decode.append(infra.Worker(url))
        if not prefill or not decode:
            raise self.error(
                "the P/D router needs at least one `sglang` group with mode prefill and one with mode decode",
                "services",
                "router",
            )
        node = node_at(self.nodes, rspec.node, self.loaded, ("services", "router", "node"))
        try:
            part = infra.router(rspec, node, prefill, decode, spec.versions.sglang_router, spec.versions.sglang)
        except ValueError as exc:
            raise self.error(str(exc), "services", "router") from None
        router = self.single("router", rspec, node, part, rspec.env)
        self.services.append(router)
        self.router_peers = fabric.router_uses(router, workers)
        return part.url

    def grafana_password(self, m) -> str:
        """Grafana's admin password: a declared secret, reaching Grafana through the 0600 env file only
        (its default admin/admin would be open to anyone who reaches the port)."""
        key = ("metrics", "grafana_admin_password_env")
        name = m.grafana_admin_password_env
        if name is None:
            raise self.error("grafana: true needs the name of a secret holding Grafana's admin password", *key)
        if name not in self.secret_names:
            raise self.error(f"{name}: expected a secret declared under `secrets:` (Grafana's admin password)", *key)
        return self.loaded.secret_values[name]

    def add_metrics(self) -> None:
        """`metrics:`: Grafana (pointed at the deployment's Prometheus), then Prometheus, which scrapes
        every service with a metrics endpoint, itself and Grafana included."""
        m = self.spec.metrics
        if not m.prometheus:
            return
        node = self.head() if m.node is None else node_at(self.nodes, m.node, self.loaded, ("metrics", "node"))
        scratch = "." if self.spec.runtime == "process" else "/tmp"
        gpu_nodes = [n for n in self.nodes if n.gpus > 0 and any(s.node is n and s.group for s in self.services)]
        for other, port, on in (("prometheus", m.port, True), ("grafana", m.grafana_port, m.grafana)):
            if on and m.dcgm_exporter_port == port:
                raise self.error(
                    f"the DCGM exporter and {other} both want port {port} (Prometheus' `port`, Grafana's "
                    "`grafana_port`): expected another port", "metrics", "dcgm_exporter_port"
                )  # fmt: skip
        prometheus = metrics.prometheus(m, node, scratch, config="")
        if m.grafana:
            part = metrics.grafana(m, node, scratch, prometheus.url or "", gpu_panels=bool(m.dcgm_exporter_port))
            grafana = ServiceSpec(node=node.index, image=m.grafana_image or m.image, timeout=m.timeout)
            service = self.single("grafana", grafana, node, part)
            service.secret_env[metrics.GRAFANA_PASSWORD_ENV] = self.grafana_password(m)
            self.services.append(service)
        spec = ServiceSpec(node=node.index, image=m.image, timeout=m.timeout)
        service = self.single("prometheus", spec, node, prometheus)
        targets = metrics.scrape_targets([*self.services, service])
        service.env[metrics.PROMETHEUS_CONFIG_ENV] = metrics.prometheus_config(targets, m, gpu_nodes)
        self.services.append(service)

    def head(self) -> Node:
        """The node running etcd (where the lock lives), else node 0."""
        etcd = next((s for s in self.services if s.role == "etcd"), None)
        return etcd.node if etcd is not None else self.nodes[0]

    # -- worker groups --------------------------------------------------------------------------

    def add_groups(self, urls: dict[str, str | None]) -> None:
        """Every group, replica by replica: each replica a complete instance with its own leader."""
        placement = place_groups(self.loaded, self.nodes)
        swap = self.substitutes  # lost node -> spare: the ranks placed on a lost node go to its spare
        for replicas in placement.values():
            replicas[:] = [[self.nodes[swap.get(n.index, n.index)] for n in nodes] for nodes in replicas]
        for name, group in self.spec.groups.items():
            engine = self.engine(name, group)
            first: GroupContext | None = None
            for replica, chosen in enumerate(placement[name]):
                spec = group if first is None else self.replica_spec(group, engine, first, placement[name], replica)
                ctx = self.context(name, spec, engine, chosen, urls, replica)
                warnings = engine.validate(ctx)
                if first is None:  # the same file entry: its warnings and flag findings once
                    first = ctx
                    self.warnings += warnings
                    self.check_flags(name, group, ctx)
                self.contexts[ctx.unit] = (engine, ctx)
                self.add_ranks(spec, engine, ctx)
                self.groups.append(self.group_of(spec, engine, ctx))

    def group_of(self, spec: GroupSpec, engine: Engine, ctx: GroupContext) -> Group:
        return Group(
            name=ctx.unit,
            engine=engine.name,
            mode=ctx.mode,
            node_indices=[n.index for n in ctx.nodes],
            gpus=ctx.gpus,
            expected_instances=engine.expected_instances(ctx),
            summary=engine.summary(ctx),
            rendezvous=self.rendezvous(spec, engine, ctx),
            dist_init_port=spec.dist_init_port,
            base=ctx.name,
            replica=ctx.replica,
            replicas=ctx.replicas,
            watch=self.watch_policy(ctx.name),
        )

    def watch_policy(self, group: str) -> WatchPolicy:
        """The group's `watch:` keys over the deployment's."""
        mine = self.spec.groups[group].watch.model_dump(exclude_none=True)
        shared = self.spec.watch.model_dump(exclude_none=True, exclude={"webhook_url_env", "lost_after"})
        return WatchPolicy(**{**shared, **mine})

    def watch_webhook(self) -> str | None:
        """watch.webhook_url_env: a declared secret whose value is an http(s) URL (checked here, never shown)."""
        name, key = self.spec.watch.webhook_url_env, ("watch", "webhook_url_env")
        if name is None:
            return None
        if name not in self.secret_names:
            raise self.error(f"{name}: expected a secret declared under `secrets:` (the alert webhook's URL)", *key)
        if not self.loaded.secret_values[name].startswith(("http://", "https://")):
            raise self.error(f"the secret {name} must hold an http:// or https:// URL (its value is not shown)", *key)
        return name

    def replica_spec(
        self, group: GroupSpec, engine: Engine, first: GroupContext, placed: list[list[Node]], replica: int
    ) -> GroupSpec:
        """Replica K's group entry: the group's own where its replicas are on distinct nodes (they may
        reuse its ports); where they share a node (an engine with no GPU, e.g. the local tier's mockers)
        every port of replica K is the group's + K x REPLICA_PORT_STEP, its engine's defaults included."""
        indices = [n.index for chosen in placed for n in chosen]
        if len(set(indices)) == len(indices):
            return group
        shift = replica * REPLICA_PORT_STEP
        update: dict[str, int] = {"dist_init_port": group.dist_init_port + shift}
        defaults = {
            "bootstrap_port": group.bootstrap_port or _default(engine, "bootstrap_port", first),
            "port": group.port or _default(engine, "port", first),
            "system_port": group.system_port,
        }
        update.update({k: v + shift for k, v in defaults.items() if v is not None})
        for key, value in update.items():
            highest = 32767 if key == "system_port" else 65535
            if value > highest:
                raise self.error(
                    f"the replicas share a node, so replica {replica}'s {key} is {value} ({key} + {replica} x"
                    f" {REPLICA_PORT_STEP}), above {highest}: expected a lower {key} or fewer replicas",
                    "groups",
                    first.name,
                    "replicas",
                )
        return group.model_copy(update=update)

    @staticmethod
    def rendezvous(group: GroupSpec, engine: Engine, ctx: GroupContext) -> bool:
        """Does the fabric check prove this group's rendezvous? Ranks on more than one node whose engine
        rendezvous (or a `command` group that asks, `fabric: true`), unless the file says `fabric: false`."""
        wanted = engine.rendezvous if group.fabric is None else group.fabric
        return wanted and ctx.nnodes > 1

    def engine(self, name: str, group: GroupSpec) -> Engine:
        engine = engines.get(group.engine)
        if engine is None:
            close = difflib.get_close_matches(group.engine, list(engines.ENGINES), n=1)
            hint = f"did you mean '{close[0]}'? " if close else ""
            raise self.error(
                f"unknown engine {group.engine!r}: {hint}expected one of {', '.join(engines.ENGINES)}",
                "groups",
                name,
                "engine",
            )
        return engine

    def context(
        self,
        name: str,
        group: GroupSpec,
        engine: Engine,
        chosen: list[Node],
        urls: dict[str, str | None],
        replica: int = 0,
    ) -> GroupContext:
        gpus = group.gpus if group.gpus is not None else list(range(min(n.gpus for n in chosen)))
        if engine.needs_gpu:
            for node in chosen:
                if not gpus or any(g >= node.gpus for g in gpus):
                    raise ConfigError(
                        f"{node.label} has {node.gpus} GPU(s); the group wants GPUs {gpus}",
                        file=self.loaded.file,
                        key=f"groups.{name}.gpus",
                        line=self.loaded.line("groups", name),
                    )
        try:
            argv = A.normalize(group.args)
        except ValueError as exc:
            raise self.error(f"cannot split args: {exc}", "groups", name, "args") from None
        argv = A.override(argv, self.profile_of(name).args)
        return GroupContext(
            deployment=self.spec.deployment,
            file=self.loaded.file,
            name=name,
            spec=group,
            mode=group.mode or (name if name in ("prefill", "decode") else "agg"),
            argv=argv,
            nodes=chosen,
            gpus=gpus,
            model=self.spec.model,
            etcd_endpoint=urls["etcd"],
            nats_url=urls["nats"],
            line=self.loaded.line("groups", name),
            versions=self.spec.versions,
            replica=replica,
            replicas=group.replicas,
        )

    def profile_of(self, group: str) -> ProfileGroup:
        """What the applied profile (if any) changes in this group."""
        profile = self.loaded.profile
        return self.spec.profiles[profile].get(group, ProfileGroup()) if profile else ProfileGroup()

    def check_flags(self, name: str, group: GroupSpec, ctx: GroupContext) -> None:
        """Engine flags and env vars that the declared SGLang (or vLLM) release renamed or removed."""
        engine_name, versions = group.engine, self.spec.versions
        family, version = ("sglang", versions.sglang) if engine_name in SGLANG_ENGINES else ("vllm", versions.vllm)
        if engine_name not in SGLANG_ENGINES + VLLM_ENGINES or not version:
            return
        layers = (group.env, self.profile_of(name).env)
        env = {**self.container_env(group.container), **{k: as_text(v) for layer in layers for k, v in layer.items()}}
        for finding in flagdrift.check(ctx.argv, env, version, family):
            self.findings.append((name, finding))
            self.warnings.append(f"groups.{name}: {finding}")

    def add_ranks(self, group: GroupSpec, engine: Engine, ctx: GroupContext) -> None:
        """One service per node of the group, each with its rank's argv, env and probe."""
        container = self.container(self.group_container(group, engine, ctx))
        self.check_interface_env(group, ctx)
        for rank, node in enumerate(ctx.nodes):
            network = fabric.interface_env(self.spec.network.interface, self.interfaces, node, ctx.leader)
            leader = group.leader.env if rank == 0 else {}
            layers = (
                self.container_env(group.container),
                engine.env(ctx, rank),
                network,
                drain.worker_env(engine.name, self.spec.drain_timeout),
                group.env,
            )
            layers += (self.profile_of(ctx.name).env, {k: v for k, v in leader.items() if v is not None})
            plain, hidden = self.env(*layers, with_secrets=True)
            for name in [k for k, v in leader.items() if v is None]:  # null: rank 0 runs without it
                plain.pop(name, None)
                hidden.pop(name, None)
            service = Service(
                deployment=self.spec.deployment,
                service=f"{ctx.unit}-r{rank}",
                role=ctx.mode if ctx.mode != "agg" else ctx.name,
                node=node,
                image=group.image or self.spec.image or "",
                command=engine.command(ctx, rank),
                env=plain,
                secret_env=hidden,
                container=self.leader_container(container, group.leader.volumes) if rank == 0 else container,
                probe=engine.probe(ctx, rank),
                timeout=group.timeout,
                group=ctx.unit,
                rank=rank,
                engine=engine.name,
                ports=engine.ports(ctx, rank),
                replica=ctx.replica if ctx.replicas > 1 else None,
            )
            self.services.append(service)
            for what, port in engine.peer_ports(ctx, rank):
                self.served.append(fabric.Served(service, what, port, node.address))

    def check_interface_env(self, group: GroupSpec, ctx: GroupContext) -> None:
        """`network.interface` sets the interface variables: the same names written by hand as well
        would leave two answers to one question."""
        if self.spec.network.interface is None:
            return
        places = (
            (("groups", ctx.name, "env"), group.env),
            (("groups", ctx.name, "container", "env"), group.container.env or {}),
            (("container", "env"), self.spec.container.env or {}),
        )
        for key, env in places:
            for name in fabric.IFNAME_VARS:
                if name in env:
                    raise self.error(
                        f"{name} is set by network.interface ({self.spec.network.interface}); remove one of them",
                        *key,
                        name,
                    )

    @staticmethod
    def leader_container(container: ContainerSettings, volumes: list[str]) -> ContainerSettings:
        """Rank 0's container: the leader's volumes in place of the group's at the same container path."""
        if not volumes:
            return container
        targets = {v.split(":")[1] for v in volumes}
        kept = [v for v in container.volumes or [] if v.split(":")[1] not in targets]
        return container.model_copy(update={"volumes": kept + volumes})

    @staticmethod
    def group_container(group: GroupSpec, engine: Engine, ctx: GroupContext) -> ContainerSettings:
        """The group's container settings, with the GPUs it uses (none for engines that need none)."""
        if group.container.gpus is not None:
            return group.container
        if not engine.needs_gpu:
            return group.container.model_copy(update={"gpus": "none"})
        if group.gpus is not None:
            return group.container.model_copy(update={"gpus": ",".join(str(g) for g in ctx.gpus)})
        return group.container
