"""GPU health per node: remote/gpu_health.py's answer read (as untrusted: bounded, validated, one line
when it is not what the program prints) and turned into verdicts, for `doctor`, `status` and `collect`.

Verdicts, worst first: `drain` (drain and exclude the node: its GPU needs a reset, a reboot or service),
`restart` (restart the rank on that GPU: the fault was the application's or was contained to it),
`warn` (look at it: throttling, an Xid the table does not know), `ignore`, `ok`. Each Xid's verdict comes
from XIDS, which follows the immediate action ("resolution bucket") NVIDIA's Xid catalogue gives it:
RESTART_APP -> restart, RESET_GPU / RESTART_BM / drain -> drain (CATALOG). Only ever checked against
recorded output (tests/data/gpu/README.md names where each sample comes from): no GPU ran it here.
"""

from __future__ import annotations

import csv
import io
import json
import posixpath
import re
from dataclasses import dataclass, field

from launcher.operations.context import Target
from launcher.operations.preflight import Check
from launcher.plan import engines
from launcher.plan.types import Group, Plan
from launcher.remote import program as remote_program
from launcher.runtime.lock import STATE_DIR_REFUSED, guard_script
from launcher.runtime.shell import find_python, q
from launcher.transport.errors import describe
from launcher.transport.host import Completed, Host

CATALOG = "https://docs.nvidia.com/deploy/xid-errors/analyzing-xid-catalog.html"
ANSWER_BYTES = 256 * 1024  # the program's own bounds add up to less (query 64 KiB, 64 lines of 400, dcgmi 64 KiB)
MAX_GPUS = 64
NO_PYTHON = "no python3 on the node (the GPU health program needs one)"
MAX_LINES = 64
LINE_CHARS = 400
RANK = {"ok": 0, "ignore": 1, "warn": 2, "restart": 3, "drain": 4}

# Xid -> (verdict, what NVIDIA's catalogue (CATALOG) says it is; its immediate action in brackets)
XIDS = {
    8: ("restart", "GPU stopped processing (RESTART_APP)"),
    13: ("restart", "graphics engine exception, usually the application (RESTART_APP)"),
    31: ("restart", "GPU memory page fault, usually the application (RESTART_APP)"),
    43: ("restart", "GPU stopped processing, a channel reset after an application fault (RESTART_APP)"),
    45: ("ignore", "preemptive cleanup after another fault or a process exit (IGNORE)"),
    48: ("drain", "double-bit ECC error (RESET_GPU)"),
    61: ("drain", "internal micro-controller breakpoint/warning (RESET_GPU)"),
    62: ("drain", "internal micro-controller halt (RESET_GPU)"),
    63: ("drain", "ECC page retirement or row remapping recorded, active after a GPU reset (RESET_GPU)"),
    64: ("drain", "ECC page retirement or row remapping failed (RESET_GPU)"),
    74: ("drain", "NVLink error (RESET_GPU)"),
    79: ("drain", "GPU has fallen off the bus (RESTART_BM: reboot the node)"),
    92: ("ignore", "high single-bit ECC error rate, corrected by the hardware (IGNORE; watch the trend)"),
    94: ("restart", "contained uncorrectable ECC error: only the application that touched it failed (RESTART_APP)"),
    95: ("drain", "uncontained uncorrectable ECC error: every application on the GPU is affected (RESET_GPU)"),
    109: ("restart", "context switch timeout (RESTART_APP)"),
    119: ("drain", "GSP RPC timeout (RESET_GPU)"),
    120: ("drain", "GSP error (RESET_GPU)"),
    154: ("drain", "GPU recovery action changed: the driver asks for a reset or a reboot (RESET_GPU)"),
}
XID_LINE = re.compile(r"NVRM: Xid \((?:PCI:)?([0-9A-Fa-f:.]{7,16})\): (\d{1,4})\b,?\s*(.*)")
OFF_BUS = re.compile(r"NVRM: .*fallen off the bus")
# clocks_throttle_reasons.active bits (NVML's nvmlClocksEventReasons): the ones a healthy busy GPU never shows
THROTTLE_BITS = {0x8: "hardware slowdown", 0x20: "software thermal slowdown", 0x40: "hardware thermal slowdown",
                 0x80: "hardware power brake"}  # fmt: skip
BASIC = ("index", "uuid", "name", "pci.bus_id")
ASKED = (*BASIC, "ecc.errors.uncorrected.volatile.total", "retired_pages.pending", "remapped_rows.pending",
         "remapped_rows.failure", "clocks_throttle_reasons.active")  # fmt: skip


class GpuAnswerError(ValueError):
    """What a node sent is not what the program prints (one line: what and why)."""


@dataclass
class Finding:
    verdict: str
    text: str
    gpu: str | None = None  # the GPU index an Xid names, where its PCI bus is one the query lists
    line: str = ""  # the kernel log line it was read from: what `watch` remembers having acted on

    def to_json(self) -> dict:
        return {"verdict": self.verdict, "text": self.text}


@dataclass
class NodeGpus:
    """One node's GPUs as its answer shows them."""

    tool: bool
    gpus: list[dict] = field(default_factory=list)
    expected: int = 0
    findings: list[Finding] = field(default_factory=list)
    diag: str | None = None  # dcgmi's verdict line (--gpu-diag), or why it did not run

    @property
    def verdict(self) -> str:
        return max((f.verdict for f in self.findings), key=RANK.__getitem__, default="ok")

    def worst(self) -> list[str]:
        """The findings of the worst verdict, one line per kind: a burst of one Xid on one GPU is said once."""
        if self.verdict == "ok":
            return []
        return list(dict.fromkeys(f.text.split(" [")[0] for f in self.findings if f.verdict == self.verdict))

    def summary(self) -> str:
        if not self.tool:
            return "no NVIDIA GPU tool (nvidia-smi) on the node"
        worst = self.worst()
        head = f"{len(self.gpus)} GPU(s)" + (f" of {self.expected} planned" if self.expected else "")
        if not worst:
            return head + ", healthy"
        more = f" (+{len(worst) - 3} more)" if len(worst) > 3 else ""
        return f"{head}: {'; '.join(worst[:3])}{more}"

    def to_json(self) -> dict:
        return {"tool": self.tool, "gpus": len(self.gpus), "expected": self.expected, "verdict": self.verdict,
                "findings": [f.to_json() for f in self.findings], "diag": self.diag}  # fmt: skip


# -- reading one answer ---------------------------------------------------------------------------


def parse(text: str, expected: int) -> NodeGpus:
    """The program's JSON line -> the node's GPUs and findings; GpuAnswerError when it is not that."""
    if len(text) > ANSWER_BYTES:
        raise GpuAnswerError(f"the answer is over {ANSWER_BYTES // 1024} KiB")
    lines = [line for line in text.splitlines() if line.strip()]
    if lines == [NO_PYTHON]:
        raise GpuAnswerError(NO_PYTHON)
    if len(lines) != 1:
        raise GpuAnswerError(f"expected one JSON line, got {len(lines)} line(s)")
    try:
        answer = json.loads(lines[0])
    except (ValueError, RecursionError):
        raise GpuAnswerError("the answer is not JSON") from None
    if not isinstance(answer, dict) or answer.get("v") != 1 or answer.get("tool") not in (None, "nvidia-smi"):
        raise GpuAnswerError("the answer is not the gpu_health program's (no version 1, or an unknown tool)")
    node = NodeGpus(tool=answer["tool"] is not None, expected=expected)
    if node.tool:
        _query(node, _part(answer, "query", {"rc": (int, type(None)), "out": str}))
        _kernel_log(node, _part(answer, "klog", {"source": str, "lines": list, "error": (str, type(None))}))
    if "dcgmi" in answer:
        shape = {"rc": (int, type(None)), "out": str}
        found = answer["dcgmi"] is not None
        node.diag = _diag(node, _part(answer, "dcgmi", shape)) if found else "dcgmi is not installed on the node"
    return node


def _part(answer: dict, key: str, shape: dict) -> dict:
    part = answer.get(key)
    if not isinstance(part, dict) or any(k not in part or not isinstance(part[k], t) for k, t in shape.items()):
        raise GpuAnswerError(f"`{key}` is missing or not of the program's shape")
    return part


def _query(node: NodeGpus, query: dict) -> None:
    out = query["out"]
    if query["rc"] is None:  # stopped by the program: a flood of output, or a tool that hangs (a sick GPU can)
        raise GpuAnswerError("nvidia-smi went past its bounds (32 KiB of output or 20 s) and was stopped")
    if query["rc"] != 0:
        why = (out.strip().splitlines() or [f"exit {query['rc']}"])[-1]
        node.findings.append(Finding("drain", f"nvidia-smi fails: {_clean(why)[:200]}"))
        return
    node.gpus = parse_query(out)
    for gpu in node.gpus:
        node.findings += gpu_findings(gpu)
    if node.expected and len(node.gpus) < node.expected:
        node.findings.append(Finding("drain", f"GPU missing: {len(node.gpus)} of the {node.expected} planned"))


def parse_query(out: str) -> list[dict]:
    """`nvidia-smi --query-gpu=... --format=csv,nounits` (header first) -> one dict per GPU."""
    try:
        rows = list(csv.reader(io.StringIO(out[: 64 * 1024]), skipinitialspace=True))
    except csv.Error as exc:
        raise GpuAnswerError(f"nvidia-smi's CSV is not CSV: {exc}") from None
    if not rows:
        raise GpuAnswerError("nvidia-smi printed nothing")
    header = [h.strip() for h in rows[0]]
    if tuple(header) not in (ASKED, BASIC):
        raise GpuAnswerError(f"nvidia-smi's columns are not the ones asked for: {_clean(','.join(header))[:120]}")
    gpus, seen = [], set()
    for row in rows[1:]:
        if not row:
            continue
        if len(row) != len(header):
            raise GpuAnswerError(f"a GPU row has {len(row)} fields, the header {len(header)}")
        gpu = dict(zip(header, (v.strip() for v in row), strict=True))
        if not gpu["index"].isascii() or not gpu["index"].isdigit() or len(gpu["index"]) > 3:
            raise GpuAnswerError(f"GPU index {_clean(gpu['index'])[:20]!r} is not a number")
        if gpu["index"] in seen:
            raise GpuAnswerError(f"GPU {gpu['index']} is listed twice")
        if len(gpus) >= MAX_GPUS:
            raise GpuAnswerError(f"over {MAX_GPUS} GPUs listed")
        seen.add(gpu["index"])
        gpus.append({k: _clean(v)[:100] for k, v in gpu.items()})
    return gpus


def gpu_findings(gpu: dict) -> list[Finding]:
    """The counters of one GPU's row -> findings (a field the driver does not report is skipped)."""
    name = f"GPU {gpu['index']}"
    found = []
    ecc = _count(gpu.get("ecc.errors.uncorrected.volatile.total"))
    if ecc:
        found.append(Finding("drain", f"{name}: {ecc} uncorrected ECC error(s) since the driver loaded"))
    if _yes(gpu.get("remapped_rows.failure")):
        found.append(Finding("drain", f"{name}: a row remapping failed (the memory cannot be repaired)"))
    if _yes(gpu.get("remapped_rows.pending")):
        found.append(Finding("drain", f"{name}: a row remapping is pending (active after a GPU reset)"))
    if _yes(gpu.get("retired_pages.pending")):
        found.append(Finding("drain", f"{name}: a page retirement is pending (active after a GPU reset)"))
    mask = _hex(gpu.get("clocks_throttle_reasons.active"))
    reasons = [why for bit, why in THROTTLE_BITS.items() if mask & bit]
    if reasons:
        found.append(Finding("warn", f"{name}: clocks throttled ({', '.join(reasons)})"))
    return found


def _kernel_log(node: NodeGpus, klog: dict) -> None:
    if klog["error"]:
        node.findings.append(Finding("warn", f"kernel log: {_clean(klog['error'])[:200]}"))
    entries = klog["lines"]
    if len(entries) > MAX_LINES:
        raise GpuAnswerError(f"over {MAX_LINES} kernel log lines")
    by_bus = {_bus(g.get("pci.bus_id", "")): g["index"] for g in node.gpus}
    for entry in entries:
        if not (isinstance(entry, dict) and isinstance(entry.get("line"), str) and isinstance(entry.get("new"), bool)):
            raise GpuAnswerError("a kernel log entry is not of the program's shape")
        finding = xid_finding(entry["line"][:LINE_CHARS], by_bus)
        # a fatal Xid holds until the node reboots; an application's only when it is new since the last look
        if finding and (entry["new"] or finding.verdict == "drain"):
            finding.line = _clean(entry["line"][:LINE_CHARS])
            node.findings.append(finding)


def xid_finding(line: str, by_bus: dict[str, str] | None = None) -> Finding | None:
    """One kernel log line -> its verdict (None: not an Xid line)."""
    match = XID_LINE.search(line)
    if match is None:
        if OFF_BUS.search(line):
            return Finding("drain", "a GPU has fallen off the bus (logged without an Xid)")
        return None
    bus, xid, rest = match.group(1), int(match.group(2)), _clean(match.group(3))[:80]
    gpu = (by_bus or {}).get(_bus(bus))
    where = f"GPU {gpu} (PCI {bus})" if gpu is not None else f"PCI {bus}"
    verdict, meaning = XIDS.get(xid, ("warn", f"not in the launcher's table: look it up in {CATALOG}"))
    text = f"Xid {xid} on {where}: {meaning}" + (f" [{rest}]" if rest and verdict != "ignore" else "")
    return Finding(verdict, text, gpu=gpu)


def _diag(node: NodeGpus, dcgmi: dict) -> str:
    out = dcgmi["out"]
    failed = [line for line in out.splitlines() if "Fail" in line]
    if dcgmi["rc"] is None:
        node.findings.append(Finding("warn", "dcgmi diag -r 1 did not finish in time"))
        return "dcgmi diag -r 1: stopped (time or output bound)"
    if dcgmi["rc"] != 0 or failed:
        why = _clean((failed or out.strip().splitlines() or [f"exit {dcgmi['rc']}"])[-1])[:160]
        node.findings.append(Finding("drain", f"dcgmi diag -r 1 fails: {why}"))
        return f"dcgmi diag -r 1: fail ({why})"
    return "dcgmi diag -r 1: pass"


def _bus(text: str) -> str:
    """A PCI address's bus:device, lower case ('00000000:9B:00.0' and '0000:9b:00' -> '9b:00')."""
    parts = text.lower().split(".")[0].split(":")
    return ":".join(parts[-2:])


def _count(text: str | None) -> int:
    return int(text) if text and text.isascii() and text.isdigit() and len(text) <= 12 else 0


def _yes(text: str | None) -> bool:
    return (text or "").strip().lower() in ("yes", "1", "true")


def _hex(text: str | None) -> int:
    try:
        return int(text or "0", 16) if len(text or "") <= 20 else 0
    except ValueError:
        return 0


def _clean(text: str) -> str:
    """Printable text only: a node's words never move the operator's cursor or colour the terminal."""
    return "".join(c if c.isprintable() else "?" for c in text)


# -- asking every node ----------------------------------------------------------------------------


# a drain finding whose GPU no longer serves (nvidia-smi failing is not one: a driver and library mismatch
# leaves the running ranks serving)
GONE = ("GPU missing", "fallen off the bus")


def gpu_gone(node: NodeGpus | str) -> bool:
    """Does a `drain` finding say a GPU no longer serves at all (fallen off the bus, missing)? Its ranks then
    hold requests they cannot finish: `watch` moves them without a drain."""
    if isinstance(node, str):
        return False
    return any(f.verdict == "drain" and any(k in f.text for k in GONE) for f in node.findings)


def gpu_groups(plan: Plan) -> list[Group]:
    """The groups whose ranks may use GPUs: given some, by an engine that is not GPU-free (a mocker is given
    the node's GPU indices too, and uses none: its nodes and spares need no nvidia-smi to be asked)."""
    return [g for g in plan.groups if g.gpus and not getattr(engines.get(g.engine), "gpu_free", False)]


def expected_gpus(plan: Plan, index: int) -> int:
    """How many GPUs node INDEX must list: up to the highest index any group there is given (groups share a
    node on GPUs of their own, 0-3 and 4-7; and the driver renumbers what is left when one vanishes)."""
    return max((max(g.gpus) + 1 for g in gpu_groups(plan) if index in g.node_indices), default=0)


def state_path(plan: Plan) -> str:
    """Where the program keeps its kernel log position: beside the deployment's other state on the node."""
    return posixpath.join(plan.state_dir, plan.deployment, "gpu-health.json")


def state_args(plan: Plan, create: bool = True) -> str:
    """Shell: set "$@" to the program's STATE argument, and --state-refused=WHY where the state_dir is not
    this user's alone (lock.guard_script: another user of the node could swap the file, or forge the lines
    it keeps). `create`: make a missing state_dir (0700), as every script that writes there does."""
    refused = q(STATE_DIR_REFUSED + " ")
    return (
        f"why=$({guard_script(plan.state_dir, create)}); "
        f'case "$why" in {refused}*) set -- {q(state_path(plan))} "--state-refused=${{why#{refused}}}";; '
        f"*) set -- {q(state_path(plan))};; esac"
    )


def node_script(plan: Plan, *, diag: bool = False, peek: bool = False) -> str:
    """Shell: the program (on stdin) under the node's python3, its answer cut at ANSWER_BYTES."""
    flags = (" --diag" if diag else "") + (" --peek" if peek else "")
    return (
        f"PY=$({find_python(plan.python_env)}) || {{ echo {q(NO_PYTHON)}; exit 0; }}; {state_args(plan)}; "
        f'"$PY" - "$@"{flags} 2>&1 | head -c {ANSWER_BYTES + 1}'
    )


def look(
    t: Target, indices: list[int] | None = None, *, diag: bool = False, peek: bool = False, timeout: float | None = None
) -> dict:
    """Every chosen node at once -> {index: NodeGpus, or the one line saying why not}. `timeout`: a caller
    that must not wait long (watch's round) gives its own."""
    # the program's own bounds add up to 70 s (query twice, kernel log twice)
    timeout = timeout if timeout is not None else 400 if diag else 90
    script = node_script(t.plan, diag=diag, peek=peek)
    results = t.fleet.run(script, indices, stdin=remote_program("gpu_health"), timeout=timeout)
    return {i: read(t.plan, i, r) for i, r in sorted(results.items())}


def look_host(t: Target, host: Host, timeout: float) -> NodeGpus | str:
    """One node's look through its own host, without moving the kernel log's place (`top`, per node)."""
    try:
        result = host.run(node_script(t.plan, peek=True), stdin=remote_program("gpu_health"), timeout=timeout)
    except Exception as exc:  # noqa: BLE001 - one node's failure is that node's line, never the caller's end
        return describe(exc)
    return read(t.plan, host.node.index, result)


def read(plan: Plan, index: int, result: Completed | Exception) -> NodeGpus | str:
    """One node's run of the program -> its GPUs, or the one line saying why not."""
    if isinstance(result, Exception):
        return describe(result)
    try:
        return parse(result.stdout, expected_gpus(plan, index))
    except GpuAnswerError as exc:
        return f"GPU health unreadable: {exc}"


def gpu_nodes(plan: Plan) -> list[int]:
    """The nodes the plan gives GPUs to (a group's ranks there use some): the ones whose GPUs matter."""
    return sorted({i for g in gpu_groups(plan) for i in g.node_indices})


def spare_unfit(t: Target, spare: int, need: int, timeout: float) -> str | None:
    """Why node SPARE cannot take the ranks of a node the plan gives NEED GPUs (None: it can): looked at now
    (spare_fault). Where the plan needs none there (gpus_per_node 0), nothing is looked at: a spare of a
    deployment without GPUs has no nvidia-smi, and needs none."""
    if need == 0:
        return None
    return spare_fault(look(t, [spare], peek=True, timeout=timeout).get(spare, "no answer"), need)


def spare_fault(seen: NodeGpus | str, need: int) -> str | None:
    """Why a spare whose look gave SEEN cannot take the ranks of a node the plan gives NEED GPUs (None: it
    can). Its verdict must be below `drain` (a spare fallen off the bus would take the group down with it)
    and it must list NEED GPUs at least."""
    if isinstance(seen, str):
        return seen
    if not seen.tool:
        return f"no nvidia-smi there: its GPUs cannot be checked ({need} needed)"
    if seen.verdict == "drain":
        return f"GPUs drain: {seen.summary()}"
    if len(seen.gpus) < need:
        return f"{len(seen.gpus)} GPU(s), {need} needed"
    return None


def marker(seen: NodeGpus | str | None) -> str:
    """`top`'s word for a node's GPUs: `ok`, or the verdict and its first finding (`drain: Xid 79 on ...`)."""
    if seen is None:
        return "-"  # not looked at yet
    if isinstance(seen, str):
        return f"? {seen[:80]}"
    if not seen.tool:
        return "no nvidia-smi"
    worst = seen.worst() if seen.verdict not in ("ok", "ignore") else []
    if not worst:
        return "ok"
    first = worst[0] if len(worst[0]) <= 100 else worst[0][:97] + "..."  # a table cell, not a report
    more = f" (+{len(worst) - 1} more)" if len(worst) > 1 else ""
    return f"{seen.verdict}: {first}{more}"


# -- what doctor and status show --------------------------------------------------------------------

DOCTOR_STATUS = {"ok": "ok", "ignore": "ok", "warn": "warn", "restart": "warn", "drain": "fail"}
FIXES = {
    "drain": "drain the node, take it out of the plan; reset the GPU or reboot, service it if it recurs",
    "restart": "restart the rank on that GPU (launcher restart / watch does); look at the application if it recurs",
    "warn": "check cooling and power (nvidia-smi -q -d PERFORMANCE) or the kernel log",
}


def doctor_checks(t: Target, reachable: list[int], diag: bool):
    """One `gpu-health` check per reachable node (and `gpu-diag` with --gpu-diag)."""
    checks = []
    for i, node in look(t, reachable, diag=diag).items():
        if isinstance(node, str):
            checks.append(Check(i, "gpu-health", "fail", node, "check the node (nvidia-smi, python3)"))
            continue
        status = DOCTOR_STATUS[node.verdict] if node.tool else "skip"
        checks.append(Check(i, "gpu-health", status, node.summary(), FIXES.get(node.verdict, "")))
        if diag:
            passed = node.diag is not None and node.diag.endswith(": pass")
            state = "ok" if passed else ("skip" if node.diag and "not installed" in node.diag else "fail")
            fix = FIXES["drain"] if state == "fail" else ""
            checks.append(Check(i, "gpu-diag", state, node.diag or "not run", fix))
    return checks


def status_lines(t: Target, unreachable) -> tuple[list[str], dict]:
    """`status`: a line per node whose GPUs need something done (none when all are well, or when the
    nodes have no NVIDIA tool), and the JSON of every node's verdict."""
    seen = look(t, [i for i in range(len(t.plan.nodes)) if i not in unreachable])
    lines = []
    for i, node in seen.items():
        label = t.plan.nodes[i].label
        if isinstance(node, str):
            lines.append(f"{label}: GPUs: {node}")
        elif node.verdict in ("drain", "restart", "warn"):
            lines.append(f"{label}: GPUs {node.verdict}: {node.summary()}")
    return lines, {str(i): (n if isinstance(n, str) else n.to_json()) for i, n in seen.items()}
