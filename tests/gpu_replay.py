"""Recorded GPU output (tests/data/gpu/README.md names each sample's source) replayed per node: a fleet
whose nodes run the real node scripts here, under bash, each with the stand-in nvidia-smi and journalctl
first in PATH and its own GPU_REPLAY_* recordings, so that nodes of one plan can differ (a healthy spare
beside a fallen one), which one local node, sharing this process's environment, cannot."""

from __future__ import annotations

import subprocess
from pathlib import Path

from launcher.plan.types import Node
from launcher.transport.host import Completed
from tests.helpers import REPO

DATA = REPO / "tests" / "data" / "gpu"
KLOG = DATA / "klog"
QUERY = DATA / "query-h100-nccl-1264.csv"  # an H100 node's two GPUs
HEALTHY = {"GPU_REPLAY_QUERY": str(QUERY)}  # the query, and a kernel log with nothing in it
FALLEN = {"GPU_REPLAY_QUERY": str(QUERY), "GPU_REPLAY_KLOG": str(KLOG / "akash-support-209-xid79.dmesg")}
NO_TOOL: dict[str, str] = {"NO_NVIDIA_SMI": "1"}  # a node without nvidia-smi (a deployment without GPUs)


def one_gpu(tmp_path: Path) -> dict[str, str]:
    """The recorded query cut to its first GPU (the header and one row): a node short of GPUs."""
    cut = tmp_path / "query-one-gpu.csv"
    cut.write_text("\n".join(QUERY.read_text().splitlines()[:2]) + "\n")
    return {"GPU_REPLAY_QUERY": str(cut)}


class ReplayHost:
    def __init__(self, node: Node, replay: dict[str, str], home: Path):
        self.node = node
        self.replay = replay
        self.home = home
        self.scripts: list[str] = []  # what it was asked to run, in order

    def run(self, script: str, *, stdin: str | None = None, timeout: float | None = None, out=None) -> Completed:
        self.scripts.append(script)
        tools = "" if "NO_NVIDIA_SMI" in self.replay else f"{DATA / 'bin'}:"
        env = {"PATH": f"{tools}/usr/bin:/bin", "HOME": str(self.home), **self.replay}
        done = subprocess.run(["bash", "-c", script], input=stdin or "", capture_output=True, text=True, env=env,
                              timeout=timeout or 60)  # fmt: skip
        return Completed(done.returncode, done.stdout, done.stderr)

    def http(self, *args, **kwargs):
        raise ConnectionError("no metrics endpoint in a replay")


class ReplayFleet:
    """Fleet.run and Fleet.host over ReplayHosts: node index -> its recordings (HEALTHY where not named)."""

    def __init__(self, nodes: list[Node], home: Path, replays: dict[int, dict[str, str]] | None = None):
        self.hosts = {n.index: ReplayHost(n, (replays or {}).get(n.index, HEALTHY), home) for n in nodes}

    def host(self, index: int) -> ReplayHost:
        return self.hosts[index]

    def run(self, script, indices=None, together=False, **kw) -> dict[int, Completed | Exception]:
        chosen = sorted(self.hosts) if indices is None else list(indices)
        return {i: self.hosts[i].run(script(self.hosts[i]) if callable(script) else script, **kw) for i in chosen}

    def looked_at(self) -> list[int]:
        """The nodes the GPU health program ran on (its script is the one that reads the program on stdin)."""
        return [i for i, h in sorted(self.hosts.items()) if any('"$PY" -' in s for s in h.scripts)]
