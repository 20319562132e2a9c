"""`launcher export CONFIG --to lws|slurm`: the deployment for another home. `lws`: Kubernetes
manifests (one LeaderWorkerSet per group, Deployments and Services for etcd, NATS, the frontend or
router), each LeaderWorkerSet checked against the CRD's schema before anything is written. `slurm`: one
batch script that runs every service and rank with `srun` on the job's nodes."""

from __future__ import annotations

import gzip
import json
import shlex
import sys
from importlib import resources
from pathlib import Path

import yaml

from launcher.config import allocation
from launcher.config.load import load
from launcher.config.schema import InventorySpec, NodeSpec
from launcher.config.yamlfile import load_yaml
from launcher.errors import ConfigError, LauncherError, one_line
from launcher.output.console import say
from launcher.plan.build import build
from launcher.plan.kube import exporter
from launcher.plan.types import Plan
from launcher.remote import program as remote_program
from launcher.runtime.slurm import batch_script

SCHEMA = "leaderworkerset.v1.schema.json.gz"
# With no nodes in the file or an inventory: enough placeholders for any group counts; unused ones stay idle.
SPARE_NODES = 512


class NoAliases(yaml.SafeDumper):
    """Each object written out in full: no `&id001` anchors for values that happen to be shared."""

    def ignore_aliases(self, data) -> bool:
        return True


class InvalidManifest(LauncherError):
    """An exported LeaderWorkerSet that the CRD's schema rejects (a bug here: nothing is written)."""


def placeholder_plan(config: Path, inventory: Path | None) -> Plan:
    """The plan with every node's address a placeholder that the exporters replace (nodes keep their GPUs)."""
    data, _ = load_yaml(config)
    if inventory is None and not (isinstance(data, dict) and data.get("nodes")):
        spare = [NodeSpec(address=exporter.placeholder(i), name=f"node{i}") for i in range(SPARE_NODES)]
        loaded = load(config, InventorySpec(nodes=spare), inventory_name="(placeholder nodes)")
    elif allocation.requested(inventory):
        loaded = load(config, allocation.inventory(), inventory_name=allocation.KEY)
    else:
        loaded = load(config, inventory)
    nodes = [n.model_copy(update={"address": exporter.placeholder(i)}) for i, n in enumerate(loaded.nodes)]
    return build(loaded.model_copy(update={"nodes": nodes}))


def schema() -> dict:
    return json.loads(gzip.decompress(resources.files("launcher.plan.kube").joinpath(SCHEMA).read_bytes()))


def run(config: Path, inventory: Path | None, to: str, out: Path | None) -> None:
    plan = placeholder_plan(config, inventory)
    if to == "slurm":
        slurm(plan, config, out)
        return
    bare = sorted({s.service for s in plan.services if not s.image})
    if bare:
        raise ConfigError(
            f"LeaderWorkerSet pods need a container image; {', '.join(bare[:5])} ha{'s' if len(bare) == 1 else 've'}"
            " none (runtime: process): set `image` (and `runtime: docker`) to export --to lws",
            file=one_line(str(config)), key="image",
        )  # fmt: skip
    manifests = exporter.to_manifests(plan)
    lws_schema = schema()
    for m in manifests:
        if m["kind"] == "LeaderWorkerSet":
            errors = exporter.validate(m, lws_schema)
            if errors:
                raise InvalidManifest(
                    f"the LeaderWorkerSet {m['metadata']['name']} breaks the CRD's schema (nothing written):\n  "
                    + "\n  ".join(errors[:10])
                )
    write(plan, manifests, out)
    secrets = sorted({n for s in plan.services for n in s.secret_env})
    if secrets:
        name = exporter.dns(f"{plan.deployment}-secrets")
        # each key from the variable the user holds (OPENAI_KEY from MY_KEY for `OPENAI_KEY: ${MY_KEY}`)
        literals = " ".join(f'--from-literal={n}="${plan.secret_source(n)}"' for n in secrets)
        say(f"secrets come from the Secret {name}: kubectl create secret generic {name} {literals}", to_stderr=True)


def write(plan: Plan, manifests: list[dict], out: Path | None) -> None:
    def text(objs: list[dict]) -> str:
        return "---\n".join(yaml.dump(o, Dumper=NoAliases, sort_keys=False, width=1000) for o in objs)

    lws = sum(1 for m in manifests if m["kind"] == "LeaderWorkerSet")
    if out is None:
        sys.stdout.write(text(manifests))
        say(f"{len(manifests)} objects, {lws} LeaderWorkerSet(s), each valid against the CRD's schema", to_stderr=True)
        return
    files: dict[str, list[dict]] = {}
    for m in manifests:
        # each LeaderWorkerSet or Deployment in one file with the Service in front of it
        files.setdefault(m["metadata"]["name"], []).append(m)
    try:
        out.mkdir(parents=True, exist_ok=True)
        for name, objs in files.items():
            (out / f"{name}.yaml").write_text(text(objs))
    except OSError as exc:
        raise ConfigError(f"cannot write: {exc.strerror}", file=one_line(str(exc.filename or out)), key="-o") from None
    say(f"wrote {len(files)} file(s) to {out}: {lws} LeaderWorkerSet(s), each valid against the CRD's schema;"
        f" kubectl apply -f {out}", to_stderr=True)  # fmt: skip


def slurm(plan: Plan, config: Path, out: Path | None) -> None:
    """The batch script (runtime/slurm.py), with the readiness waiter that runs inside the job
    (remote/slurm_wait.py) embedded, so the file alone is what sbatch needs."""
    waiter = remote_program("slurm_wait")
    command = f"launcher export {shlex.quote(str(config))} --to slurm"
    script = batch_script(plan, waiter, command)
    nodes = max(s.node.index for s in plan.services) + 1
    steps = len(plan.services)
    if out is None:
        sys.stdout.write(script + "\n")
    else:
        try:
            out.write_text(script + "\n")
            out.chmod(0o755)
        except OSError as exc:
            raise ConfigError(f"cannot write: {exc.strerror}", file=one_line(str(out)), key="-o") from None
    where = f"wrote {out}" if out else "the script above"
    runtime = "pyxis containers" if plan.runtime == "docker" else "the process runtime"
    say(f"{where}: {steps} srun step(s) on {nodes} node(s), {runtime}; submit it with `sbatch {out or 'FILE'}`",
        to_stderr=True)  # fmt: skip
