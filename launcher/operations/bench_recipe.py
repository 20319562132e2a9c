"""What `launcher bench` learns from the nodes and keeps with its numbers: the model's tokenizer files
(fetched from a worker node, so the client needs no model hub), the model's context length, the recipe
(the deployment file with secrets `***`, the plan's argv, the image ID and model manifest on every node,
the versions, the command line), and the KV-cache flush the deployment offers between runs.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import platform
import re
import tarfile
from pathlib import Path
from typing import Any

from launcher import __version__
from launcher.config.yamlfile import load_json
from launcher.errors import ConfigError, LauncherError
from launcher.operations.checks import in_image
from launcher.operations.context import Target, load_file
from launcher.operations.preflight import model_host_path
from launcher.output import plan_views
from launcher.plan.types import Service
from launcher.remote import program as remote_program
from launcher.runtime.shell import q
from launcher.transport.errors import NodeError

TOKENIZER_FILES = (
    "config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
    "tokenizer.model", "vocab.json", "merges.txt", "added_tokens.json", "chat_template.jinja",
)  # fmt: skip


class BenchError(LauncherError):
    exit_code = 1


def first_worker(t: Target) -> Service:
    workers = [s for s in t.plan.services if s.group is not None]
    if not workers:
        raise BenchError("the deployment has no worker group to benchmark")
    return workers[0]


def fetch_tokenizer(t: Target, dest: Path) -> tuple[Path, dict[str, Any]]:
    """The model's tokenizer and config files, copied from the first worker's node into dest; also the
    model config (for its context length). Exit 1 when the node has none: pass --tokenizer."""
    worker = first_worker(t)
    model = model_host_path(t.plan, worker)
    if model is None:
        raise BenchError(f"cannot tell where {t.plan.model_path} is on {worker.node.label}: pass --tokenizer")
    names = " ".join(q(n) for n in TOKENIZER_FILES)
    script = (
        f'cd {q(model)} && f=$(for n in {names}; do if [ -f "$n" ]; then echo "$n"; fi; done) && [ -n "$f" ] && '
        "tar -czf - $f | base64 | tr -d '\\n'"
    )
    try:
        done = t.fleet.host(worker.node.index).run(script, timeout=120)
    except NodeError as exc:
        raise BenchError(f"cannot read the tokenizer from {worker.node.label}: {exc}") from None
    if not done.ok or not done.stdout.strip():
        raise BenchError(f"no tokenizer files in {model} on {worker.node.label}: pass --tokenizer PATH_OR_NAME")
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(base64.b64decode(done.stdout.strip())), mode="r:gz") as tar:
        tar.extractall(dest, filter="data")
    config: dict[str, Any] = {}
    if (dest / "config.json").exists():
        try:
            config = load_json(dest / "config.json")  # the model's, from a node: within the file limits
        except ConfigError:
            config = {}
    return dest, config


def context_from_model(config: dict[str, Any], where: str) -> tuple[int, str] | None:
    for key in ("max_position_embeddings", "max_sequence_length", "seq_length"):
        if isinstance(config.get(key), int):
            return config[key], f"{key} in {where}"
    return None


# -- the recipe ----------------------------------------------------------------------------------------


def redacted_file(t: Target) -> str:
    """The deployment file as written, every secret's value replaced by `***`."""
    text = Path(t.plan.file).read_text()
    return t.plan.redactor()("\n".join(text.splitlines()) + "\n")


def node_facts(t: Target) -> dict[str, dict[str, Any]]:
    """Per node: the image ID of every image it runs, and the model directory's manifest (names and sizes)
    and config.json hash, as the node has them."""
    plan = t.plan

    def script(index: int) -> str:
        parts = []
        if plan.runtime == "docker":
            for image in sorted({s.image for s in plan.by_node(index)}):
                parts.append(f"echo image {q(image)} $(docker image inspect --format '{{{{.Id}}}}' {q(image)} 2>&1)")
        elif plan.python_env and plan.by_node(index):  # no image: the environment's Dynamo release stands for it
            probe = "import importlib.metadata as m; print('ai-dynamo==' + m.version('ai-dynamo'))"
            python = q(f"{plan.python_env}/bin/python3")
            parts.append(f"echo image {q('python_env:' + plan.python_env)} $({python} -c {q(probe)} 2>&1 | tail -1)")
        for path in sorted({p for s in plan.by_node(index) if s.group for p in [model_host_path(plan, s)] if p}):
            parts.append(
                f"echo model {q(path)} $(sha256sum {q(path)}/config.json 2>/dev/null | cut -c1-16) "
                f"$(cd {q(path)} 2>/dev/null && find . -maxdepth 1 -type f -printf '%f:%s,' | sort)"
            )
        return "\n".join(parts) or "true"

    facts: dict[str, dict[str, Any]] = {}
    result = t.fleet.map(lambda host: host.run(script(host.node.index), timeout=60), range(len(plan.nodes)))
    for index, done in sorted(result.items()):
        node = plan.nodes[index]
        entry: dict[str, Any] = {"name": node.name, "address": node.address, "images": {}, "model": {}}
        if isinstance(done, Exception):
            entry["error"] = str(done)
        else:
            for line in done.stdout.splitlines():
                kind, _, rest = line.partition(" ")
                name, _, value = rest.partition(" ")
                if kind == "image":
                    entry["images"][name] = value.strip()
                elif kind == "model":
                    digest, _, manifest = value.partition(" ")
                    entry["model"][name] = {"config_sha256": digest or None, "files": manifest.strip(",").split(",")}
        facts[str(index)] = entry
    return facts


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def recipe(t: Target, out: Path, argv: list[str], nodes: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Write the recipe files into out/recipe/ and return their summary for results.json."""
    where = out / "recipe"
    where.mkdir(parents=True, exist_ok=True)
    redact = t.plan.redactor()  # every file of the recipe: what the nodes said and the command line too
    deployment = redacted_file(t)
    plan_json = json.dumps(plan_views.to_json(t.plan), indent=2) + "\n"
    (where / Path(t.plan.file).name).write_text(deployment)
    (where / "plan.json").write_text(plan_json)
    (where / "nodes.json").write_text(redact(json.dumps(nodes, indent=2)) + "\n")
    command = redact(" ".join(q(a) for a in argv))
    (where / "command.txt").write_text(command + "\n")
    images = sorted({i for n in nodes.values() for i in n.get("images", {}).values()})
    models = sorted({m.get("config_sha256") or "-" for n in nodes.values() for m in n.get("model", {}).values()})
    summary = {
        "file": str(Path(t.plan.file).resolve()),
        "config_sha256": sha(deployment),
        "plan_sha256": sha(plan_json),
        "images": images,
        "model": {"path": t.plan.model_path, "name": t.plan.model_name, "config_sha256": models},
        "versions": versions(t),
        "command": command,
    }
    (where / "versions.json").write_text(json.dumps(summary["versions"], indent=2) + "\n")
    return summary


def versions(t: Target) -> dict[str, Any]:
    return {
        "launcher": __version__,
        "python": platform.python_version(),
        "declared": declared_versions(t),  # the file's `versions:`
        "runtime": t.plan.runtime,
        "python_env": t.plan.python_env,
        "platform": f"{platform.system()} {platform.machine()}",
    }


def declared_versions(t: Target) -> dict[str, str]:
    """The file's `versions:` (what its flags were written for), read back from the file."""
    spec = load_file(t.path, t.inventory, t.profile).spec
    return {k: v for k, v in spec.versions.model_dump().items() if v}


# -- the KV-cache flush --------------------------------------------------------------------------------


def flush_endpoints(t: Target) -> tuple[str, list[str]]:
    """What the deployment offers to clear every worker's KV cache: ("router", [url]) for SGLang's router,
    ("dynamo", [endpoint paths]) for Dynamo workers serving clear_kv_blocks, ("none", [why])."""
    plan = t.plan
    entry = plan.entry
    if entry is None or plan.endpoint is None:
        return "none", ["no endpoint"]
    host = t.fleet.host(entry.node.index)
    if entry.role == "router":
        return "router", [plan.endpoint + "/flush_cache"]
    try:
        _, health = host.http("GET", plan.endpoint + "/health", timeout=10)
    except (OSError, ConnectionError, NodeError) as exc:
        return "none", [f"the frontend's /health did not answer ({exc})"]
    listed = health.get("endpoints", []) if isinstance(health, dict) else []
    paths = sorted({re.sub(r"^dyn://", "", e) for e in listed if str(e).endswith(".clear_kv_blocks")})
    if paths:
        return "dynamo", paths
    shown = ", ".join(re.sub(r"^dyn://", "", str(e)) for e in listed) or "nothing"
    return "none", [f"no worker registers clear_kv_blocks (the frontend lists {shown})"]


def flush(t: Target, kind: str, targets: list[str]) -> str:
    """Clear the KV cache through what flush_endpoints found; returns what was done, in one line."""
    if kind == "router":
        host = t.fleet.host(t.plan.entry.node.index)
        status, body = host.http("POST", targets[0], timeout=60)
        if status != 200:
            raise BenchError(f"KV-cache flush: POST {targets[0]} answered {status}: {str(body)[:200]}")
        return f"router POST /flush_cache: {status} {str(body).strip()[:80]}"
    worker = first_worker(t)
    script = in_image(t.plan, worker, ["python3", "-", *targets])
    done = t.fleet.host(worker.node.index).run(script, stdin=remote_program("kv_flush"), timeout=120)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    answer = json.loads(lines[-1]) if lines else {"ok": False, "error": done.stderr.strip()[-300:]}
    if not answer.get("ok"):
        raise BenchError(f"KV-cache flush through {', '.join(targets)} failed: {answer.get('error') or answer}")
    count = sum(len(v) for v in answer["instances"].values())
    return f"clear_kv_blocks on {count} worker instance(s)"
