"""Validated config -> plan: nodes resolved, groups placed, every service's argv and env computed."""

from __future__ import annotations

from launcher import engines, flagdrift, services
from launcher.config import DEFAULT_CONTAINER, ContainerSettings, GroupSpec, Loaded, NodeRef, is_secret_name
from launcher.engines import args as A
from launcher.engines.base import GroupContext
from launcher.errors import ConfigError
from launcher.model import Group, Node, Plan, Service

SGLANG_ENGINES = ("dynamo-sglang", "sglang")


def resolve_nodes(loaded: Loaded) -> list[Node]:
    where = loaded.inventory_file or loaded.file
    nodes: list[Node] = []
    seen_addr: dict[str, int] = {}
    seen_name: dict[str, int] = {}
    for i, spec in enumerate(loaded.nodes):
        name = spec.name or f"node{i}"
        key = f"nodes[{i}]"
        if spec.address in seen_addr:
            raise ConfigError(
                f"address {spec.address} is listed twice (also nodes[{seen_addr[spec.address]}])",
                file=where,
                key=f"{key}.address",
                line=loaded.line("nodes", i) if not loaded.inventory_file else None,
            )
        if name in seen_name:
            raise ConfigError(f"node name {name} is used twice", file=where, key=f"{key}.name")
        seen_addr[spec.address] = i
        seen_name[name] = i
        gpus = spec.gpus if spec.gpus is not None else loaded.spec.gpus_per_node
        nodes.append(
            Node(
                index=i,
                name=name,
                address=spec.address,
                ssh=loaded.ssh.merged(spec.ssh),
                gpus=gpus,
                ib_devices=tuple(spec.ib_devices or ()),
            )
        )
    return nodes


def find_node(nodes: list[Node], ref: NodeRef, loaded: Loaded, key: tuple[str | int, ...]) -> Node:
    for node in nodes:
        if ref in (node.index, node.name, node.address):
            return node
    names = ", ".join(n.name for n in nodes[:6]) + (" ..." if len(nodes) > 6 else "")
    raise ConfigError(
        f"no node {ref!r}: expected an index 0..{len(nodes) - 1}, a name ({names}) or an address",
        file=loaded.file,
        key=".".join(str(k) for k in key),
        line=loaded.line(*key),
    )


def place_groups(loaded: Loaded, nodes: list[Node]) -> dict[str, list[Node]]:
    """Explicit node lists first, then counts take the next free nodes in inventory order."""
    placed: dict[str, list[Node]] = {}
    owner: dict[int, str] = {}
    groups = loaded.spec.groups
    for name, group in groups.items():
        if isinstance(group.nodes, list):
            chosen = [find_node(nodes, ref, loaded, ("groups", name, "nodes", i)) for i, ref in enumerate(group.nodes)]
            if len({n.index for n in chosen}) != len(chosen):
                raise ConfigError(
                    "the same node is listed twice",
                    file=loaded.file,
                    key=f"groups.{name}.nodes",
                    line=loaded.line("groups", name, "nodes"),
                )
            placed[name] = chosen
    for name, chosen in placed.items():
        for node in chosen:
            _claim(loaded, owner, node, name, groups)
    for name, group in groups.items():
        if isinstance(group.nodes, int):
            free = [n for n in nodes if n.index not in owner]
            if len(free) < group.nodes:
                raise ConfigError(
                    f"asks for {group.nodes} node(s) but the inventory has {len(nodes)} and only {len(free)} are"
                    f" free after the groups before it",
                    file=loaded.file,
                    key=f"groups.{name}.nodes",
                    line=loaded.line("groups", name, "nodes"),
                )
            placed[name] = free[: group.nodes]
            for node in placed[name]:
                _claim(loaded, owner, node, name, groups)
    return {name: placed[name] for name in groups}


def _claim(loaded: Loaded, owner: dict[int, str], node: Node, name: str, groups: dict[str, GroupSpec]) -> None:
    """A node belongs to one group, unless both groups say which GPUs they use and those differ."""
    other = owner.get(node.index)
    if other is None:
        owner[node.index] = name
        return
    mine, theirs = groups[name].gpus, groups[other].gpus
    if mine is not None and theirs is not None and not set(mine) & set(theirs):
        return
    if not any(_uses_gpus(loaded, g) for g in (name, other)):
        return  # engines that need no GPU (the mocker) may share a node
    raise ConfigError(
        f"{node.label} is in groups {other} and {name}; a node belongs to one group unless both set disjoint `gpus`",
        file=loaded.file,
        key=f"groups.{name}.nodes",
        line=loaded.line("groups", name, "nodes"),
    )


def _uses_gpus(loaded: Loaded, group: str) -> bool:
    engine = engines.get(loaded.spec.groups[group].engine)
    return engine is None or (engine.needs_gpu and loaded.spec.gpus_per_node > 0)


def build(loaded: Loaded) -> Plan:
    spec = loaded.spec
    nodes = resolve_nodes(loaded)
    file = loaded.file
    base_container = spec.container.over(DEFAULT_CONTAINER)
    svc = spec.services
    out: list[Service] = []
    secrets = set(spec.secrets)
    secret_values = {name: v for name, v in loaded.secret_values.items() if len(v) >= MIN_SECRET_LEN}

    def holds_secret(value: str) -> bool:
        return any(v in value for v in secret_values.values())

    def env_of(*layers: dict, with_secrets: bool = False) -> tuple[dict[str, str], dict[str, str]]:
        """Merge env layers; secret-named entries go to the env file, never to the command line.

        Declared secrets reach the engines and the frontend (`with_secrets`), not etcd or NATS."""
        merged: dict[str, str] = {}
        for layer in layers:
            merged.update({k: _str(v) for k, v in layer.items()})
        # A secret under another name (`OPENAI_KEY: ${MY_API_KEY}`) is still a secret: its value decides.
        plain = {k: v for k, v in merged.items() if not is_secret_name(k, secrets) and not holds_secret(v)}
        hidden = {k: v for k, v in merged.items() if k not in plain}
        if with_secrets:
            hidden.update({k: v for k, v in loaded.secret_values.items() if k in secrets})
        return plain, hidden

    def container_of(override: ContainerSettings) -> ContainerSettings:
        merged = override.over(base_container)
        return merged.model_copy(update={"env": {}})

    def single(
        name: str,
        sspec,
        node: Node,
        command: list[str],
        probe,
        ports: list[int],
        *env_layers,
        with_secrets: bool = False,
    ) -> Service:
        """etcd, NATS or the frontend: one service on one node, no GPU."""
        plain, hidden = env_of(c_env(sspec.container, base_container), *env_layers, with_secrets=with_secrets)
        return Service(
            deployment=spec.deployment, service=name, role=name, node=node,
            image=sspec.image or spec.image or "", command=command, env=plain, secret_env=hidden,
            container=container_of(sspec.container.over(ContainerSettings(gpus="none"))), probe=probe,
            timeout=sspec.timeout, ports=ports,
        )  # fmt: skip

    # Scratch space of etcd/NATS: the container's own /tmp, or the process's private directory.
    scratch = "." if spec.runtime == "process" else "/tmp"
    etcd_url = nats_url = endpoint = None
    if svc.etcd.enabled:
        node = find_node(nodes, svc.etcd.node, loaded, ("services", "etcd", "node"))
        etcd_url = f"http://{node.address}:{svc.etcd.client_port}"
        out.append(
            single(
                "etcd",
                svc.etcd,
                node,
                services.etcd_command(svc.etcd, node, scratch),
                services.etcd_probe(svc.etcd, node),
                [svc.etcd.client_port, svc.etcd.peer_port],
            )
        )
    if svc.nats.enabled:
        node = find_node(nodes, svc.nats.node, loaded, ("services", "nats", "node"))
        nats_url = f"nats://{node.address}:{svc.nats.port}"
        out.append(
            single(
                "nats",
                svc.nats,
                node,
                services.nats_command(svc.nats, node, scratch),
                services.nats_probe(svc.nats, node),
                [svc.nats.port, svc.nats.monitor_port],
            )
        )
    if svc.frontend.enabled:
        node = find_node(nodes, svc.frontend.node, loaded, ("services", "frontend", "node"))
        try:
            command = services.frontend_command(svc.frontend, node)
        except ValueError as exc:
            raise ConfigError(
                str(exc), file=file, key="services.frontend.args", line=loaded.line("services", "frontend", "args")
            ) from None
        endpoint = f"http://{node.address}:{svc.frontend.port}"
        out.append(
            single(
                "frontend",
                svc.frontend,
                node,
                command,
                services.frontend_probe(svc.frontend, node),
                [svc.frontend.port],
                services.frontend_env(svc.frontend, node, etcd_url, nats_url),
                svc.frontend.env,
                with_secrets=True,
            )
        )

    groups: list[Group] = []
    warnings: list[str] = []
    findings: list[tuple[str, flagdrift.Finding]] = []
    placement = place_groups(loaded, nodes)
    contexts: dict[str, tuple[engines.Engine, GroupContext]] = {}
    for name, group in spec.groups.items():
        engine = engines.get(group.engine)
        if engine is None:
            import difflib

            close = difflib.get_close_matches(group.engine, list(engines.ENGINES), n=1)
            hint = f"did you mean '{close[0]}'? " if close else ""
            raise ConfigError(
                f"unknown engine {group.engine!r}: {hint}expected one of {', '.join(engines.ENGINES)}",
                file=file,
                key=f"groups.{name}.engine",
                line=loaded.line("groups", name, "engine"),
            )
        mode = group.mode or (name if name in ("prefill", "decode") else "agg")
        chosen = placement[name]
        gpus = group.gpus if group.gpus is not None else list(range(min(n.gpus for n in chosen)))
        if engine.needs_gpu:
            for node in chosen:
                bad = [g for g in gpus if g >= node.gpus]
                if bad or not gpus:
                    raise ConfigError(
                        f"{node.label} has {node.gpus} GPU(s); the group wants GPUs {gpus}",
                        file=file,
                        key=f"groups.{name}.gpus",
                        line=loaded.line("groups", name),
                    )
        try:
            argv = A.normalize(group.args)
        except ValueError as exc:
            raise ConfigError(
                f"cannot split args: {exc}",
                file=file,
                key=f"groups.{name}.args",
                line=loaded.line("groups", name, "args"),
            ) from None
        ctx = GroupContext(
            deployment=spec.deployment,
            file=file,
            name=name,
            spec=group,
            mode=mode,
            argv=argv,
            nodes=chosen,
            gpus=gpus,
            model=spec.model,
            etcd_endpoint=etcd_url,
            nats_url=nats_url,
            line=loaded.line("groups", name),
            versions=spec.versions,
        )
        warnings += engine.validate(ctx)
        contexts[name] = (engine, ctx)
        if engine.name in SGLANG_ENGINES and spec.versions.sglang:
            group_env = {**c_env(group.container, base_container), **{k: _str(v) for k, v in group.env.items()}}
            for finding in flagdrift.check(argv, group_env, spec.versions.sglang):
                findings.append((name, finding))
                warnings.append(f"groups.{name}: {finding}")
        gpu_select = None
        if not engine.needs_gpu:
            gpu_select = "none"
        elif group.gpus is not None:
            gpu_select = ",".join(str(g) for g in gpus)
        override = group.container
        if gpu_select and group.container.gpus is None:
            override = group.container.model_copy(update={"gpus": gpu_select})
        c = container_of(override)
        for rank, node in enumerate(chosen):
            plain, hidden = env_of(
                c_env(group.container, base_container), engine.env(ctx, rank), group.env, with_secrets=True
            )
            out.append(
                Service(
                    deployment=spec.deployment,
                    service=f"{name}-r{rank}",
                    role=mode if mode != "agg" else name,
                    node=node,
                    image=group.image or spec.image or "",
                    command=engine.command(ctx, rank),
                    env=plain,
                    secret_env=hidden,
                    container=c,
                    probe=engine.probe(ctx, rank),
                    timeout=group.timeout,
                    group=name,
                    rank=rank,
                    engine=engine.name,
                    ports=engine.ports(ctx, rank),
                )
            )
        groups.append(
            Group(
                name=name,
                engine=engine.name,
                mode=mode,
                node_indices=[n.index for n in chosen],
                gpus=gpus,
                expected_instances=engine.expected_instances(ctx),
                summary=engine.summary(ctx),
            )
        )

    if svc.router.enabled:
        router = router_service(loaded, nodes, contexts, single)
        out.append(router)
        endpoint = f"http://{router.node.address}:{svc.router.port}"

    check_ports(out, loaded)
    check_no_secret_on_command_line(out, secret_values, loaded)
    model_name = spec.model.name if spec.model else None
    return Plan(
        deployment=spec.deployment,
        file=file,
        nodes=nodes,
        services=out,
        groups=groups,
        state_dir=spec.state_dir,
        runtime=spec.runtime,
        python_env=spec.python_env,
        model_name=model_name,
        model_path=spec.model.path if spec.model else None,
        endpoint=endpoint,
        warnings=warnings,
        findings=findings,
    )


# Shorter values (test placeholders like "x") would match everywhere; no real token is this short.
MIN_SECRET_LEN = 4


def check_no_secret_on_command_line(services_: list[Service], secret_values: dict[str, str], loaded: Loaded) -> None:
    """Engine args, run_options, volumes and the image are on the `docker run` line, so in `ps` and
    `docker inspect`: a secret's value there is refused (env values are routed to the 0600 file)."""
    for s in services_:
        exposed = [*s.command, *(s.container.run_options or []), *(s.container.volumes or []), s.image]
        for name, value in secret_values.items():
            if any(value in part for part in exposed):
                where = f"groups.{s.group}" if s.group else f"services.{s.role}"
                raise ConfigError(
                    f"the value of secret {name} would be on the command line of {s.name} (its args, "
                    "run_options, volumes or image), where `ps` and `docker inspect` show it: pass it through "
                    "`env` instead (env values holding a secret go to the node's 0600 env file)",
                    file=loaded.file,
                    key=where,
                )


def router_service(loaded: Loaded, nodes: list[Node], contexts: dict, single) -> Service:
    """The SGLang P/D router: every `sglang` prefill group's rank 0 (with its bootstrap port) and decode's."""
    spec = loaded.spec
    rspec = spec.services.router
    key = ("services", "router")

    def error(message: str, sub: str = "") -> ConfigError:
        return ConfigError(message, file=loaded.file, key=".".join([*key, sub] if sub else key), line=loaded.line(*key))

    if spec.services.frontend.enabled:
        raise error(
            "the router fronts plain `sglang` groups and Dynamo's frontend fronts Dynamo workers: disable one"
            " (services.frontend.enabled: false)",
            "enabled",
        )
    prefill, decode = [], []
    for engine, ctx in contexts.values():
        if engine.name != "sglang" or ctx.mode not in ("prefill", "decode"):
            continue
        url = f"http://{ctx.leader.address}:{engine.port(ctx)}"
        if ctx.mode == "prefill":
            prefill.append(services.Worker(url, engine.bootstrap_port(ctx)))
        else:
            decode.append(services.Worker(url))
    if not prefill or not decode:
        raise error("the P/D router needs at least one `sglang` group with mode prefill and one with mode decode")
    node = find_node(nodes, rspec.node, loaded, (*key, "node"))
    try:
        command = services.router_command(
            rspec, node, prefill, decode, spec.versions.sglang_router, spec.versions.sglang
        )
    except ValueError as exc:
        raise error(str(exc)) from None
    return single(
        "router",
        rspec,
        node,
        command,
        services.router_probe(rspec, node),
        services.router_ports(rspec),
        rspec.env,
    )


def c_env(override: ContainerSettings, base: ContainerSettings) -> dict:
    return {**(base.env or {}), **(override.env or {})}


def check_ports(services_: list[Service], loaded: Loaded) -> None:
    """With host networking every port is the node's: two services wanting one port cannot both start."""
    used: dict[tuple[int, int], Service] = {}
    for service in services_:
        if service.container.network not in (None, "host"):
            continue
        for port in service.ports:
            key = (service.node.index, port)
            other = used.get(key)
            if other is not None and other is not service:
                raise ConfigError(
                    f"{service.node.label}: {other.service} and {service.service} both want port {port}",
                    file=loaded.file,
                    key=_port_key(service),
                )
            used[key] = service


def _port_key(service: Service) -> str:
    if service.group:
        return f"groups.{service.group}"
    return f"services.{service.role}"


def _str(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
