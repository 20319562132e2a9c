"""Nodes of the plan: the inventory's entries resolved, and worker groups placed on them."""

from __future__ import annotations

from launcher.config.load import Loaded
from launcher.config.schema import GroupSpec, NodeRef
from launcher.errors import ConfigError
from launcher.plan import engines
from launcher.plan.types import Node, find_node


def resolve_nodes(loaded: Loaded) -> list[Node]:
    """The file's (or inventory's) nodes, indexed in order, names defaulted, duplicates refused."""
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
        nodes.append(
            Node(
                index=i,
                name=name,
                address=spec.address,
                ssh=loaded.ssh.merged(spec.ssh),
                gpus=spec.gpus if spec.gpus is not None else loaded.spec.gpus_per_node,
                ib_devices=tuple(spec.ib_devices or ()),
            )
        )
    return nodes


def node_at(nodes: list[Node], ref: NodeRef, loaded: Loaded, key: tuple[str | int, ...]) -> Node:
    """The node `ref` (index, name or address) written at `key` in the file; bad input is exit 2."""
    node = find_node(nodes, ref)
    if node is not None:
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
            chosen = [node_at(nodes, ref, loaded, ("groups", name, "nodes", i)) for i, ref in enumerate(group.nodes)]
            if len({n.index for n in chosen}) != len(chosen):
                raise _group_nodes_error(loaded, name, "the same node is listed twice")
            placed[name] = chosen
    for name, chosen in placed.items():
        for node in chosen:
            _claim(loaded, owner, node, name, groups)
    for name, group in groups.items():
        if isinstance(group.nodes, int):
            free = [n for n in nodes if n.index not in owner]
            if len(free) < group.nodes:
                raise _group_nodes_error(
                    loaded,
                    name,
                    f"asks for {group.nodes} node(s) but the inventory has {len(nodes)} and only {len(free)} are"
                    f" free after the groups before it",
                )
            placed[name] = free[: group.nodes]
            for node in placed[name]:
                _claim(loaded, owner, node, name, groups)
    return {name: placed[name] for name in groups}


def _group_nodes_error(loaded: Loaded, group: str, message: str) -> ConfigError:
    return ConfigError(
        message, file=loaded.file, key=f"groups.{group}.nodes", line=loaded.line("groups", group, "nodes")
    )


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
    raise _group_nodes_error(
        loaded,
        name,
        f"{node.label} is in groups {other} and {name}; a node belongs to one group unless both set disjoint `gpus`",
    )


def _uses_gpus(loaded: Loaded, group: str) -> bool:
    engine = engines.get(loaded.spec.groups[group].engine)
    return engine is None or (engine.needs_gpu and loaded.spec.gpus_per_node > 0)
