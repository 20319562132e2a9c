"""A Slurm allocation as an inventory: what `scontrol` and the job's variables say, parsed (pure).

`config/allocation` runs `scontrol show hostnames "$SLURM_JOB_NODELIST"` and `scontrol show node -o`;
here their output becomes nodes (NodeName, NodeAddr) with the job's GPUs per node."""

from __future__ import annotations

import re

from launcher.config.schema import InventorySpec, NodeSpec


def hostnames(output: str) -> list[str]:
    return [line.strip() for line in output.splitlines() if line.strip()]


def node_fields(output: str) -> dict[str, dict[str, str]]:
    """`scontrol show node -o` (one node per line, KEY=VALUE words) -> NodeName -> its fields."""
    nodes: dict[str, dict[str, str]] = {}
    for line in output.splitlines():
        fields = dict(re.findall(r"(\w+)=(\S*)", line))
        if "NodeName" in fields:
            nodes[fields["NodeName"]] = fields
    return nodes


def gpu_count(text: str | None) -> int | None:
    """GPUs in a Slurm GRES/TRES text: `gpu:8`, `gpu:h100:8(S:0-1)`, `gres/gpu=16`, `gres:gpu:4`, `8`."""
    if not text:
        return None
    if text.isdigit():
        return int(text)
    m = re.search(r"gpu(?::[\w.-]+)?[:=](\d+)", text)
    return int(m.group(1)) if m else None


def job_gpus(environ: dict[str, str], job: str = "") -> int | None:
    """GPUs per node the job was given: the step's own count, the job's per-node request, or its TRES."""
    for name in ("SLURM_GPUS_ON_NODE", "SLURM_GPUS_PER_NODE"):
        count = gpu_count(environ.get(name, "").rpartition(":")[2] or None)
        if count is not None:
            return count
    per_node = re.search(r"TresPerNode=(\S+)", job)
    if per_node and gpu_count(per_node.group(1)) is not None:
        return gpu_count(per_node.group(1))
    total, nodes = re.search(r"\bAllocTRES=\S*gres/gpu=(\d+)", job), re.search(r"\bNumNodes=(\d+)", job)
    if total and nodes and int(nodes.group(1)):
        return int(total.group(1)) // int(nodes.group(1))
    return None


def inventory(names: list[str], nodes: dict[str, dict[str, str]], gpus: int | None) -> InventorySpec:
    """The allocation's nodes in its order: each at its NodeAddr, with the job's GPUs (else the node's GRES,
    else the deployment file's gpus_per_node)."""
    specs = []
    for name in names:
        fields = nodes.get(name, {})
        count = gpus if gpus is not None else gpu_count(fields.get("Gres"))
        specs.append(NodeSpec(name=name, address=fields.get("NodeAddr") or name, gpus=count))
    return InventorySpec(nodes=specs)
