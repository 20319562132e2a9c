"""`python3 -m dynamo.vllm`: vLLM wide-EP (data + expert parallel) groups behind Dynamo, one process per node.

Why this shape: with vLLM's hybrid load balancing (`--data-parallel-hybrid-lb`) each node runs one
process that drives the node's own DP ranks, and under Dynamo each of those processes is a full worker
that registers its ranks itself: no headless nodes, no process per GPU. So per node the launcher
computes what LeaderWorkerSet filled in for llm-d (DP size, local size, start rank, leader address, RPC
port), the NIXL side channel for P/D KV transfer (the node's address and `bootstrap_port`), and the
all-to-all backend in the form the declared vLLM version reads: env `VLLM_ALL2ALL_BACKEND` up to 0.11.0,
`--all2all-backend` from 0.11.1 (the env var is ignored from 0.17).
"""

from __future__ import annotations

import json

from packaging.version import Version

from launcher.plan.engines import args as A
from launcher.plan.engines.base import (
    Engine,
    GroupContext,
    component_for,
    dynamo_env,
    int_arg,
    system_env,
    system_probe,
)
from launcher.plan.types import Probe

# vLLM's short aliases, spelled out so that every check below sees one name per flag.
ALIASES = {
    "-tp": "--tensor-parallel-size",
    "-dp": "--data-parallel-size",
    "-dpl": "--data-parallel-size-local",
    "-dpr": "--data-parallel-start-rank",
    "-dpn": "--data-parallel-rank",
    "-dpa": "--data-parallel-address",
    "-dpp": "--data-parallel-rpc-port",
    "-dph": "--data-parallel-hybrid-lb",
    "-dpe": "--data-parallel-external-lb",
    "-ep": "--enable-expert-parallel",
}
# Different on every node: one hand-written value is wrong on all the others.
PER_NODE = ("--data-parallel-start-rank", "--data-parallel-address")
# Group-wide values the launcher computes; the same value written by hand is accepted.
COMPUTED = ("--data-parallel-size", "--data-parallel-size-local", "--data-parallel-rpc-port")
# Other DP layouts (a process per rank, headless secondaries) or no EP: not what the launcher starts.
OTHER_LAYOUT = (
    "--data-parallel-rank",
    "--data-parallel-external-lb",
    "--headless",
    "--no-data-parallel-hybrid-lb",
    "--no-enable-expert-parallel",
)

# kv_both works on both roles (seed 003); dynamo.vllm 1.6.1 refuses a prefill worker without a config.
NIXL = json.dumps({"kv_connector": "NixlConnector", "kv_role": "kv_both"}, separators=(",", ":"))
SIDE_CHANNEL_PORT = 5600  # vLLM's own default VLLM_NIXL_SIDE_CHANNEL_PORT
ALL2ALL_ENV = "VLLM_ALL2ALL_BACKEND"
# DeepEP's throughput kernels for long prefill batches, its low-latency ones for decode (vLLM docs).
ALL2ALL_DEFAULT = {"prefill": "deepep_high_throughput", "decode": "deepep_low_latency"}
FLAG_SINCE = Version("0.11.1")  # --all2all-backend added (vLLM PR #26732)
ENV_IGNORED_SINCE = Version("0.17.0")  # VLLM_ALL2ALL_BACKEND no longer read (vLLM PR #33535)


def canonical(argv: list[str]) -> list[str]:
    """Short aliases and `--snake_case` flag names (both accepted by vLLM) -> `--long-name`."""
    out = []
    for token in argv:
        name, eq, value = token.partition("=")
        if name in ALIASES:
            token = ALIASES[name] + eq + value
        elif token.startswith("--"):
            token = name.replace("_", "-") + eq + value
        out.append(token)
    return out


class DynamoVLLM(Engine):
    name = "dynamo-vllm"
    module = ("python3", "-m", "dynamo.vllm")
    rendezvous = True

    def validate(self, group: GroupContext) -> list[str]:
        argv = canonical(group.argv)
        if group.model is None and not A.has(argv, "--model"):
            raise group.error("engine", "dynamo-vllm needs `model.path` (or --model in args)")
        for flag in PER_NODE:
            if A.has(argv, flag):
                raise group.error("args", f"{flag} is set by the launcher for each node; remove it")
        for flag in OTHER_LAYOUT:
            if A.has(argv, flag):
                raise group.error(
                    "args", f"{flag} contradicts the launcher's layout (one hybrid-LB EP process per node); remove it"
                )
        mode = A.value(argv, "--disaggregation-mode")
        if mode is not None and group.mode != "agg" and mode != group.mode:
            raise group.error("args", f"--disaggregation-mode {mode} contradicts the group's mode {group.mode}")
        tp = int_arg(group, argv, "--tensor-parallel-size")
        if tp is not None and (tp < 1 or len(group.gpus) % tp):
            raise group.error(
                "args", f"--tensor-parallel-size {tp} must divide the {len(group.gpus)} GPU(s) the group uses per node"
            )
        computed = dict(zip(COMPUTED, self._layout(group, argv), strict=True))
        for flag, want in computed.items():
            given = A.value(argv, flag)
            if given is not None and given != want:
                source = "dist_init_port" if flag == "--data-parallel-rpc-port" else "nodes x GPUs per node / TP"
                raise group.error("args", f"{flag} {given} conflicts with {want}, set by the launcher from {source}")
        found = self._user_env(group, "VLLM_NIXL_SIDE_CHANNEL_PORT")
        if found:
            raise group.error(f"{found[0]}.VLLM_NIXL_SIDE_CHANNEL_PORT", "is set by the launcher: use bootstrap_port")
        return self._check_all2all(group, argv)

    # -- layout -------------------------------------------------------------------------------------

    def _tp(self, group: GroupContext, argv: list[str]) -> int:
        return int_arg(group, argv, "--tensor-parallel-size") or 1

    def _local(self, group: GroupContext, argv: list[str]) -> int:
        return len(group.gpus) // self._tp(group, argv)  # DP ranks per node: each takes TP GPUs

    def _layout(self, group: GroupContext, argv: list[str]) -> tuple[str, str, str]:
        local = self._local(group, argv)
        return str(group.nnodes * local), str(local), str(group.spec.dist_init_port)

    def _nixl(self, group: GroupContext, argv: list[str]) -> bool:
        return group.mode != "agg" or A.has(argv, "--kv-transfer-config")

    def side_channel_port(self, group: GroupContext) -> int:
        return group.spec.bootstrap_port or SIDE_CHANNEL_PORT

    # -- all-to-all backend -------------------------------------------------------------------------

    @staticmethod
    def _user_env(group: GroupContext, name: str) -> tuple[str, str] | None:
        """(key, value) when the group's env or container env sets `name` (the top-level env is not visible)."""
        for key, env in (("env", group.spec.env), ("container.env", group.spec.container.env or {})):
            if name in env:
                return key, str(env[name])
        return None

    def _version(self, group: GroupContext) -> Version | None:
        return group.versions.parsed("vllm")

    def _check_all2all(self, group: GroupContext, argv: list[str]) -> list[str]:
        v, declared = self._version(group), group.versions.vllm
        if v is None:
            return []
        if v < FLAG_SINCE and A.has(argv, "--all2all-backend"):
            raise group.error(
                "args", f"--all2all-backend does not exist in vLLM {declared} (added in 0.11.1): set env {ALL2ALL_ENV}"
            )
        found = self._user_env(group, ALL2ALL_ENV)
        if found and v >= ENV_IGNORED_SINCE:
            raise group.error(
                f"{found[0]}.{ALL2ALL_ENV}",
                f"vLLM {declared} ignores this variable (from 0.17): use args `all2all-backend: {found[1]}`",
            )
        if found and v >= FLAG_SINCE:
            return [
                f"groups.{group.name}.{found[0]}.{ALL2ALL_ENV}: deprecated in vLLM {declared}; use --all2all-backend"
            ]
        return []

    def _all2all(self, group: GroupContext, argv: list[str]) -> tuple[list[str], dict[str, str]]:
        """The default backend for the role, as (argv, env); nothing when the user chose one either way."""
        backend = ALL2ALL_DEFAULT.get(group.mode)  # agg: vLLM's own default
        if backend is None or A.has(argv, "--all2all-backend") or self._user_env(group, ALL2ALL_ENV):
            return [], {}
        v = self._version(group)
        if v is not None and v < FLAG_SINCE:
            return [], {ALL2ALL_ENV: backend}
        # Undeclared version: the flag. A vLLM too old for it fails at start-up ("unrecognized
        # arguments"), where the env var would be ignored without a word by vLLM >= 0.17.
        return ["--all2all-backend", backend], {}

    # -- what each node runs ------------------------------------------------------------------------

    def command(self, group: GroupContext, rank: int) -> list[str]:
        argv = canonical(group.argv)
        head: list[str] = []
        if group.model and not A.has(argv, "--model"):
            head += ["--model", group.model.path]
        if group.model and group.model.name and not A.has(argv, "--served-model-name"):
            head += ["--served-model-name", group.model.name]
        if not A.has(argv, "--disaggregation-mode"):
            head += ["--disaggregation-mode", group.mode]
        return [*self.module, *head, *self.per_node(group, rank, argv)]

    def per_node(self, group: GroupContext, rank: int, argv: list[str]) -> list[str]:
        """The layout flags the launcher computes for this node, then the user's (canonical) argv."""
        size, local, rpc_port = self._layout(group, argv)
        topo = [
            "--data-parallel-hybrid-lb",
            "--data-parallel-size", size,
            "--data-parallel-size-local", local,
            "--data-parallel-start-rank", str(rank * int(local)),
            "--data-parallel-address", group.leader.address,
            "--data-parallel-rpc-port", rpc_port,
            "--enable-expert-parallel",
            "--tensor-parallel-size", str(self._tp(group, argv)),
        ]  # fmt: skip
        if group.mode != "agg" and not A.has(argv, "--kv-transfer-config"):
            topo += ["--kv-transfer-config", NIXL]
        topo += self._all2all(group, argv)[0]
        # Flags validated equal to the computed ones are written once, in the launcher's block.
        rest = A.without(
            argv, *COMPUTED, "--tensor-parallel-size", "--data-parallel-hybrid-lb", "--enable-expert-parallel"
        )
        return [*topo, *rest]

    def env(self, group: GroupContext, rank: int) -> dict[str, str]:
        argv = canonical(group.argv)
        node = group.nodes[rank]
        env = dynamo_env(node.address, group.etcd_endpoint, group.nats_url)
        if self._nixl(group, argv):
            # The address peers reach this node's KV cache on (auto-detection picks any NIC).
            env["VLLM_NIXL_SIDE_CHANNEL_HOST"] = node.address
            env["VLLM_NIXL_SIDE_CHANNEL_PORT"] = str(self.side_channel_port(group))
        env.update(system_env(group))  # every node's process registers its own `generate`: each has /health
        env.update(self._all2all(group, argv)[1])
        return env

    def ports(self, group: GroupContext, rank: int) -> list[int]:
        argv = canonical(group.argv)
        local, tp = self._local(group, argv), self._tp(group, argv)
        ports = [group.spec.dist_init_port] if rank == 0 else []  # the DP handshake, on the leader
        if self._nixl(group, argv):
            # One NIXL listener per global DP rank: base + rank*TP + tp_rank (base + rank in newer vLLM;
            # the same ports with TP1). Two groups on one node need bootstrap_ports this far apart.
            first = self.side_channel_port(group) + rank * local * tp
            ports += list(range(first, first + local * tp))
        if group.spec.system_port:
            ports.append(group.spec.system_port)
        return ports

    def peer_ports(self, group: GroupContext, rank: int) -> list[tuple[str, int]]:
        argv = canonical(group.argv)
        if not self._nixl(group, argv):
            return []
        local, tp = self._local(group, argv), self._tp(group, argv)
        first = self.side_channel_port(group) + rank * local * tp
        return [("nixl", port) for port in range(first, first + local * tp)]

    def probe(self, group: GroupContext, rank: int) -> Probe:
        return system_probe(group, rank)

    def expected_instances(self, group: GroupContext) -> dict[str, int]:
        # One per node, not per DP rank: dynamo.vllm 1.6.1 serves one `generate` endpoint per process
        # and publishes its DP ranks (start, count) in the model's runtime config, where the router
        # picks a rank (dp_topology.get_dp_range_for_worker). "Each DP rank is a separate component"
        # in Dynamo's DeepSeek-R1 doc is about KV events and metrics, one publisher per rank.
        return {component_for(group.mode): group.nnodes}

    def summary(self, group: GroupContext) -> str:
        argv = canonical(group.argv)
        size, local, _ = self._layout(group, argv)
        return f"{group.nnodes} node(s) DP{size} ({local}/node) EP TP{self._tp(group, argv)}"


ENGINE = DynamoVLLM()
