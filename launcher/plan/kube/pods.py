"""One pod template of a manifest, read into what a deployment file can say: the engine's argv for its
rank, its env, image, GPUs, mounts, privileges and devices, and notes on what has no place there.

Every problem is a ConfigError naming the manifest, the key path and its line."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from launcher.config.yamlfile import KeyPath, dotted, line_of
from launcher.errors import ConfigError
from launcher.plan.infra import ROUTER_PIN_CHECK
from launcher.plan.kube import shell

# LeaderWorkerSet's own variables in every pod (the seeds also map LWS_WORKER_INDEX from a label).
LEADER_TOKEN = "lws-leader-address.invalid"  # what $(LWS_LEADER_ADDRESS) evaluates to while importing
GPU = "nvidia.com/gpu"
RDMA_RESOURCE = re.compile(r"^rdma/|/rdma|^mellanox\.com/|/hca$")
ENGINE_HINT = re.compile(r"(sglang|vllm|dynamo|launch_server|torchrun|deepspeed|tensorrt|trtllm)")
SIZE = re.compile(r"^(\d+)(Ki|Mi|Gi|Ti|K|M|G|T)?$")


@dataclass
class Doc:
    """One YAML document of a manifest file, with the line of every key."""

    file: str
    data: dict[str, Any]
    lines: dict[KeyPath, int]

    @property
    def kind(self) -> str:
        return str(self.data.get("kind") or "")

    @property
    def name(self) -> str:
        metadata = self.data.get("metadata")
        return str(metadata.get("name") or "") if isinstance(metadata, dict) else ""

    @property
    def label(self) -> str:
        return f"{self.kind}/{self.name}"

    def get(self, path: KeyPath, default: Any = None) -> Any:
        node: Any = self.data
        for part in path:
            in_map = isinstance(node, dict) and part in node
            if in_map or (isinstance(node, list) and isinstance(part, int) and part < len(node)):
                node = node[part]
            else:
                return default
        return node

    def error(self, path: KeyPath, message: str) -> ConfigError:
        return ConfigError(message, file=self.file, key=dotted(path), line=line_of(self.lines, path))

    def mistyped(self, path: KeyPath, expected: str) -> ConfigError:
        """A value of the wrong type: the object, the key path, what was expected and what was there."""
        got = json.dumps(self.get(path), default=str)
        got = got if len(got) <= 60 else got[:57] + "..."
        return ConfigError(
            f"{dotted(path)}: expected {expected}, got {got}", file=self.file, key=self.label,
            line=line_of(self.lines, path),
        )  # fmt: skip

    def mapping(self, path: KeyPath, expected: str = "a mapping") -> dict[str, Any]:
        """The mapping at path ({} when it is missing or null); anything else is a one-line error."""
        value = self.get(path)
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise self.mistyped(path, expected)
        return value

    def sequence(self, path: KeyPath, expected: str = "a list") -> list[Any]:
        """The list at path ([] when it is missing or null); anything else is a one-line error."""
        value = self.get(path)
        if value is None:
            return []
        if not isinstance(value, list):
            raise self.mistyped(path, expected)
        return value

    def mappings(self, path: KeyPath, expected: str) -> list[dict[str, Any]]:
        """The list at path, each item a mapping (`expected` names what one is)."""
        items = self.sequence(path)
        for i in range(len(items)):
            if not isinstance(items[i], dict):
                raise self.mistyped((*path, i), expected)
        return items

    def words(self, path: KeyPath) -> list[Any]:
        """A command or args list: every item a string (or a number, as YAML reads one)."""
        items = self.sequence(path, "a list of strings")
        if any(isinstance(x, (dict, list)) or x is None for x in items):
            raise self.mistyped(path, "a list of strings")
        return items


@dataclass
class Pod:
    """What one pod template runs, as the launcher can express it."""

    path: KeyPath  # of the template's `spec`
    container: KeyPath  # of the engine's container
    image: str
    argv: list[str]
    env: dict[str, str]
    value_from: dict[str, str]  # name -> what Kubernetes fills in (fieldRef, secretKeyRef)
    gpus: int | None
    privileged: bool
    cap_add: list[str]
    devices: list[str]
    volumes: list[str]
    shm_size: str | None
    notes: list[str] = field(default_factory=list)
    steps: list[str] = field(default_factory=list)  # the script's other commands
    script: bool = False
    pinned: str | None = None  # the sglang-router version the launcher's own router line pins


def read_pod(doc: Doc, path: KeyPath, lws: dict[str, str]) -> Pod:
    """The template at `path` (its `spec`), evaluated with LeaderWorkerSet's variables `lws`."""
    spec = doc.mapping(path, "a mapping (a pod spec)")
    containers = doc.mappings((*path, "containers"), "a mapping (a container)")
    if not containers:
        raise doc.error((*path, "containers"), "expected at least one container")
    for i in range(len(containers)):
        doc.words((*path, "containers", i, "command")), doc.words((*path, "containers", i, "args"))
    index = engine_container(doc, path, containers)
    where = (*path, "containers", index)
    c = containers[index]
    env, value_from = read_env(doc, where, doc.sequence((*where, "env")))
    command, pinned = list(c.get("command") or []), None
    if command[:3] == ["sh", "-c", ROUTER_PIN_CHECK] and len(command) > 3:
        # the launcher's own router line (an exported file): its pinned version, then the router's argv
        command, pinned = ["python3", "-m", "sglang_router.launch_router", *command[4:]], str(command[3])
    try:
        done = shell.evaluate(command, list(c.get("args") or []), {**env, **lws})
    except ValueError as exc:
        raise doc.error((*where, "args" if c.get("args") else "command"), f"cannot be expressed: {exc}") from None
    if not done.argv:
        raise doc.error((*where, "command"), "the container sets no command: the launcher needs the engine's argv")
    pod = Pod(
        path=path, container=where, image=str(c.get("image") or ""), argv=done.argv, env=env, value_from=value_from,
        gpus=None, privileged=False, cap_add=[], devices=[], volumes=[], shm_size=None, steps=done.steps,
        script=done.script, pinned=pinned,
    )  # fmt: skip
    read_resources(doc, where, pod)
    read_security(doc, where, pod)
    read_mounts(doc, path, where, doc.mappings((*path, "volumes"), "a mapping (a volume)"), pod)
    pod.notes += pod_notes(doc, path, spec, c, containers, index)
    return pod


def engine_container(doc: Doc, path: KeyPath, containers: list[dict]) -> int:
    """The container doing engine work; several of them cannot be expressed (one process tree per rank)."""
    engines = [i for i, c in enumerate(containers) if ENGINE_HINT.search(" ".join(map(str, _cmd(c))))]
    if len(engines) > 1:
        names = ", ".join(str(containers[i].get("name")) for i in engines)
        raise doc.error(
            (*path, "containers"),
            f"cannot be expressed: {len(engines)} containers of one pod run engines ({names}); the launcher runs"
            " one engine process per node and group",
        )
    return engines[0] if engines else 0


def _cmd(c: dict) -> list[str]:
    return [*(c.get("command") or []), *(c.get("args") or [])]


def read_env(doc: Doc, where: KeyPath, items: list) -> tuple[dict[str, str], dict[str, str]]:
    env: dict[str, str] = {}
    value_from: dict[str, str] = {}
    for i, item in enumerate(items):
        if not isinstance(item, dict) or "name" not in item:
            raise doc.error((*where, "env", i), "expected {name: ..., value: ...}")
        name = str(item["name"])
        source = item.get("valueFrom")
        if isinstance(source, dict):
            ref = doc.mapping((*where, "env", i, "valueFrom", "fieldRef"))
            secret = doc.mapping((*where, "env", i, "valueFrom", "secretKeyRef"))
            if ref.get("fieldPath"):
                value_from[name] = f"fieldRef {ref['fieldPath']}"
            elif secret:
                value_from[name] = f"secretKeyRef {secret.get('name')}/{secret.get('key')}"
            else:
                value_from[name] = "valueFrom " + ", ".join(sorted(source))
            continue
        value = item.get("value", "")
        env[name] = "" if value is None else str(value).lower() if isinstance(value, bool) else str(value)
    return env, value_from


def read_resources(doc: Doc, where: KeyPath, pod: Pod) -> None:
    resources = (*where, "resources")
    doc.mapping(resources)
    limits = {**doc.mapping((*resources, "requests")), **doc.mapping((*resources, "limits"))}
    if GPU in limits:
        try:
            pod.gpus = int(str(limits[GPU]))
        except ValueError:
            raise doc.error(
                (*where, "resources", "limits", GPU), f"expected a GPU count, got {limits[GPU]!r}"
            ) from None
    for name in sorted(limits):
        if name == GPU:
            continue
        if RDMA_RESOURCE.search(name):
            pod.devices.append("/dev/infiniband")
            pod.notes.append(f"resource {name}: {limits[name]} (an RDMA device plugin): /dev/infiniband passed through")
        else:
            pod.notes.append(f"resource {name}: {limits[name]}: no resource limits on bare metal")


def read_security(doc: Doc, where: KeyPath, pod: Pod) -> None:
    at = (*where, "securityContext")
    sc = doc.mapping(at)
    doc.mapping((*at, "capabilities"))
    pod.privileged = bool(sc.get("privileged"))
    pod.cap_add = [str(x) for x in doc.sequence((*at, "capabilities", "add"))]
    other = sorted(k for k in sc if k not in ("privileged", "capabilities", "runAsUser", "runAsGroup"))
    if other:
        pod.notes.append(f"securityContext {', '.join(other)}: not expressed")


def read_mounts(doc: Doc, path: KeyPath, where: KeyPath, volumes: list, pod: Pod) -> None:
    by_name = {str(v.get("name")): (i, v) for i, v in enumerate(volumes)}
    for mount in doc.mappings((*where, "volumeMounts"), "a mapping ({name: ..., mountPath: ...})"):
        target = str(mount.get("mountPath"))
        found = by_name.get(str(mount.get("name")))
        if found is None:
            raise doc.error((*path, "volumes"), f"no volume {mount.get('name')!r} for mountPath {target}")
        at, volume = (*path, "volumes", found[0]), found[1]
        read_only = ":ro" if mount.get("readOnly") else ""
        if "emptyDir" in volume and target == "/dev/shm":
            limit = doc.mapping((*at, "emptyDir")).get("sizeLimit")
            pod.shm_size = docker_size(str(limit)) if limit else None
            if not limit:
                pod.notes.append("/dev/shm: an unbounded memory emptyDir; docker needs a size (launcher default 10g)")
        elif "hostPath" in volume:
            source = str(doc.mapping((*at, "hostPath")).get("path"))
            if source.startswith("/dev/") and source == target:
                pod.devices.append(source)  # /dev/infiniband: the RDMA devices
            else:
                pod.volumes.append(f"{source}:{target}{read_only}")
        elif "emptyDir" in volume:
            pod.notes.append(f"emptyDir at {target}: the container's own filesystem serves as scratch")
        else:
            kind = next((k for k in volume if k != "name"), "volume")
            pod.notes.append(f"{kind} volume at {target}: mount it on the nodes and add it to container.volumes")


def docker_size(limit: str) -> str:
    """A Kubernetes quantity (2Gi) as docker's --shm-size (2g)."""
    m = SIZE.match(limit)
    if not m:
        return limit
    return m.group(1) + (m.group(2) or "b")[0].lower()


def pod_notes(doc: Doc, path: KeyPath, spec: dict, c: dict, containers: list, index: int) -> list[str]:
    """What the launcher does not copy from this template, each with why."""
    notes = []
    for key, why in (
        ("nodeSelector", "choose the nodes in an inventory (-i)"),
        ("tolerations", "no taints on bare metal; choose the nodes in an inventory (-i)"),
        ("affinity", "placement: the groups' `nodes` and an inventory say where"),
        ("serviceAccountName", "no Kubernetes API here"),
        ("initContainers", "init and sidecar containers are not run"),
        ("dnsPolicy", "the nodes' own resolver"),
    ):
        if spec.get(key):
            notes.append(f"{key}: {why}")
    if spec.get("hostNetwork") is False or "hostNetwork" not in spec:
        notes.append("pod network: the launcher runs every service on the host network")
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        if c.get(probe):
            notes.append(f"{probe}: the launcher probes each rank itself (/health, the frontend's registry)")
    for i, other in enumerate(containers):
        if i != index:
            notes.append(f"container {other.get('name')}: only the engine's container is run")
    return notes
