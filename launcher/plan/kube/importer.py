"""LeaderWorkerSet manifests (with their Services and Deployments) -> a deployment file's data.

One group per LeaderWorkerSet (its `replicas` the group's): its size is the group's node count per
replica, the leader's and the workers' engine argv and env become `args`/`env` (what rank 0 has
differently: `leader.env`), with the per-rank flags the launcher computes taken out (`engines`); image,
GPUs, /dev/shm, mounts, privileges and RDMA devices become the group's `container`. The P/D load
balancer's Deployment becomes `services.router` (or Dynamo's frontend, etcd and NATS theirs). What has
no place in the file is listed in `notes`, each with why.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse

from launcher.config.limits import MAX_NODES, MAX_REPLICAS
from launcher.config.schema import as_text
from launcher.errors import ConfigError
from launcher.plan.engines import args as A
from launcher.plan.kube import engines as E
from launcher.plan.kube.pods import LEADER_TOKEN, Doc, Pod, read_pod

LWS_API = "leaderworkerset.x-k8s.io/"
WORKLOADS = ("Pod", "StatefulSet", "Job", "CronJob", "DaemonSet", "ReplicaSet", "ReplicationController")
# What the launcher computes for every rank: never copied from the pod's env.
COMPUTED_ENV = re.compile(
    r"^(LWS_.*|VLLM_NIXL_SIDE_CHANNEL_HOST|SGLANG_HOST_IP|POD_IP|DYN_.*_HOST|ETCD_ENDPOINTS|NATS_SERVER)$"
)
ROLE_LABELS = ("llm-d.ai/role", "role", "app.kubernetes.io/component")
PLACEHOLDER_NET = "192.0.2"  # TEST-NET-1: nodes in the written file are placeholders


@dataclass
class Options:
    name: str | None = None
    sglang: str | None = None
    sglang_router: str | None = None
    vllm: str | None = None
    dynamo: str | None = None


@dataclass
class Group:
    """One LeaderWorkerSet replica as a group of the deployment file."""

    doc: Doc
    name: str
    engine: str
    size: int
    spec: dict[str, Any]
    model: dict[str, str]
    image: str
    secrets: list[str] = field(default_factory=list)
    replicas: int = 1  # LeaderWorkerSet's: instances of `size` nodes each


@dataclass
class Imported:
    data: dict[str, Any]
    notes: list[str]  # "what: why", for the comments at the top of the file


def from_manifests(docs: list[Doc], options: Options) -> Imported:
    notes: list[str] = []
    lws = [d for d in docs if d.data.get("kind") == "LeaderWorkerSet"]
    for doc in docs:
        check_kind(doc)
    if not lws:
        first = docs[0] if docs else None
        if first is None:
            raise ConfigError("no Kubernetes object in the manifest")
        raise first.error(("kind",), f"expected a LeaderWorkerSet ({LWS_API}v1), got {first.kind or 'nothing'}")
    groups: list[Group] = []
    for doc in lws:
        groups += read_lws(doc, notes)
    name_groups(groups)
    services = {d.name: d for d in docs if d.kind == "Service"}
    data = assemble(groups, options, notes)
    for doc in docs:
        if doc.kind == "Deployment":
            read_deployment(doc, data, groups, services, notes)
        elif doc.kind == "Service":
            notes.append(service_note(doc, groups))
        elif doc.kind != "LeaderWorkerSet":
            notes.append(f"{doc.label}: not needed on bare metal")
    return Imported(data, [n for n in dict.fromkeys(notes) if n])


def check_kind(doc: Doc) -> None:
    kind, api = doc.kind, str(doc.data.get("apiVersion") or "")
    if not kind:
        raise doc.error(("kind",), "expected a Kubernetes object (apiVersion, kind, metadata, spec)")
    if kind == "LeaderWorkerSet" and not api.startswith(LWS_API):
        raise doc.error(("apiVersion",), f"expected {LWS_API}v1 for a LeaderWorkerSet, got {api!r}")
    if kind in WORKLOADS:
        raise doc.error(
            ("kind",),
            f"expected a LeaderWorkerSet ({LWS_API}v1), got {kind}: the launcher imports LeaderWorkerSets with"
            " their Services and Deployments",
        )


def read_lws(doc: Doc, notes: list[str]) -> list[Group]:
    """A LeaderWorkerSet -> one group (with `replicas: N` where it has more than one)."""
    t = ("spec", "leaderWorkerTemplate")
    if not isinstance(doc.get(t), dict):
        raise doc.error(t, "required: a LeaderWorkerSet's pods are described here")
    size, replicas = lws_counts(doc)
    if not isinstance(doc.get((*t, "workerTemplate", "spec")), dict):
        raise doc.error((*t, "workerTemplate", "spec"), "required: the pods' spec")
    leader_at = (*t, "leaderTemplate", "spec") if doc.get((*t, "leaderTemplate")) else (*t, "workerTemplate", "spec")
    leader = read_pod(doc, leader_at, lws_env(size, 0))
    worker = read_pod(doc, (*t, "workerTemplate", "spec"), lws_env(size, 1)) if size > 1 else None
    group = build_group(doc, size, leader, worker)
    notes += lws_notes(doc, leader, worker)
    if replicas == 0:
        notes.append(f"{doc.label}: replicas 0, nothing to run")
        return []
    if replicas > 1:  # one group of N replicas, as LeaderWorkerSet has it; `replicas` right after `nodes`
        at = list(group.spec).index("nodes") + 1
        items = list(group.spec.items())
        group.spec = dict(items[:at] + [("replicas", replicas)] + items[at:])
        group.replicas = replicas
    return [group]


def lws_counts(doc: Doc) -> tuple[int, int]:
    """A LeaderWorkerSet's size and replicas, within what the launcher deploys (each replica is a group of
    `size` nodes): checked before anything is made for them."""
    t = ("spec", "leaderWorkerTemplate")
    size = doc.get((*t, "size"), 1)
    if not isinstance(size, int) or isinstance(size, bool) or not 1 <= size <= MAX_NODES:
        raise doc.error(
            (*t, "size"), f"expected a whole number from 1 to {MAX_NODES} (the launcher's limit), got {size!r}"
        )
    replicas = doc.get(("spec", "replicas"), 1)
    if not isinstance(replicas, int) or isinstance(replicas, bool) or not 0 <= replicas <= MAX_REPLICAS:
        raise doc.error(
            ("spec", "replicas"),
            f"expected a whole number from 0 to {MAX_REPLICAS} (the launcher's limit), got {replicas!r}",
        )
    if size * replicas > MAX_NODES:
        raise doc.error(
            ("spec", "replicas"),
            f"{replicas} replicas of {size} nodes: more than {MAX_NODES} nodes (the launcher's limit)",
        )
    return size, replicas


def lws_env(size: int, index: int) -> dict[str, str]:
    return {"LWS_LEADER_ADDRESS": LEADER_TOKEN, "LWS_GROUP_SIZE": str(size), "LWS_WORKER_INDEX": str(index)}


def engine_for(doc: Doc, pod: Pod, rank: int, size: int) -> E.Engine:
    engine = E.engine_of(pod.argv)
    try:
        return E.strip(engine, rank, size, pod.gpus)
    except E.Disagree as exc:
        key = ("spec", "leaderWorkerTemplate", "size") if exc.key == "size" else (*pod.container, "args")
        raise doc.error(key, str(exc)) from None


def build_group(doc: Doc, size: int, leader: Pod, worker: Pod | None) -> Group:
    lead = engine_for(doc, leader, 0, size)
    work = engine_for(doc, worker, 1, size) if worker else lead
    if worker is not None:
        same(doc, worker, "runs another engine", lead.name, work.name)
        same(doc, worker, "runs other args (a group runs one argv on every rank)", lead.argv, work.argv)
        same(doc, worker, "serves another model", lead.model, work.model)
        same(doc, worker, "has another image", leader.image, worker.image)
        same(doc, worker, "has other GPUs", leader.gpus, worker.gpus)
        for key in ("privileged", "cap_add", "devices", "shm_size"):
            a, b = getattr(leader, key), getattr(worker, key)
            same(doc, worker, f"has other {key}", sorted(a) if isinstance(a, list) else a,
                 sorted(b) if isinstance(b, list) else b)  # fmt: skip
    spec: dict[str, Any] = {"engine": lead.name}
    keys = {**lead.keys, **work.keys}
    if "mode" not in keys:
        keys["mode"] = role_of(doc, lead)
    spec.update({"mode": keys.pop("mode")} if keys.get("mode") else {})
    spec["nodes"] = size
    gpus = keys.pop("gpus", None) or leader.gpus
    if gpus is not None:
        spec["gpus"] = list(range(gpus))
    spec.update(keys)
    spec["args"] = as_mapping(lead.argv)
    env, leader_env, secrets = group_env(leader, worker)
    for name, key in (("VLLM_NIXL_SIDE_CHANNEL_PORT", "bootstrap_port"), ("DYN_SYSTEM_PORT", "system_port")):
        port = env.pop(name, None) or leader_env.pop(name, None)
        leader_env.pop(name, None)
        if isinstance(port, str) and port.isdigit():
            spec[key] = int(port)  # the launcher sets the variable from this key
    spec["env"] = env
    if leader_env:
        spec["leader"] = {"env": leader_env}
    spec["container"] = container(worker or leader)
    leader_volumes = volumes_of_leader(doc, leader, worker)
    if leader_volumes:
        spec.setdefault("leader", {})["volumes"] = leader_volumes
    return Group(doc, doc.name, lead.name, size, spec, lead.model, leader.image, secrets)


def volumes_of_leader(doc: Doc, leader: Pod, worker: Pod | None) -> list[str]:
    """The leader's mounts that differ from the workers' (same container paths, other host paths)."""
    if worker is None or sorted(leader.volumes) == sorted(worker.volumes):
        return []
    target = {v.split(":")[1]: v for v in worker.volumes}
    mine = {v.split(":")[1]: v for v in leader.volumes}
    if set(target) != set(mine):
        paths = sorted(set(target) ^ set(mine))
        raise doc.error(
            leader.container,
            f"cannot be expressed: the leader and the workers mount different paths"
            f" ({', '.join(paths)}); a group mounts the same paths on every rank",
        )
    return [v for path, v in mine.items() if target[path] != v]


def as_mapping(argv: list[str]) -> dict[str, Any] | list[str]:
    """`--flag value --switch` as `{flag: value, switch: true}` (as the shipped files write args), when that
    gives back exactly the same argv; otherwise the list as it was."""
    out: dict[str, Any] = {}
    i = 0
    while i < len(argv):
        flag = argv[i]
        if not flag.startswith("--") or "=" in flag or flag[2:] in out:
            return argv
        if i + 1 < len(argv) and not argv[i + 1].startswith("--"):
            out[flag[2:]] = scalar(argv[i + 1])
            i += 2
        else:
            out[flag[2:]] = True
            i += 1
    return out if A.normalize(out) == argv else argv


def scalar(text: str) -> Any:
    """A number written as a number when it reads back as the same text."""
    for kind in (int, float):
        try:
            value = kind(text)
        except ValueError:
            continue
        if as_text(value) == text:
            return value
    return text


def same(doc: Doc, worker: Pod, what: str, a: Any, b: Any) -> None:
    if a != b:
        raise doc.error(worker.container, f"cannot be expressed: the worker {what} than the leader: {b!r} vs {a!r}")


def role_of(doc: Doc, engine: E.Engine) -> str | None:
    """prefill/decode from the pods' labels or the LeaderWorkerSet's name; None: aggregated."""
    labels = {**doc.mapping(("metadata", "labels"))}
    for t in ("leaderTemplate", "workerTemplate"):
        labels.update(doc.mapping(("spec", "leaderWorkerTemplate", t, "metadata", "labels")))
    for key in ROLE_LABELS:
        if str(labels.get(key)) in ("prefill", "decode"):
            return str(labels[key])
    for mode in ("prefill", "decode"):
        if re.search(rf"(^|[-_.]){mode}($|[-_.])", doc.name):
            return mode
    return None


def group_env(leader: Pod, worker: Pod | None) -> tuple[dict[str, str], dict[str, str | None], list[str]]:
    """The workers' env for every rank, and what the leader has differently (null: the leader lacks it)."""
    secrets = sorted(n for p in (leader, worker) if p for n, v in p.value_from.items() if v.startswith("secretKey"))
    base = {k: v for k, v in (worker or leader).env.items() if not COMPUTED_ENV.match(k)}
    lead = {k: v for k, v in leader.env.items() if not COMPUTED_ENV.match(k)}
    diff: dict[str, str | None] = {k: v for k, v in lead.items() if base.get(k) != v}
    diff.update({k: None for k in base if k not in lead})
    return base, diff, secrets


def container(pod: Pod) -> dict[str, Any]:
    c: dict[str, Any] = {}
    if pod.privileged:
        c["privileged"] = True
    if pod.cap_add:
        c["cap_add"] = pod.cap_add
    if pod.devices:
        c["devices"] = list(dict.fromkeys(pod.devices))
    if pod.volumes:
        c["volumes"] = pod.volumes
    if pod.shm_size:
        c["shm_size"] = pod.shm_size
    return c


def lws_notes(doc: Doc, leader: Pod, worker: Pod | None) -> list[str]:
    notes = [f"{doc.label}: {n}" for p in (leader, worker) if p for n in p.notes]
    for p in (leader, worker):
        for name, source in p.value_from.items() if p else ():
            if source.startswith("secretKey"):
                notes.append(f"{doc.label}: env {name} ({source}): a secret, taken from the environment or .env")
            elif COMPUTED_ENV.match(name):
                notes.append(f"{doc.label}: env {name} ({source}): computed by the launcher for each rank")
            else:
                notes.append(f"{doc.label}: env {name} ({source}): Kubernetes fills it in; set it yourself")
        for name in [n for n in (p.env if p else {}) if COMPUTED_ENV.match(n)]:
            notes.append(f"{doc.label}: env {name}: computed by the launcher for each rank")
        for step in p.steps if p else ():
            notes.append(f"{doc.label}: the script's `{step}` before the engine: not run")
    spec = doc.get(("spec",)) or {}
    t = spec.get("leaderWorkerTemplate") or {}
    if t.get("restartPolicy") == "RecreateGroupOnPodRestart":
        notes.append(f"{doc.label}: restartPolicy RecreateGroupOnPodRestart: `launcher watch` does the same")
    elif t.get("restartPolicy"):
        notes.append(f"{doc.label}: restartPolicy {t['restartPolicy']}: `launcher watch` recreates the whole group")
    for key, why in (
        ("startupPolicy", "`up` starts every rank at once and waits until all are ready"),
        ("rolloutStrategy", "`up` recreates a changed group whole"),
        ("networkConfig", "no pod DNS: ranks reach their leader at its address"),
    ):
        if spec.get(key):
            notes.append(f"{doc.label}: {key}: {why}")
    return notes


def name_groups(groups: list[Group]) -> None:
    """`prefill`/`decode` when a role has one group, `serve` for a lone aggregated one, else the LWS name."""
    roles: dict[str, list[Group]] = {}
    for g in groups:
        roles.setdefault(g.spec.get("mode") or "agg", []).append(g)
    for role, members in roles.items():
        for g in members:
            g.name = re.sub(r"[^a-z0-9-]+", "-", g.name.lower()).strip("-") or "group"
            if not g.name[0].isalpha():
                g.name = f"g-{g.name}"
        if len(members) == 1:
            members[0].name = role if role != "agg" else "serve"
            if role in ("prefill", "decode"):
                members[0].spec.pop("mode", None)  # the group's name says it


def deployment_name(groups: list[Group], options: Options) -> str:
    if options.name:
        return options.name
    names = [g.doc.name.split("-") for g in groups]
    common: list[str] = []
    for parts in zip(*names, strict=False):
        if len(set(parts)) != 1:
            break
        common.append(parts[0])
    words = common or names[0]
    words = [w for w in words if w not in ("prefill", "decode", "leader", "worker")] or words
    return re.sub(r"[^a-zA-Z0-9_.-]+", "-", "-".join(words))[:48].strip("-.") or "imported"


def version_from(image: str, product: str) -> str | None:
    """`lmsysorg/sglang:v0.5.21-cu126` -> 0.5.21 when the image is `product`'s; else None."""
    repo, _, tag = image.rpartition(":")
    m = re.match(r"^v?(\d+\.\d+\.\d+(?:\.post\d+)?)", tag)
    return m.group(1) if m and product in repo.lower() else None


def assemble(groups: list[Group], options: Options, notes: list[str]) -> dict[str, Any]:
    images = [g.image for g in groups]
    image = max(set(images), key=images.count)
    engines = {g.engine for g in groups}
    data: dict[str, Any] = {"deployment": deployment_name(groups, options), "image": image}
    versions = {
        "sglang": options.sglang or (version_from(image, "sglang") if engines & {"sglang", "dynamo-sglang"} else None),
        "sglang_router": options.sglang_router,
        "vllm": options.vllm or (version_from(image, "vllm") if engines & {"vllm", "dynamo-vllm"} else None),
        "dynamo": options.dynamo,
    }
    if any(versions.values()):
        data["versions"] = {k: v for k, v in versions.items() if v}
    gpus = [len(g.spec.get("gpus") or []) for g in groups]
    data["gpus_per_node"] = max(gpus) if gpus else 0
    for g in groups:
        if len(g.spec.get("gpus") or []) == data["gpus_per_node"]:
            g.spec.pop("gpus", None)  # all of them: the default
    data.update(model_keys(groups))
    total = sum(g.size * g.replicas for g in groups)
    data["nodes"] = [{"name": f"node{i}", "address": f"{PLACEHOLDER_NET}.{10 + i}"} for i in range(total)]
    dynamo = bool(engines & {"dynamo-sglang", "dynamo-vllm", "mocker"})
    data["services"] = {name: {"enabled": dynamo} for name in ("etcd", "nats", "frontend")}
    secrets = sorted({s for g in groups for s in g.secrets})
    if secrets:
        data["secrets"] = secrets
    data["groups"] = {}
    for g in groups:
        if g.image != image:
            g.spec["image"] = g.image
        data["groups"][g.name] = g.spec
    return data


def model_keys(groups: list[Group]) -> dict[str, Any]:
    """`model` when every group serves the same one; otherwise each keeps its own in args."""
    models = {tuple(sorted(g.model.items())) for g in groups if g.engine != "command"}
    if len(models) == 1:
        (model,) = models
        return {"model": dict(model)} if dict(model).get("path") else {}
    for g in groups:
        flag = {"mocker": "--model-path", "sglang": "--model-path", "dynamo-sglang": "--model-path"}.get(g.engine)
        if flag and g.model.get("path"):
            g.spec["args"] = [flag, g.model["path"], *g.spec["args"]]
        if g.engine == "vllm":
            raise g.doc.error(("metadata", "name"), "cannot be expressed: vLLM groups serving different models")
    return {}


def service_note(doc: Doc, groups: list[Group]) -> str:
    selector = doc.mapping(("spec", "selector"))
    target = selector.get("leaderworkerset.sigs.k8s.io/name")
    kind = doc.get(("spec", "type")) or "ClusterIP"
    group = next((g.name for g in groups if g.doc.name == target), None)
    if group:
        return f"{doc.label} ({kind}): group {group} is reached at its leader's address"
    ports = doc.mappings(("spec", "ports"), "a mapping (a port)")
    shown = ", ".join(str(p.get("nodePort") or p.get("port")) for p in ports)
    return f"{doc.label} ({kind} {shown}): the endpoint is the service's own port on its node"


def read_deployment(doc: Doc, data: dict, groups: list[Group], services: dict[str, Doc], notes: list[str]) -> None:
    """The P/D load balancer -> services.router; Dynamo's frontend, etcd, NATS -> theirs."""
    pod = read_pod(doc, ("spec", "template", "spec"), {})
    argv = pod.argv
    module = argv[2] if len(argv) > 2 and argv[1] == "-m" else argv[0].rsplit("/", 1)[-1]
    notes += [f"{doc.label}: {n}" for n in pod.notes]
    if module in ("sglang_router.launch_router", "sglang.srt.disaggregation.mini_lb"):
        data["services"]["router"] = router(doc, pod, argv[3:], module, groups, services)
        if pod.pinned and not (data.get("versions") or {}).get("sglang_router"):
            data.setdefault("versions", {})["sglang_router"] = pod.pinned
    elif module == "dynamo.frontend":
        port = E.take(engine := E.Engine("frontend", argv[3:]), "--http-port")
        E.take(engine, "--http-host")
        data["services"]["frontend"] = {"enabled": True, "node": 0, **({"port": int(port)} if port else {})}
        # As the manifest ran it: Dynamo's default is no migration (the launcher's default is 3).
        migration = E.take(engine, "--migration-limit") or "0"
        # ASCII digits, a few: `²` is a digit to isdigit() but not to int(), and so are 5,000 digits
        if migration.isascii() and migration.isdigit() and len(migration) <= 3 and int(migration) <= 100:
            data["services"]["frontend"]["migration_limit"] = int(migration)
        else:  # left as written: the plan names it as bad input
            engine.argv = ["--migration-limit", migration, *engine.argv]
        if engine.argv:
            data["services"]["frontend"]["args"] = engine.argv
    elif module in ("etcd", "nats-server"):
        data["services"]["etcd" if module == "etcd" else "nats"] = {"enabled": True, "node": 0}
    else:
        notes.append(f"{doc.label}: runs `{' '.join(argv[:3])}`, which the launcher has no service for: not run")


def router(doc: Doc, pod: Pod, argv: list[str], module: str, groups, services) -> dict[str, Any]:
    spec: dict[str, Any] = {"enabled": True, "node": 0, "kind": "router" if "router" in module else "mini_lb"}
    rest: list[str] = []
    i = 0
    while i < len(argv):
        flag = argv[i]
        values = []
        while i + 1 < len(argv) and not argv[i + 1].startswith("--"):
            values.append(argv[i + 1])
            i += 1
        i += 1
        if flag in ("--prefill", "--decode"):
            for url in values:
                if url.startswith("http"):
                    point_at(doc, pod, url, flag[2:], groups, services)
        elif flag == "--port":
            spec["port"] = int(values[0])
        elif flag == "--prometheus-port":
            spec["prometheus_port"] = int(values[0])
        elif flag == "--policy":
            spec["policy"] = values[0]
        elif flag not in ("--host", "--pd-disaggregation", "--prometheus-host", "--prefill-bootstrap-ports"):
            rest += [flag, *values]
    if rest:
        spec["args"] = rest
    return spec


def point_at(doc: Doc, pod: Pod, url: str, mode: str, groups: list[Group], services: dict[str, Doc]) -> None:
    """A router URL names a Service; that Service must select a LeaderWorkerSet of that role."""
    host = (urlparse(url).hostname or "").split(".")[0]
    service = services.get(host)
    target = service.mapping(("spec", "selector")).get("leaderworkerset.sigs.k8s.io/name") if service else host
    matched = [g for g in groups if g.doc.name == target]
    if not matched:
        raise doc.error((*pod.container, "command"), f"--{mode} {url}: no Service or LeaderWorkerSet {host!r} here")
    for g in matched:
        g.spec.setdefault("mode", mode) if g.name != mode else None
        if (g.spec.get("mode") or g.name) != mode:
            raise doc.error((*pod.container, "command"), f"--{mode} {url} points at group {g.name}, not a {mode} one")


def render(imported: Imported, command: str) -> str:
    """The deployment file: what was dropped and why at the top, then the keys."""
    import yaml

    head = [
        f"# Written by `{command}` from LeaderWorkerSet manifests.",
        "# One group per LeaderWorkerSet (its size: the group's node count); what rank 0 runs differently is under",
        "# `leader`. Not copied, computed by the launcher for every rank: --dist-init-addr/--nnodes/--node-rank",
        "# (vLLM: --data-parallel-address/-size/-size-local/-start-rank/-rpc-port), the node's own address.",
        "# The nodes are placeholders (TEST-NET-1): keep yours in an inventory and pass it with -i.",
    ]
    if imported.notes:
        head += ["#", "# Not carried over, and why:"] + [f"# - {note}" for note in grouped(imported.notes)]
    order = ("deployment", "image", "versions", "gpus_per_node", "model", "nodes", "secrets", "services", "groups")
    data = {k: imported.data[k] for k in order if k in imported.data}
    body = yaml.safe_dump(data, sort_keys=False, default_flow_style=False, width=1000, allow_unicode=True)
    return "\n".join(head) + "\n\n" + body


def grouped(notes: list[str]) -> list[str]:
    """`OBJECT: what: why` notes, one line per what-and-why naming every object it applies to."""
    objects: dict[str, list[str]] = {}
    for note in notes:
        who, _, rest = note.partition(": ")
        if not rest or "/" not in who:
            who, rest = "", note
        objects.setdefault(rest, []).append(who)
    out = []
    for rest, who in objects.items():
        names = ", ".join(w for w in dict.fromkeys(who) if w)
        what, _, why = rest.partition(": ")
        out.append(f"{what} ({names}): {why}" if names and why else f"{names}: {rest}" if names else rest)
    return out
