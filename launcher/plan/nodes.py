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


def place_groups(loaded: Loaded, nodes: list[Node]) -> dict[str, list[list[Node]]]:
    """Each group's nodes, one list per replica: explicit node lists first, then counts take the next
    free nodes in inventory order (a count is per replica)."""
    placed: dict[str, list[list[Node]]] = {}
    owner: dict[int, tuple[str, int]] = {}
    groups = loaded.spec.groups
    for name, group in groups.items():
        if isinstance(group.nodes, list):
            placed[name] = _listed(loaded, nodes, name, group)
    for name, replicas in placed.items():
        for k, chosen in enumerate(replicas):
            for node in chosen:
                _claim(loaded, owner, node, (name, k), groups)
    for name, group in groups.items():
        if isinstance(group.nodes, int):
            wanted = group.nodes * group.replicas
            free = [n for n in nodes if n.index not in owner]
            if len(free) < wanted:
                asks = f"{group.replicas} replicas of {group.nodes}" if group.replicas > 1 else str(group.nodes)
                raise _group_nodes_error(
                    loaded,
                    name,
                    f"asks for {asks} node(s) but the inventory has {len(nodes)} and only {len(free)} are"
                    f" free after the groups before it",
                )
            placed[name] = [free[k * group.nodes : (k + 1) * group.nodes] for k in range(group.replicas)]
            for k, chosen in enumerate(placed[name]):
                for node in chosen:
                    _claim(loaded, owner, node, (name, k), groups)
    return {name: placed[name] for name in groups}


def _listed(loaded: Loaded, nodes: list[Node], name: str, group: GroupSpec) -> list[list[Node]]:
    """A group's node list, one list per replica: as written (`[[a, b], [c, d]]`), or a flat list
    packed in order (N replicas of len/N nodes each); for an engine that needs no GPU, a flat list that
    does not divide by N is every replica's (they share its nodes, on ports apart)."""
    if group.per_replica_lists:
        replicas = [
            [node_at(nodes, ref, loaded, ("groups", name, "nodes", k, i)) for i, ref in enumerate(refs)]
            for k, refs in enumerate(group.nodes)  # type: ignore[arg-type]
        ]
        sizes = sorted({len(r) for r in replicas})
        if len(sizes) > 1:
            raise _group_nodes_error(
                loaded, name, f"every replica needs the same number of nodes; the lists have {sizes} nodes"
            )
    else:
        flat = [node_at(nodes, ref, loaded, ("groups", name, "nodes", i)) for i, ref in enumerate(group.nodes)]  # type: ignore[arg-type]
        if len(flat) % group.replicas and not _uses_gpus(loaded, name):
            # engines with no GPU (the local tier's mockers): every replica on the listed nodes, sharing them
            return [list(flat) for _ in range(group.replicas)]
        if len(flat) % group.replicas:
            raise _group_nodes_error(
                loaded,
                name,
                f"{group.replicas} replicas need the same number of nodes each: the list has {len(flat)} node(s),"
                f" not a multiple of {group.replicas} (or write one list per replica)",
            )
        size = len(flat) // group.replicas
        replicas = [flat[k * size : (k + 1) * size] for k in range(group.replicas)]
    for chosen in replicas:
        if len({n.index for n in chosen}) != len(chosen):
            raise _group_nodes_error(loaded, name, "the same node is listed twice")
    return replicas


def _group_nodes_error(loaded: Loaded, group: str, message: str) -> ConfigError:
    return ConfigError(
        message, file=loaded.file, key=f"groups.{group}.nodes", line=loaded.line("groups", group, "nodes")
    )


def _claim(
    loaded: Loaded, owner: dict[int, tuple[str, int]], node: Node, unit: tuple[str, int], groups: dict[str, GroupSpec]
) -> None:
    """A node belongs to one replica of one group, unless both groups say which GPUs they use and those
    differ, or neither uses a GPU (the mocker): then groups, and replicas, may share a node."""
    other = owner.get(node.index)
    if other is None:
        owner[node.index] = unit
        return
    (name, replica), (other_name, other_replica) = unit, other
    if other_name == name:
        if _uses_gpus(loaded, name):
            raise _group_nodes_error(
                loaded,
                name,
                f"{node.label} is in replicas {other_replica} and {replica}; replicas of a group never share a node",
            )
        return
    mine, theirs = groups[name].gpus, groups[other_name].gpus
    if mine is not None and theirs is not None and not set(mine) & set(theirs):
        return
    if not any(_uses_gpus(loaded, g) for g in (name, other_name)):
        return  # engines that need no GPU (the mocker) may share a node
    raise _group_nodes_error(
        loaded,
        name,
        f"{node.label} is in groups {other_name} and {name}; a node belongs to one group unless both set disjoint"
        " `gpus`",
    )


def _uses_gpus(loaded: Loaded, group: str) -> bool:
    engine = engines.get(loaded.spec.groups[group].engine)
    return engine is None or (engine.needs_gpu and loaded.spec.gpus_per_node > 0)
