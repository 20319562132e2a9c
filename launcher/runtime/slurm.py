"""A plan as one Slurm batch script: every service and rank an `srun` step on the job's nodes, started in
the order `up` starts them and waited for as `up` waits, ended with the job.

The plan is built on placeholder node addresses (`launcher-node-I.invalid`); the script learns the real
ones when the job starts (`scontrol show hostnames` and each node's NodeAddr) and every argv and env word
that names a node is written with `"${ADDR[I]}"` in its place. Each step runs its service in a session of
its own (a wrapper) and ends that whole session when the step is signalled (the job ends, `scancel`) or the
service exits: Slurm sites that track processes by process group (proctrack/pgid) would otherwise leave
the engines' reparented children running. With `runtime: docker` the steps run the image through pyxis
(`srun --container-image`); with `runtime: process`, on the nodes' own Python environment.
Pure text, built from argv lists with the one quoting rule (`runtime.shell.q`)."""

from __future__ import annotations

import json
import re

from launcher.plan.types import Plan, Service
from launcher.runtime.shell import q

PLACEHOLDER = re.compile(r"launcher-node-(\d+)\.invalid")
# Runs on the node as the step's task: the service in a session of its own, ended whole (orphans too).
# Its working directory is a fresh one of its own: `mktemp -d` makes it with mode 0700 under a name nobody
# can guess, and fails rather than reuse one that exists. `python3 -m ...` puts its working directory first
# on sys.path (every Python version), so a predictable directory in a shared /tmp would let another user
# plant a `dynamo/` package there that runs as the job's user; a private one also covers anything else
# that reads its working directory.
WRAPPER = r"""name=$0
dir=$(mktemp -d "${TMPDIR:-/tmp}/launcher-${SLURM_JOB_ID:-0}-$name.XXXXXXXXXX") && cd "$dir" || {
  echo "launcher: $name: cannot create a private working directory in ${TMPDIR:-/tmp}" >&2; exit 1; }
setsid "$@" < /dev/null &
svc=$!
stop() {
  kill -TERM -- "-$svc" 2>/dev/null; pkill -TERM -s "$svc" 2>/dev/null
  for _ in $(seq 100); do kill -0 -- "-$svc" 2>/dev/null || pgrep -s "$svc" >/dev/null 2>&1 || break; sleep 0.1; done
  pkill -KILL -s "$svc" 2>/dev/null; kill -KILL -- "-$svc" 2>/dev/null
  cd / && rm -rf "$dir"
}
trap 'stop; exit 143' TERM INT HUP
wait "$svc"; code=$?
stop
echo "launcher: $name exited with $code" >&2
exit "$code"
"""

PRELUDE = r"""set -uo pipefail
JOB_DIR=${LAUNCHER_JOB_DIR:-${SLURM_SUBMIT_DIR:-$PWD}/__DEPLOYMENT__-${SLURM_JOB_ID:?run this script with sbatch}}
mkdir -p "$JOB_DIR"
STEPS=$JOB_DIR/steps
: > "$STEPS"
mapfile -t NODE < <(scontrol show hostnames "$SLURM_JOB_NODELIST")
if [ "${#NODE[@]}" -lt __NODES__ ]; then
  echo "launcher: the job has ${#NODE[@]} node(s), the deployment needs __NODES__ (sbatch -N __NODES__)" >&2; exit 2
fi
ADDR=()
for i in "${!NODE[@]}"; do
  ADDR[i]=$(scontrol show node "${NODE[i]}" | sed -n 's/.*NodeAddr=\([^ ]*\).*/\1/p' | head -n 1)
  ADDR[i]=${ADDR[i]:-${NODE[i]}}
done
PYTHON=$(command -v python3 || true)
[ -n "$PYTHON" ] || { echo "launcher: python3 is needed on the batch node to wait for readiness" >&2; exit 2; }
"""

FUNCTIONS = r"""running() { [ -r "/proc/$1/stat" ] && [ "$(awk '{print $3}' "/proc/$1/stat")" != Z ]; }
# launch NAME NODE [srun options] -- WORDS: one step, its output in $JOB_DIR/NAME.log
launch() {
  local name=$1 node=$2; shift 2
  local opts=()
  while [ "$1" != -- ]; do opts+=("$1"); shift; done; shift
  srun --overlap --nodes=1 --ntasks=1 --nodelist="${NODE[node]}" --job-name="$name" "${opts[@]}" \
    bash -c "$WRAPPER" "$name" "$@" > "$JOB_DIR/$name.log" 2>&1 < /dev/null &
  echo "$name $!" >> "$STEPS"
  echo "[$(date +%T)] started $name on ${NODE[node]} (${ADDR[node]})"
}
# ready SPEC: wait as `launcher up` waits (in the background, so that a signal is handled at once)
ready() {
  "$PYTHON" - "$1" "$JOB_DIR" "$STEPS" "${ADDR[@]}" <<< "$WAITER" &
  local waiter=$!
  wait "$waiter"
}
teardown() {
  trap - EXIT TERM INT
  echo "[$(date +%T)] stopping every step"
  while read -r name pid; do kill -TERM "$pid" 2>/dev/null; done < "$STEPS"
  for _ in $(seq 600); do
    local left=0
    while read -r name pid; do running "$pid" && left=1; done < "$STEPS"
    [ "$left" = 0 ] && break
    sleep 0.1
  done
  echo "[$(date +%T)] all steps ended"
}
trap 'teardown; exit 143' TERM INT
trap teardown EXIT
"""

SUPERVISE = r"""# Until the job ends (scancel, its time limit), or the first step exits, which ends the deployment.
wait -n
status=$?
while read -r name pid; do
  if ! running "$pid"; then
    echo "launcher: $name exited ($status); last lines of $JOB_DIR/$name.log:" >&2
    tail -n 40 "$JOB_DIR/$name.log" >&2
    break
  fi
done < "$STEPS"
exit 1
"""


def word(text: str) -> str:
    """A shell word for `text`, each node placeholder in it replaced by that node's address at run time."""
    parts = PLACEHOLDER.split(text)
    out = []
    for i, part in enumerate(parts):
        if i % 2:
            out.append(f'"${{ADDR[{part}]}}"')
        elif part:
            out.append(q(part))
    return "".join(out) or "''"


def uses_gpus(s: Service) -> bool:
    return (s.container.gpus or "all") != "none" and s.node.gpus > 0


def step(plan: Plan, s: Service, job_gpus: bool) -> str:
    """The `launch` line of one service: srun options, then `env K=V... argv` for the wrapper."""
    options: list[str] = []
    if plan.runtime == "docker":
        mounts = [*(s.container.volumes or []), *(f"{d}:{d}" for d in s.container.devices or [])]
        options += [f"--container-image={s.image}", "--no-container-mount-home", "--container-writable"]
        if mounts:
            options.append("--container-mounts=" + ",".join(mounts))
    if job_gpus and not uses_gpus(s):
        options.append("--gres=none")
    env = dict(s.env)
    if plan.runtime == "process" and plan.python_env:  # as the process runtime runs it
        env["PATH"] = f"{plan.python_env}/bin:" + env.get("PATH", "/usr/local/bin:/usr/bin:/bin")
    gpus = s.container.gpus or "all"
    if uses_gpus(s) and gpus not in ("all", "none"):
        env["CUDA_VISIBLE_DEVICES"] = gpus  # the group's GPUs of the node (Slurm gave the step all of them)
    rendered = [word(w) for w in ["env", *(f"{k}={v}" for k, v in env.items()), *s.command]]
    head = " ".join([q(s.service), str(s.node.index), *map(q, options), "--"])
    return "launch " + head + " \\\n  " + " ".join(rendered)


def secret_lines(plan: Plan) -> list[str]:
    """Each secret demanded from the environment sbatch runs in, under the name the user holds it by;
    one the file renames (`OPENAI_KEY: ${MY_KEY}`) exported under the service's name for srun to pass on."""
    names = sorted({n for s in plan.services for n in s.secret_env})
    lines = []
    for held in sorted({plan.secret_source(n) for n in names}):
        lines.append(f': "${{{held}:?launcher: secret {held} is not set in the environment sbatch was run from}}"')
    lines += [f'export {n}="${plan.secret_source(n)}"' for n in names if plan.secret_source(n) != n]
    return lines


def spec(plan: Plan, services: list[Service], endpoint: bool) -> str:
    """What `ready` waits for, as JSON (the waiter replaces the node placeholders)."""
    body: dict = {
        "services": [{"name": s.service, "probe": s.probe.to_json(), "timeout": s.timeout} for s in services],
        "endpoint": None,
        "smoke": endpoint,
    }
    entry = plan.entry
    if endpoint and entry is not None and plan.endpoint:
        expected: dict[str, int] = {}
        for g in plan.groups:
            for component, count in g.expected_instances.items():
                expected[component] = expected.get(component, 0) + count
        body["endpoint"] = {
            "kind": "router" if entry.role == "router" else "frontend",
            "url": plan.endpoint,
            "probe": entry.probe.to_json(),
            "expected": expected,
            "model": plan.model_name,
            "timeout": max([s.timeout for s in plan.services if s.group] + [entry.timeout]),
        }
    return json.dumps(body, separators=(",", ":"))


def stages(plan: Plan) -> list[tuple[str, list[Service], bool]]:
    """etcd and NATS, then the frontend, then every rank of every group with the router: as `up` orders them."""
    first = [s for s in plan.services if s.role in ("etcd", "nats")]
    frontend = [s for s in plan.services if s.role == "frontend"]
    rest = [s for s in plan.services if s not in first and s not in frontend]
    return [(n, ss, e) for n, ss, e in (("etcd, NATS", first, False), ("the frontend", frontend, False),
                                        ("the workers", rest, True)) if ss]  # fmt: skip


def header(plan: Plan, command: str, nodes: int, gpus: int) -> list[str]:
    lines = [
        "#!/bin/bash",
        f"#SBATCH --job-name={plan.deployment}",
        f"#SBATCH --nodes={nodes}",
        "#SBATCH --exclusive",
        f"#SBATCH --output={plan.deployment}-%j.out",
    ]
    if gpus:
        lines.append(f"#SBATCH --gpus-per-node={gpus}")
    lines += [
        f"# Written by `{command}`: sbatch this file (add a --time limit as your site wants).",
        "# Every service and rank is an `srun` step on the job's nodes (node I of the file is the job's I-th node),",
        "# started and waited for as `launcher up` does; each step's output goes to $JOB_DIR/SERVICE.log. The",
        "# deployment lives until the job ends (scancel, the time limit) or a step exits; then every step is ended,",
        "# each with every process of its service's session.",
    ]
    if plan.runtime == "docker":
        lines += [
            "# Containers through pyxis (`srun --container-image`); not expressible there and so not applied:",
            "# privileged, cap_add, ulimits, shm size (enroot runs the image as the job's user, on the host's",
            "# network and IPC).",
        ]
    return lines


def batch_script(plan: Plan, waiter: str, command: str) -> str:
    nodes = max(s.node.index for s in plan.services) + 1
    gpus = max((s.node.gpus for s in plan.services if uses_gpus(s)), default=0)
    lines = header(plan, command, nodes, gpus)
    lines.append(PRELUDE.replace("__DEPLOYMENT__", plan.deployment).replace("__NODES__", str(nodes)))
    if plan.runtime == "docker":
        lines.append(
            "srun --help 2>&1 | grep -q -- --container-image || { echo 'launcher: runtime docker needs pyxis"
            " (srun --container-image); this site has none: set `runtime: process` and export again' >&2; exit 2; }"
        )
    lines += secret_lines(plan)
    lines += [f"WRAPPER={q(WRAPPER)}", f"WAITER={q(waiter)}", FUNCTIONS]
    for title, services, endpoint in stages(plan):
        lines.append(f"# -- {title}")
        lines += [step(plan, s, bool(gpus)) for s in services]
        lines.append(f"ready {q(spec(plan, services, endpoint))} || exit 1")
    who = f"{plan.deployment} on ${{#NODE[@]}} node(s), job $SLURM_JOB_ID"
    lines.append(f'echo "[$(date +%T)] ready: {who}; it ends with the job (scancel $SLURM_JOB_ID)"')
    if plan.endpoint:
        chat = json.dumps({"model": plan.model_name or "default", "messages": [{"role": "user", "content": "Hello!"}],
                           "max_tokens": 32})  # fmt: skip
        model = q(f"  model: {plan.model_name}") if plan.model_name else ""  # a word of its own, as every value
        lines += [
            f"ENDPOINT={word(plan.endpoint)}",
            f"CHAT={q(chat)}",
            f'echo "endpoint: $ENDPOINT"{model}',
            "echo \"curl -sS $ENDPOINT/v1/chat/completions -H 'Content-Type: application/json' -d '$CHAT'\"",
        ]
    lines.append(SUPERVISE)
    return "\n".join(lines)
