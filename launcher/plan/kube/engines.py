"""Which engine a container runs, and the engine's argv with what the launcher computes per rank taken out.

LeaderWorkerSet pods say per rank what the launcher computes itself: SGLang's `--dist-init-addr
$(LWS_LEADER_ADDRESS):PORT --nnodes $(LWS_GROUP_SIZE) --node-rank $(LWS_WORKER_INDEX)`, vLLM's
`--data-parallel-address/-size/-size-local/-start-rank/-rpc-port`. Each is checked against what the
launcher would compute for that rank (a disagreement is an error, not a silent change) and removed; its
port becomes the group's `dist_init_port`. The model, served name, HTTP port and P/D mode move to their
keys of the deployment file (the launcher writes them back on every rank)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from launcher.plan.engines import args as A
from launcher.plan.engines.dynamo_vllm import canonical
from launcher.plan.kube.pods import LEADER_TOKEN

PYTHONS = ("python", "python3", "/usr/bin/python3", "/usr/bin/python", "/usr/local/bin/python3")
MODULES = {
    "sglang.launch_server": "sglang",
    "dynamo.sglang": "dynamo-sglang",
    "dynamo.vllm": "dynamo-vllm",
    "dynamo.mocker": "mocker",
}
SGLANG = ("sglang", "dynamo-sglang")
VLLM = ("vllm", "dynamo-vllm")


class Disagree(ValueError):
    """A per-rank flag that disagrees with the group; `key` says where ("size" or "args")."""

    def __init__(self, message: str, key: str = "args"):
        super().__init__(message)
        self.key = key


@dataclass
class Engine:
    """The engine of a pod and its argv after the program (the model of `vllm serve` included)."""

    name: str
    argv: list[str]
    keys: dict[str, Any] = field(default_factory=dict)  # group keys: dist_init_port, port, mode, ...
    model: dict[str, str] = field(default_factory=dict)  # path, name


def engine_of(argv: list[str]) -> Engine:
    if len(argv) >= 3 and argv[0].rsplit("/", 1)[-1] in PYTHONS and argv[1] == "-m" and argv[2] in MODULES:
        return Engine(MODULES[argv[2]], list(argv[3:]))
    if len(argv) >= 2 and argv[0].rsplit("/", 1)[-1] == "vllm" and argv[1] == "serve":
        rest = canonical(argv[2:])
        if rest and not rest[0].startswith("-"):
            return Engine("vllm", rest[1:], model={"path": rest[0]})
        return Engine("vllm", rest)
    return Engine("command", list(argv))


def take(engine: Engine, flag: str, *aliases: str) -> str | None:
    """The flag's value (None if absent, "" for a bare flag), removed from the argv."""
    value = A.value(engine.argv, flag, *aliases)
    if value is not None:
        engine.argv = A.without(engine.argv, flag, *aliases)
    return value


def strip(engine: Engine, rank: int, size: int, gpus: int | None) -> Engine:
    """Take out what the launcher computes for `rank` of a group of `size`, checking each value."""
    if engine.name in SGLANG:
        _sglang(engine, rank, size)
    elif engine.name in VLLM:
        engine.argv = canonical(engine.argv)
        _vllm(engine, rank, size, gpus)
    elif engine.name == "mocker":
        _mocker(engine)
    elif any(LEADER_TOKEN in t for t in engine.argv):
        raise Disagree(
            "cannot be expressed: LWS_LEADER_ADDRESS in a program the launcher does not know; its `command`"
            " engine gives each rank LAUNCHER_LEADER, LAUNCHER_RANK and LAUNCHER_NNODES instead"
        )
    return engine


def _sglang(engine: Engine, rank: int, size: int) -> None:
    for flag in ("--dist-init-addr", "--nccl-init-addr"):
        value = take(engine, flag)
        if value is None:
            continue
        host, _, port = value.rpartition(":")
        if host != LEADER_TOKEN or not port.isdigit():
            raise Disagree(f"cannot be expressed: {flag} {value} is fixed; the launcher points every rank at its"
                           " group's leader ($(LWS_LEADER_ADDRESS):PORT)")  # fmt: skip
        engine.keys["dist_init_port"] = int(port)
    nnodes = take(engine, "--nnodes")
    if nnodes is not None and nnodes != str(size):
        raise Disagree(f"{size} pod(s) per group, but the container runs --nnodes {nnodes}", key="size")
    node_rank = take(engine, "--node-rank")
    if node_rank is not None and node_rank != str(rank):
        raise Disagree(f"--node-rank {node_rank} on the pod of rank {rank}: use $(LWS_WORKER_INDEX)")
    if size > 1 and (nnodes is None or node_rank is None):
        raise Disagree("a multi-node SGLang group needs --nnodes $(LWS_GROUP_SIZE) --node-rank $(LWS_WORKER_INDEX)")
    _model(engine, "--model-path", "--model", name="--served-model-name")
    mode = take(engine, "--disaggregation-mode")
    if mode is not None:
        engine.keys["mode"] = mode
    bootstrap = take(engine, "--disaggregation-bootstrap-port")
    if bootstrap:
        engine.keys["bootstrap_port"] = int(bootstrap)
    if engine.name == "sglang":
        port = take(engine, "--port")
        if port:
            engine.keys["port"] = int(port)
        host = A.value(engine.argv, "--host")
        if host in ("0.0.0.0", "::"):
            take(engine, "--host")  # the launcher serves every rank on all interfaces


def _vllm(engine: Engine, rank: int, size: int, gpus: int | None) -> None:
    address = take(engine, "--data-parallel-address")
    if address is not None and address != LEADER_TOKEN:
        raise Disagree(f"cannot be expressed: --data-parallel-address {address} is fixed; the launcher gives every"
                       " node its group's leader ($(LWS_LEADER_ADDRESS))")  # fmt: skip
    tp = int(A.value(engine.argv, "--tensor-parallel-size") or 1)
    local_text = take(engine, "--data-parallel-size-local")
    local = int(local_text) if local_text else (gpus or tp) // tp
    if gpus is not None and local * tp != gpus:
        raise Disagree(f"--data-parallel-size-local {local} x --tensor-parallel-size {tp} does not use the pod's"
                       f" {gpus} GPU(s)")  # fmt: skip
    dp = take(engine, "--data-parallel-size")
    if dp is not None and dp != str(size * local):
        raise Disagree(f"{size} pod(s) x {local} local DP ranks = {size * local}, but the container runs"
                       f" --data-parallel-size {dp}", key="size")  # fmt: skip
    start = take(engine, "--data-parallel-start-rank")
    if start is not None and start != str(rank * local):
        raise Disagree(f"--data-parallel-start-rank {start} on the pod of rank {rank}: expected {rank * local}")
    port = take(engine, "--data-parallel-rpc-port")
    if port:
        engine.keys["dist_init_port"] = int(port)
    for flag in ("--data-parallel-hybrid-lb", "--enable-expert-parallel"):
        if take(engine, flag) is None:
            raise Disagree(f"cannot be expressed: the container runs without {flag}; the launcher runs vLLM groups"
                           " as one hybrid-load-balanced expert-parallel process per node")  # fmt: skip
    if take(engine, "--tensor-parallel-size") not in (None, "1"):
        engine.argv += ["--tensor-parallel-size", str(tp)]
    engine.keys["gpus"] = local * tp
    _model(engine, "--model", name="--served-model-name")
    mode = take(engine, "--disaggregation-mode")
    if mode is not None:
        engine.keys["mode"] = mode
    if engine.name == "vllm":
        port = take(engine, "--port")
        if port:
            engine.keys["port"] = int(port)


def _mocker(engine: Engine) -> None:
    _model(engine, "--model-path", name="--model-name")
    mode = take(engine, "--disaggregation-mode")
    if mode is not None:
        engine.keys["mode"] = mode
    ports = take(engine, "--bootstrap-ports")
    if ports and ports.isdigit():
        engine.keys["bootstrap_port"] = int(ports)


def _model(engine: Engine, *flags: str, name: str) -> None:
    path = take(engine, *flags)
    if path:
        engine.model["path"] = path
    served = take(engine, name)
    if served:
        engine.model["name"] = served
