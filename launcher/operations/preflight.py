"""Doctor's checks of each node: one script per node (all nodes at once) prints `@@check NAME STATUS
DETAIL` lines; what they mean (GPUs, InfiniBand, shm, disk, clock skew) and the cross-node comparisons
(same GPU model, same image ID, same model config) are pure functions here. Every failure carries a
one-line fix.
"""

from __future__ import annotations

import posixpath
import time
from dataclasses import asdict, dataclass

from launcher.operations.context import Target
from launcher.plan import fabric
from launcher.plan.types import FABRIC_LABEL, Plan, Service
from launcher.remote import program as remote_program
from launcher.remote.manifest import MANIFEST  # what `launcher stage` writes next to the weights
from launcher.runtime.base import LIST_MARK, Runtime, parse_after_mark
from launcher.runtime.shell import find_python, q
from launcher.transport.errors import NodeError, describe

MARK = "@@check"


@dataclass
class Check:
    node: int | None  # None: not about one node (engine flags)
    name: str
    status: str  # ok | warn | fail | skip
    detail: str
    fix: str = ""

    def to_json(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Findings:
    """What the node checks found: the checks, and this deployment's services found running (their ports
    are theirs, not a conflict; the fabric check leaves them be)."""

    checks: list[Check]
    running: frozenset[str] = frozenset()


def model_host_path(plan: Plan, service: Service) -> str | None:
    """Where the model lives on the node: the volume that mounts model.path, or the path itself."""
    model = plan.model_path
    if not model:
        return None
    if plan.runtime == "process":
        return model
    want = model.rstrip("/") or "/"
    for volume in service.container.volumes or []:
        host, _, rest = volume.partition(":")
        inside = rest.split(":")[0].rstrip("/") or "/"
        if want == inside or want.startswith(inside + "/"):
            return host.rstrip("/") + want[len(inside) :]
    return None


def _line(name: str, ok_cmd: str, ok_detail: str, fail_detail: str) -> str:
    """Shell: run ok_cmd; print an ok or fail check line with its output."""
    return (
        f'if out=$({ok_cmd} 2>&1); then echo {MARK} {name} ok "{ok_detail}$(echo $out | head -c 300)"; '
        f'else echo {MARK} {name} fail "{fail_detail}$(echo $out | head -c 300)"; fi'
    )


def node_script(plan: Plan, rt: Runtime, index: int, running: set[str]) -> str:
    """The checks of one node, as one script; `running`: this deployment's services already there
    (their ports are theirs, not taken)."""
    services = plan.by_node(index)
    node = plan.nodes[index]
    parts = [f"echo {MARK} clock ok $(date +%s.%N)"]
    if plan.runtime == "docker":
        parts.append(_line("runtime", "docker version --format '{{.Server.Version}}'", "docker ", ""))
        needs_gpu = any(s.container.gpus not in (None, "none") for s in services)
        if needs_gpu:
            parts.append(
                _line("gpu-runtime", "docker info --format '{{json .Runtimes}}' | grep -o nvidia | head -1", "", "")
            )
        for image in sorted({s.image for s in services}):
            parts.append(
                f"if id=$(docker image inspect --format '{{{{.Id}}}}' {q(image)} 2>/dev/null); then "
                f"echo {MARK} image ok {q(image)}=$id; else echo {MARK} image fail {q(image)}; fi"
            )
    else:
        parts.append(_line("runtime", rt.check_script(plan), "", ""))
        needs_gpu = False
    if needs_gpu:
        parts.append(
            f"if g=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>&1); then "
            f'echo {MARK} gpus ok "$(echo "$g" | grep -c .)x$(echo "$g" | head -1)"; '
            f'else echo {MARK} gpus fail "$(echo $g | head -c 200)"; fi'
        )
    for dev in sorted(set(node.ib_devices) | _ib_from_args(services)):
        parts.append(
            f"if [ -e /sys/class/infiniband/{q(dev)} ]; then echo {MARK} ib ok {q(dev)}; "
            f"else echo {MARK} ib fail {q(dev)}; fi"
        )
    parts.append(f"echo {MARK} shm ok $(df -Pk /dev/shm 2>/dev/null | awk 'NR==2{{print $4}}')")
    parts.append(f"echo {MARK} disk ok $(df -Pk / | awk 'NR==2{{print $4}}')")
    model_paths = sorted({p for s in services if s.group for p in [model_host_path(plan, s)] if p})
    for path in model_paths:
        parts.append(model_check(path, plan.python_env))
    ports = sorted({p for s in services if s.name not in running for p in s.ports})
    if ports:
        # A killed fabric check's containers (this deployment's label, never a service) would hold the
        # dist-init ports it borrowed: they go first, as the next fabric check and `down` remove them.
        parts.append(f"( {rt.remove_labelled_script(plan, f'{FABRIC_LABEL}.deployment={plan.deployment}')} ) "
                     ">/dev/null 2>&1")  # fmt: skip
    for port in ports:
        parts.append(
            f"if ss -Hltn 'sport = :{port}' 2>/dev/null | grep -q .; then "
            f"echo {MARK} port fail {port} "
            f"\"$(ss -Hltnp 'sport = :{port}' 2>/dev/null | head -1 | tr -s ' ' | cut -c1-160)\"; "
            f"else echo {MARK} port ok {port}; fi"
        )
    return "\n".join(parts)


def model_check(path: str, python_env: str | None = None) -> str:
    """The weights at `path`: against the manifest `launcher stage` wrote next to them (every file
    present, whole, unaltered: re-hashed when its size or mtime changed), else config.json's hash. Run by
    the python3 stage runs (the node's, else python_env's)."""
    cfg = posixpath.join(path, "config.json")
    manifest = posixpath.join(path, MANIFEST)
    checker = f'"$PY" -c {q(remote_program("manifest"))} check {q(path)} {MARK}'
    fallback = (
        f"if [ -r {q(cfg)} ]; then echo {MARK} model ok {q(path)}=$(sha256sum {q(cfg)} | cut -c1-16); "
        f"else echo {MARK} model fail {q(path)}; fi"
    )
    return (
        f"if [ -r {q(manifest)} ] && PY=$({find_python(python_env)}); then "
        f"{checker} || echo {MARK} model fail {q(path)}: the manifest check failed; "
        f"else {fallback}; fi"
    )


def _ib_from_args(services: list[Service]) -> set[str]:
    devices: set[str] = set()
    for s in services:
        if "--disaggregation-ib-device" in s.command:
            value = s.command[s.command.index("--disaggregation-ib-device") + 1]
            if not value.startswith(("{", "/")):
                devices.update(d.strip() for d in value.split(",") if d.strip())
    return devices


FIXES = {
    "runtime": "start the container engine on the node (systemctl start docker) or fix python_env",
    "gpu-runtime": "install the NVIDIA container toolkit (nvidia-ctk runtime configure --runtime=docker)",
    "gpus": "the node needs working GPUs: check nvidia-smi and the driver",
    "ib": "the InfiniBand/RoCE device named in the file is missing: check ibv_devices / the device name",
    "image": "launcher image push CONFIG (sends the image to every node that lacks it)",
    "model": "launcher stage CONFIG --from PATH|NODE:PATH (copies the weights to every node, repairs what differs)",
    "port": "stop what listens there, or change the port in the file",
    "clock": "sync clocks (chrony/ntpd): skew breaks leases and timeouts",
}


def run(target: Target) -> Findings:
    """All checks on all nodes at once; cross-node comparisons after."""
    fleet = target.fleet
    script = f"echo {LIST_MARK}; {target.runtime.list_script(target.plan)}"
    listing = fleet.run(lambda h: target.route_prefix(h) + script, timeout=60)
    # The routes first: with `network.interface: auto` they shape the plan the other checks read.
    target.learn_routes({i: r.stdout.split(LIST_MARK)[0] for i, r in listing.succeeded.items()})
    plan = target.plan
    running: dict[int, set[str]] = {}
    unreachable = {i: r for i, r in listing.failed.items() if isinstance(r, NodeError)}
    for i, r in listing.succeeded.items():
        if r.ok:
            running[i] = {c.name for c in parse_after_mark(i, r.stdout) if c.running}
    sent = time.time()
    # A node that could not be reached a moment ago is reported as such, not waited for again.
    results = fleet.run(
        lambda h: node_script(plan, target.runtime, h.node.index, running.get(h.node.index, set())),
        [i for i in listing if i not in unreachable],
        timeout=60,
    )
    results.update(unreachable)
    received = time.time()
    checks: list[Check] = []
    for i, r in results.items():
        if isinstance(r, Exception):
            kind = r.kind if isinstance(r, NodeError) else "error"
            checks.append(Check(i, "ssh", "fail", describe(r), _ssh_fix(kind)))
            continue
        checks.append(Check(i, "ssh", "ok", "reachable"))
        checks += from_output(plan, i, r.stdout, (sent + received) / 2)
    compare_nodes(checks)
    checks += interface_checks(target, {i for i in results if not isinstance(results[i], Exception)})
    for group, finding in plan.findings:
        checks.append(
            Check(
                None,
                "flags",
                "fail" if finding.severity == "error" else "warn",
                f"groups.{group}: {finding}",
                "launcher migrate CONFIG --sglang VERSION",
            )
        )
    for table in plan.flag_tables:
        if table.behind:
            fix = f"move versions.{table.engine} to {table.newest} when Dynamo's release pairs with it"
            checks.append(Check(None, "versions", "warn", table.behind_line(), fix))
    return Findings(checks, frozenset(name for names in running.values() for name in names))


def interface_checks(target: Target, reachable: set[int]) -> list[Check]:
    """Per node of each multi-node group: the interface its route to the leader leaves by; a node whose
    interface differs from its group's others is flagged (warn), one that cannot tell fails under
    `network.interface: auto` (its ranks would get no interface)."""
    checks = []
    auto = target.plan.network_interface == "auto"
    for row in fabric.interface_rows(target.plan, target.routes):
        if row.node not in reachable:
            continue
        if row.interface is None:
            status = "fail" if auto else "warn"
            checks.append(Check(row.node, "interface", status, row.detail, "check `ip route get LEADER` on the node"))
        elif row.flagged:
            fix = f"route the leader through {row.usual} like the others (or name the interface: network.interface)"
            checks.append(Check(row.node, "interface", "warn", row.detail, fix))
        else:
            checks.append(Check(row.node, "interface", "ok", row.detail))
    return checks


def from_output(plan: Plan, i: int, stdout: str, midpoint: float) -> list[Check]:
    """The checks node i's script printed (`@@check NAME STATUS DETAIL` lines), interpreted."""
    checks = []
    for line in stdout.splitlines():
        if not line.startswith(MARK + " "):
            continue
        _, name, status, *rest = line.split(" ", 3)
        detail = rest[0] if rest else ""
        checks.append(_interpret(plan, i, name, status, detail, midpoint))
    return checks


def compare_nodes(checks: list[Check]) -> None:
    """Cross-node checks: the odd node out fails (same image ID, model config and GPU model everywhere)."""
    _compare(checks, "image", "same image ID on every node", "images differ between nodes")
    _compare(checks, "model", "same config.json on every node", "the model's config.json differs between nodes")
    _compare(
        checks,
        "gpus",
        "same GPU model on every node",
        "GPU models differ between nodes",
        key=lambda d: d.split("x", 1)[-1],
    )


def _interpret(plan: Plan, i: int, name: str, status: str, detail: str, midpoint: float) -> Check:
    fix = FIXES.get(name, "") if status != "ok" else ""
    if name == "clock":
        try:
            skew = float(detail) - midpoint
        except ValueError:
            return Check(i, "clock", "warn", f"cannot read the clock: {detail}", FIXES["clock"])
        state = "warn" if abs(skew) > 2 else "ok"
        return Check(
            i, "clock", state, f"skew {skew:+.2f}s against this machine", FIXES["clock"] if state != "ok" else ""
        )
    if name == "shm":
        kb = int(detail) if detail.isdigit() else 0
        state = "warn" if kb < 1024 * 1024 and plan.runtime == "docker" else "ok"
        return Check(
            i,
            "shm",
            state,
            f"/dev/shm free {kb // 1024} MiB",
            "enlarge /dev/shm (NCCL and DeepEP need GBs with --ipc host)" if state != "ok" else "",
        )
    if name == "disk":
        kb = int(detail) if detail.isdigit() else 0
        state = "warn" if kb < 20 * 1024 * 1024 else "ok"
        return Check(
            i,
            "disk",
            state,
            f"/ free {kb // 1024 // 1024} GiB",
            "free disk space (images, logs)" if state != "ok" else "",
        )
    if name == "port" and status == "fail":
        port, _, who = detail.partition(" ")
        return Check(i, "port", "fail", f"port {port} is taken: {who.strip() or 'in use'}", FIXES["port"])
    if name == "gpus" and status == "ok":
        count = int(detail.split("x", 1)[0] or 0)
        needed = max((len(g.gpus) for g in plan.groups if i in g.node_indices), default=0)
        if count < needed:
            return Check(i, "gpus", "fail", f"{count} GPU(s), the plan needs {needed}", FIXES["gpus"])
    return Check(i, name, status, detail, fix)


def _compare(checks: list[Check], name: str, same: str, differ: str, key=None) -> None:
    ok = [c for c in checks if c.name == name and c.status == "ok"]
    values = {}
    for c in ok:
        value = c.detail.split("=", 1)[-1] if key is None else key(c.detail)
        values.setdefault((c.detail.split("=", 1)[0] if key is None else ""), {}).setdefault(value, []).append(c)
    for by_value in values.values():
        if len(by_value) <= 1:
            continue
        majority = max(by_value, key=lambda v: len(by_value[v]))
        for value, cs in by_value.items():
            if value != majority:
                for c in cs:
                    c.status, c.fix = "fail", FIXES.get(name, "")
                    c.detail = f"{differ}: {c.detail} (most nodes: {majority})"


def _ssh_fix(kind: str) -> str:
    return {
        "name not resolved": "fix the address or DNS",
        "connection refused": "start sshd on the node",
        "timed out": "check the node is up and the network path (firewall, link)",
        "unreachable": "check the node is powered on and has a route from here (or from the jump host)",
        "auth refused": "check ssh user and key (ssh-copy-id), or ssh-agent",
        "host key changed": "verify the node, then ssh-keygen -R ADDRESS",
        "host key unknown": "ssh to the node once to record its key, or --host-key-policy accept-new",
    }.get(kind, "check SSH to the node")
