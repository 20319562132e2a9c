"""A plan -> Kubernetes manifests: one LeaderWorkerSet per worker group (its `replicas` the group's), a
Deployment and a Service for etcd, NATS, the frontend and the router, and a Service in front of each
group's leaders.

The plan is built on placeholder node addresses (`placeholder`), so every address in an argv or env can
be told apart and written the Kubernetes way: the group's leader as `$(LWS_LEADER_ADDRESS)`, the pod's
own address from `status.podIP`, another service by its Service name; the per-rank flags from
LeaderWorkerSet's variables (`--nnodes $(LWS_GROUP_SIZE) --node-rank $(LWS_WORKER_INDEX)`, vLLM's start
rank as `$((LWS_WORKER_INDEX * LOCAL))` in a shell line). Pure: `commands/export` writes the files and
validates every LeaderWorkerSet against the CRD's schema (`validate`)."""

from __future__ import annotations

import re
import shlex
from typing import Any

from launcher.plan.engines import args as A
from launcher.plan.types import Plan, Service, split_unit

PLACEHOLDER = "launcher-node-{}.invalid"
ADDRESS = re.compile(r"launcher-node-(\d+)\.invalid(?::(\d+))?")
LEADER_FLAGS = ("--dist-init-addr", "--nccl-init-addr", "--data-parallel-address")
SCRIPTED = ("vllm", "dynamo-vllm")  # the start rank needs arithmetic: a shell line
GPU = "nvidia.com/gpu"
WORKER_INDEX = {
    "name": "LWS_WORKER_INDEX",
    "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['leaderworkerset.sigs.k8s.io/worker-index']"}},
}
POD_IP = {"fieldRef": {"fieldPath": "status.podIP"}}


def placeholder(index: int) -> str:
    return PLACEHOLDER.format(index)


def dns(name: str) -> str:
    """A Kubernetes object name (RFC 1123 label: lowercase letters, digits and '-', at most 63)."""
    return re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-")[:63].strip("-") or "launcher"


class Names:
    """Which Service answers at a node address and port: the group leaders' and the single services'."""

    def __init__(self, plan: Plan):
        self.plan = plan
        self.by_port: dict[tuple[str, int], str] = {}
        for s in plan.services:
            if s.rank in (None, 0):
                for port in [*s.ports, *probe_port(s)]:
                    self.by_port.setdefault((s.node.address, port), self.service(s))

    def service(self, s: Service) -> str:
        """One name per group: the LeaderWorkerSet of all its replicas, and the Service of their leaders."""
        return dns(f"{self.plan.deployment}-{split_unit(s.group)[0] if s.group else s.role}")


def probe_port(s: Service) -> list[int]:
    m = re.match(r"https?://[^/:]+:(\d+)", s.probe.url or "")
    return [int(m.group(1))] if m else []


def to_manifests(plan: Plan) -> list[dict[str, Any]]:
    """Every object, in the order to apply them: infrastructure first, then the groups."""
    names = Names(plan)
    out: list[dict[str, Any]] = []
    for s in plan.services:
        if s.group is None:
            out += single(plan, s, names)
    for group in plan.groups:
        if group.replica:  # a group's replicas are one LeaderWorkerSet (`replicas`), written from replica 0
            continue
        ranks = sorted((s for s in plan.services if s.group == group.name), key=lambda s: s.rank or 0)
        out.append(leaderworkerset(plan, group.engine, ranks, names, group.replicas))
        out.append(leader_service(plan, ranks[0], names))
    return out


# -- what a container runs, the Kubernetes way --------------------------------------------------------


def k8s_text(text: str, s: Service, names: Names, *, leader: bool, script: bool) -> str:
    """Addresses in one argv token or env value: leader, own pod, or another service's name."""
    own = s.node.address
    lead = placeholder_of_leader(names.plan, s)

    def one(m: re.Match) -> str:
        address = placeholder(int(m.group(1)))
        port = f":{m.group(2)}" if m.group(2) else ""
        if leader and address == lead:
            return ("${LWS_LEADER_ADDRESS}" if script else "$(LWS_LEADER_ADDRESS)") + port
        target = names.by_port.get((address, int(m.group(2)))) if m.group(2) else None
        if target and target != names.service(s):
            return target + port
        if address == own:
            return ("${POD_IP}" if script else "$(POD_IP)") + port
        if address == lead:
            return ("${LWS_LEADER_ADDRESS}" if script else "$(LWS_LEADER_ADDRESS)") + port
        return (target or address) + port

    return ADDRESS.sub(one, text)


def placeholder_of_leader(plan: Plan, s: Service) -> str | None:
    if s.group is None:
        return None
    return next(x.node.address for x in plan.services if x.group == s.group and x.rank == 0)


def argv_of(s: Service, names: Names, size: int) -> tuple[list[str], list[str]]:
    """(command, args) of the container for a rank: per-rank values from LeaderWorkerSet's variables."""
    scripted = s.engine in SCRIPTED and size > 1
    out: list[str] = []
    raw: list[bool] = []  # tokens written for the shell as they are (expansions), not quoted
    previous = ""
    for token in s.command:
        value, verbatim = per_rank(previous, token, s, names, scripted)
        out.append(value)
        raw.append(verbatim)
        previous = token
    if not scripted:
        return out, []
    line = " ".join(t if verbatim else shlex.quote(t) for t, verbatim in zip(out, raw, strict=True))
    return ["/bin/sh", "-c"], [f"exec {line}"]


def per_rank(previous: str, token: str, s: Service, names: Names, scripted: bool) -> tuple[str, bool]:
    var = (lambda name: f"${{{name}}}") if scripted else (lambda name: f"$({name})")
    if s.group is not None and previous == "--nnodes":
        return var("LWS_GROUP_SIZE"), True
    if s.group is not None and previous == "--node-rank":
        return var("LWS_WORKER_INDEX"), True
    if previous in ("--data-parallel-start-rank", "--data-parallel-size") and scripted:
        local = A.value(s.command, "--data-parallel-size-local") or "1"
        var = "LWS_WORKER_INDEX" if previous == "--data-parallel-start-rank" else "LWS_GROUP_SIZE"
        return f"$(({var} * {local}))", True
    text = k8s_text(token, s, names, leader=previous in LEADER_FLAGS, script=scripted)
    return text, scripted and text != token


def env_of(s: Service, names: Names, uses_pod_ip: bool) -> list[dict[str, Any]]:
    """The rank's env: its own address from status.podIP, other addresses by Service name, secrets from a
    Secret (never their values); LWS_WORKER_INDEX and POD_IP first, as the argv may use them."""
    env: list[dict[str, Any]] = []
    if s.group is not None:
        env.append(WORKER_INDEX)
    if uses_pod_ip:
        env.append({"name": "POD_IP", "valueFrom": POD_IP})
    for name, value in s.env.items():
        if value == s.node.address:
            env.append({"name": name, "valueFrom": POD_IP})
            continue
        if s.engine == "command" and name in COMMAND_ENV:
            env.append({"name": name, "value": COMMAND_ENV[name]})
            continue
        env.append({"name": name, "value": k8s_text(value, s, names, leader=False, script=False)})
    for name in s.secret_env:
        secret = dns(f"{s.deployment}-secrets")
        env.append({"name": name, "valueFrom": {"secretKeyRef": {"name": secret, "key": name}}})
    return env


COMMAND_ENV = {
    "LAUNCHER_RANK": "$(LWS_WORKER_INDEX)",
    "LAUNCHER_NNODES": "$(LWS_GROUP_SIZE)",
    "LAUNCHER_LEADER": "$(LWS_LEADER_ADDRESS)",
}


# -- pods ------------------------------------------------------------------------------------------------


def container(s: Service, names: Names, name: str, size: int) -> dict[str, Any]:
    command, args = argv_of(s, names, size)
    c: dict[str, Any] = {"name": name, "image": s.image, "command": command}
    if args:
        c["args"] = args
    c["env"] = env_of(s, names, any("POD_IP" in t for t in [*command, *args]))
    gpus = gpu_count(s)
    if gpus:
        c["resources"] = {"limits": {GPU: str(gpus)}}
    port = probe_port(s)
    if port:
        c["ports"] = [{"containerPort": port[0], "protocol": "TCP"}]
    if s.probe.kind == "http" and port:
        path = re.sub(r"^https?://[^/]+", "", s.probe.url or "") or "/"
        c["readinessProbe"] = {"httpGet": {"path": path, "port": port[0]}, "periodSeconds": 10}
    security: dict[str, Any] = {}
    if s.container.privileged:
        security["privileged"] = True
    if s.container.cap_add:
        security["capabilities"] = {"add": list(s.container.cap_add)}
    if security:
        c["securityContext"] = security
    mounts, _ = volumes(s)
    if mounts:
        c["volumeMounts"] = mounts
    return c


def gpu_count(s: Service) -> int:
    gpus = s.container.gpus or "all"
    if gpus == "none":
        return 0
    if gpus == "all":
        return s.node.gpus
    return len([g for g in gpus.split(",") if g.strip()])


def volumes(s: Service) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(volumeMounts, volumes): /dev/shm in memory, host paths, and the devices (RDMA) as host paths."""
    mounts: list[dict[str, Any]] = []
    vols: list[dict[str, Any]] = []
    c = s.container
    if c.shm_size:
        limit = re.sub(r"^(\d+)([kmgt])b?$", lambda m: m.group(1) + m.group(2).upper() + "i", c.shm_size.lower())
        mounts.append({"mountPath": "/dev/shm", "name": "dshm"})
        vols.append({"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": limit}})
    for i, spec in enumerate([*(c.volumes or []), *(f"{d}:{d}" for d in c.devices or [])]):
        host, target, *mode = spec.split(":")
        name = "ib" if target == "/dev/infiniband" else f"v{i}"
        mount: dict[str, Any] = {"mountPath": target, "name": name}
        if "ro" in mode:
            mount["readOnly"] = True
        mounts.append(mount)
        vols.append({"name": name, "hostPath": {"path": host}})
    return mounts, vols


def pod_spec(s: Service, names: Names, name: str, size: int) -> dict[str, Any]:
    spec: dict[str, Any] = {}
    if (s.container.network or "host") == "host":
        spec["hostNetwork"] = True
        spec["dnsPolicy"] = "ClusterFirstWithHostNet"  # Service names still resolve
    if (s.container.ipc or "host") == "host":
        spec["hostIPC"] = True
    spec["containers"] = [container(s, names, name, size)]
    _, vols = volumes(s)
    if vols:
        spec["volumes"] = vols
    return spec


def leaderworkerset(plan: Plan, engine: str, ranks: list[Service], names: Names, replicas: int = 1) -> dict[str, Any]:
    size = len(ranks)
    short = engine.replace("dynamo-", "")
    template: dict[str, Any] = {"size": size, "restartPolicy": "RecreateGroupOnPodRestart"}
    if size > 1:
        template["leaderTemplate"] = {
            "metadata": {"labels": {"role": "leader"}},
            "spec": pod_spec(ranks[0], names, f"{short}-leader", size),
        }
        template["workerTemplate"] = {"spec": pod_spec(ranks[1], names, f"{short}-worker", size)}
    else:
        template["workerTemplate"] = {
            "metadata": {"labels": {"role": "leader"}},
            "spec": pod_spec(ranks[0], names, f"{short}-leader", size),
        }
    return {
        "apiVersion": "leaderworkerset.x-k8s.io/v1",
        "kind": "LeaderWorkerSet",
        "metadata": {"name": names.service(ranks[0]), "labels": {"launcher.deployment": dns(plan.deployment)}},
        "spec": {"replicas": replicas, "leaderWorkerTemplate": template, "startupPolicy": "LeaderCreated"},
    }


def leader_service(plan: Plan, leader: Service, names: Names) -> dict[str, Any]:
    name = names.service(leader)
    ports = sorted(set(leader.ports + probe_port(leader)))
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name},
        "spec": {
            "selector": {"leaderworkerset.sigs.k8s.io/name": name, "role": "leader"},
            "ports": [{"name": f"p{p}", "protocol": "TCP", "port": p, "targetPort": p} for p in ports],
        },
    }


def single(plan: Plan, s: Service, names: Names) -> list[dict[str, Any]]:
    """etcd, NATS, the frontend or the router: a Deployment of one pod and a Service in front of it."""
    name = names.service(s)
    labels = {"app": name}
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": labels},
            "template": {"metadata": {"labels": labels}, "spec": pod_spec(s, names, s.role, 1)},
        },
    }
    ports = sorted(set(s.ports + probe_port(s)))
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name},
        "spec": {
            "selector": labels,
            "ports": [{"name": f"p{p}", "protocol": "TCP", "port": p, "targetPort": p} for p in ports],
        },
    }
    return [deployment, service]


def validate(manifest: dict[str, Any], schema: dict[str, Any]) -> list[str]:
    """Where a LeaderWorkerSet breaks the CRD's openAPIV3Schema (JSON Schema draft 4, OpenAPI's dialect)."""
    import jsonschema

    validator = jsonschema.Draft4Validator(schema)
    errors = sorted(validator.iter_errors(manifest), key=lambda e: list(e.absolute_path))
    return [f"{'.'.join(str(p) for p in e.absolute_path) or '(top)'}: {e.message}" for e in errors]
