"""Read the engine commands out of the seed write-ups in ../shared/seeds (markdown with YAML/bash blocks)."""

from __future__ import annotations

import os
import re
import shlex
from pathlib import Path

import yaml

# Beside the checkout (../shared/seeds); LAUNCHER_SEEDS_DIR for a checkout elsewhere (a git worktree).
SEEDS = Path(os.environ.get("LAUNCHER_SEEDS_DIR") or Path(__file__).resolve().parent.parent.parent / "shared" / "seeds")


def _walk(node, found: list[list[str]]) -> None:
    if isinstance(node, dict):
        command = node.get("command")
        if isinstance(command, list) and any("sglang.launch_server" in str(c) for c in command):
            argv = [str(c) for c in command] + [str(a) for a in node.get("args") or []]
            found.append(argv[argv.index("sglang.launch_server") + 1 :])
        for value in node.values():
            _walk(value, found)
    elif isinstance(node, list):
        for value in node:
            _walk(value, found)


def lws_commands(name: str) -> list[list[str]]:
    """Every `python3 -m sglang.launch_server` argv in the seed's manifests, in order."""
    text = (SEEDS / name).read_text()
    found: list[list[str]] = []
    for block in re.findall(r"```yaml\n(.*?)```", text, flags=re.S):
        for doc in yaml.safe_load_all(block):
            _walk(doc, found)
    return found


def bash_commands(name: str, module: str) -> list[list[str]]:
    """Every `python3 -m MODULE ...` command in the seed's bash blocks (line continuations joined)."""
    text = (SEEDS / name).read_text()
    out = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        joined = block.replace("\\\n", " ")
        for line in joined.splitlines():
            if f"-m {module} " in line:
                argv = shlex.split(line.split(f"-m {module}", 1)[1])
                out.append(argv)
    return out


def lws_pods(name: str) -> list[dict]:
    """Every container of the seed's manifests that runs MODULE, with its argv (after the module) and env."""
    text = (SEEDS / name).read_text()
    pods: list[dict] = []

    def walk(node) -> None:
        if isinstance(node, dict):
            command = node.get("command")
            if isinstance(command, list) and len(command) > 2 and command[1] == "-m":
                env = {e["name"]: str(e["value"]) for e in node.get("env") or [] if "value" in e}
                pods.append({"module": command[2], "argv": [str(c) for c in command[3:]], "env": env, "spec": node})
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    for block in re.findall(r"```yaml\n(.*?)```", text, flags=re.S):
        for doc in yaml.safe_load_all(block):
            walk(doc)
    return pods


def manifests(name: str) -> str:
    """The seed's Kubernetes manifests as one multi-document YAML text (its ```yaml blocks, in order)."""
    text = (SEEDS / name).read_text()
    return "---\n".join(re.findall(r"```yaml\n(.*?)```", text, flags=re.S))


# Seed 003 is llm-d's guide README; its LeaderWorkerSet is the guide's decode.yaml (llm-d/llm-d
# guides/wide-ep-lws/manifests/modelserver/base/decode.yaml @ 3318b75d), whose command and env the shared
# reference quotes (sglang-and-vllm.md §5.2). The manifest below is rebuilt from those facts: the pod's
# script (clear /dev/shm, compute the start rank, exec `vllm serve`), its env, 8 GPUs per pod, LWS size 2,
# IPC_LOCK + SYS_RAWIO, a 2Gi memory /dev/shm, and the image the manifest names.
SEED_003_IMAGE = "ghcr.io/llm-d/llm-d-cuda-dev:pr-429"


def seed_003_script_and_env() -> tuple[str, dict[str, str]]:
    reference = (SEEDS.parent / "reference" / "sglang-and-vllm.md").read_text()
    text = reference.split("### 5.2 llm-d `guides/wide-ep-lws`", 1)[1].split("\n### ", 1)[0]
    script = re.search(r"```\n(.*?)```", text, re.S).group(1)
    env_text = text.split("* Env:", 1)[1].split("\n* ", 1)[0]
    env: dict[str, str] = {}
    for names, value in re.findall(r"`([^`=]+)=([^`]*)`", env_text):
        for env_name in names.split(" / "):
            env[env_name.strip()] = value
    assert "find /dev/shm -type f -delete" in text  # "The script first runs ..." (llm-d #352)
    return "find /dev/shm -type f -delete\n" + script, env


def seed_003_manifest() -> str:
    script, env = seed_003_script_and_env()
    host = env.pop("VLLM_NIXL_SIDE_CHANNEL_HOST")
    assert host == "status.podIP"
    env_items = [{"name": "DP_SIZE_LOCAL", "value": "8"}, {"name": "TP_SIZE", "value": "1"}]
    env_items += [{"name": k, "value": v} for k, v in env.items()]
    env_items.append({"name": "VLLM_NIXL_SIDE_CHANNEL_HOST", "valueFrom": {"fieldRef": {"fieldPath": host}}})
    lws = {
        "apiVersion": "leaderworkerset.x-k8s.io/v1",
        "kind": "LeaderWorkerSet",
        "metadata": {"name": "wide-ep-llm-d-decode", "labels": {"llm-d.ai/role": "decode"}},
        "spec": {
            "replicas": 1,
            "leaderWorkerTemplate": {
                "size": 2,
                "workerTemplate": {
                    "metadata": {"labels": {"llm-d.ai/role": "decode"}},
                    "spec": {
                        "volumes": [{"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "2Gi"}}],
                        "containers": [
                            {
                                "name": "vllm-worker",
                                "image": SEED_003_IMAGE,
                                "securityContext": {"capabilities": {"add": ["IPC_LOCK", "SYS_RAWIO"]}},
                                "command": ["/bin/bash", "-c"],
                                "args": [script],
                                "env": env_items,
                                "resources": {"limits": {"nvidia.com/gpu": "8"}},
                                "volumeMounts": [{"name": "dshm", "mountPath": "/dev/shm"}],
                            }
                        ],
                    },
                },
            },
        },
    }
    return yaml.safe_dump(lws, sort_keys=False, width=1000)
