"""Fleet.map(together=True): every chosen node at once whatever --parallel says, for scripts that wait for
each other across nodes (the fabric check's ranks). Real local hosts, real bash; every wait bounded."""

from __future__ import annotations

from launcher.config.schema import SSHSettings
from launcher.plan.types import Node
from launcher.transport.fleet import Fleet
from launcher.transport.host import Options

NODES = 3


def barrier_script(directory: str, i: int) -> str:
    """Node i checks in, then waits (5 s at most) until every node has: it succeeds only if all ran at once."""
    return (
        f"touch {directory}/{i}; n=0; "
        f'while [ "$(ls {directory} | wc -l)" -lt {NODES} ] && [ $n -lt 50 ]; do sleep 0.1; n=$((n+1)); done; '
        f'[ "$(ls {directory} | wc -l)" -ge {NODES} ]'
    )


def run_barrier(tmp_path, together: bool) -> dict:
    nodes = [Node(i, f"n{i}", "127.0.0.1" if i % 2 else "localhost", SSHSettings(), 0) for i in range(NODES)]
    directory = tmp_path / ("together" if together else "queued")
    directory.mkdir()
    with Fleet(nodes, Options(parallel=1)) as fleet:
        result = fleet.run(lambda h: barrier_script(str(directory), h.node.index), together=together, timeout=30)
    return {i: r.exit_code for i, r in result.items()}


def test_together_runs_every_node_at_once_despite_parallel_1(tmp_path):
    assert run_barrier(tmp_path, together=True) == dict.fromkeys(range(NODES), 0)


def test_without_together_parallel_1_queues_them_and_the_barrier_fails(tmp_path):
    codes = run_barrier(tmp_path, together=False)
    assert codes[0] != 0  # the first node waited alone: the others were still queued
