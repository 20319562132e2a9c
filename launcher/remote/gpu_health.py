"""A node's GPU health, read where it is: the launcher's gpu_health program.

Standard library only (the host's python3, 3.8 or newer); it imports nothing of the launcher. Sent over
the node's SSH session by `doctor`, `status` and `collect` (launcher/operations/gpu_health.py reads its
answer). It runs, each bounded in bytes and time:
  - `nvidia-smi --query-gpu=FIELDS --format=csv,nounits` (with its header: the reader checks the columns
    it is given against the ones it asked for), once more with the basic fields when the driver knows
    no such field;
  - the kernel log's NVRM lines (Xid, and "fallen off the bus", which a GPU can log without an Xid:
    NVIDIA/NVSentinel#155) since the last look: `journalctl -k` after the cursor kept in STATE, else
    `dmesg` after the kernel timestamp kept there (a journal read cut at its bounds is made again for
    fewer lines: a cut drops the newest lines and the cursor, so a cut read is never judged as the whole);
  - with --diag, `dcgmi diag -r 1` where dcgmi exists.
The lines seen this boot are kept in STATE (the newest of each GPU and Xid, at most KEPT), so that a node
that logged a fatal Xid stays flagged until it reboots, not only on the first look after it. --peek
(collect) reads without moving the position. One JSON line on stdout:
{"v": 1, "tool": ..., "query": ..., "klog": ..., "dcgmi": ...}.

argv: STATE [--diag] [--peek] [--state-refused=WHY]
STATE's directory is the launcher's state_dir, checked by the node script first (lock.guard_script): where
it is refused (another user's, or writable by others), --state-refused says why and no position is read or
kept there. The file itself is read and written without following a link, and never through a planted
temporary name (O_EXCL), even so.
"""

import json
import os
import re
import selectors
import shutil
import subprocess
import sys
import time

FIELDS = (
    "index,uuid,name,pci.bus_id,ecc.errors.uncorrected.volatile.total,retired_pages.pending,"
    "remapped_rows.pending,remapped_rows.failure,clocks_throttle_reasons.active"
)
BASIC_FIELDS = "index,uuid,name,pci.bus_id"
QUERY_BYTES = 32 * 1024  # 8 GPUs need under 2 KiB; a node lists at most a few dozen
QUERY_SECONDS = 20.0
KLOG_BYTES = 4 * 1024 * 1024  # of the kernel log read per look; its NVRM lines are kept, the rest dropped
KLOG_LINES = 20000  # journalctl -n: the newest lines of this boot on a first look, the next ones after
KLOG_LINES_AGAIN = 2000  # ...and when those were past KLOG_BYTES: a kernel line is at most ~1 KiB, so these fit
KLOG_SECONDS = 15.0
LINE_CHARS = 400  # of one kept line
KEPT = 64  # NVRM lines kept per boot (the newest)
DIAG_BYTES = 32 * 1024
# Everything sent back is printable ASCII (the rest becomes "?"), so that JSON at most doubles it (quotes and
# backslashes): 2 x (32 KiB + 64 x 400 + 32 KiB) stays under the 256 KiB the launcher reads.
PRINTABLE = bytes(range(32, 127)) + b"\n\t"
DIAG_SECONDS = 300.0
NVRM = re.compile(r"NVRM: (Xid|.*fallen off the bus)")
# What a line is about: (the GPU's bus:device, the Xid or "off bus"). One line of each is kept, the newest, so
# that a burst (Xid 45 for every channel of every process an Xid 79 killed) never pushes the fatal line out.
ABOUT = re.compile(
    r"NVRM: (?:Xid \((?:PCI:)?([0-9A-Fa-f:.]+)\): (\d+)|GPU ([0-9A-Fa-f:]+)[.0-9]*: .*fallen off the bus)"
)
NOT_ALLOWED = "insufficient permissions"  # journalctl's words for a user outside systemd-journal/adm
DMESG_TIME = re.compile(r"^\[\s*(\d+\.\d+)\]")


def bounded(argv, limit, seconds):
    """(exit code or None when it was stopped, the first `limit` bytes of stdout+stderr as text)."""
    try:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    except OSError as exc:
        return 127, str(exc)
    chunks, size, deadline = [], 0, time.monotonic() + seconds
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        while size <= limit and time.monotonic() < deadline:
            if not sel.select(timeout=max(0.0, deadline - time.monotonic())):
                continue
            chunk = os.read(proc.stdout.fileno(), 65536)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    stopped = size > limit or time.monotonic() >= deadline
    if not stopped:
        try:  # its output closed: it should be exiting, but never wait past the deadline for it
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            stopped = True
    if stopped:
        proc.kill()
    code = proc.wait()
    proc.stdout.close()
    return (None if stopped else code), printable(b"".join(chunks)[:limit])


def printable(data):
    return "".join(chr(b) if b in PRINTABLE else "?" for b in data)


def query(tool):
    code, out = bounded([tool, "--query-gpu=" + FIELDS, "--format=csv,nounits"], QUERY_BYTES, QUERY_SECONDS)
    if code != 0 and "valid field" in out:  # an older driver: the basic fields still count the GPUs
        code, out = bounded([tool, "--query-gpu=" + BASIC_FIELDS, "--format=csv,nounits"], QUERY_BYTES, QUERY_SECONDS)
    return {"rc": code, "out": out}


def boot_id():
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read(64).strip()
    except OSError:
        return ""


def load(path):
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        with os.fdopen(fd) as f:
            state = json.loads(f.read(1 << 20))
    except (OSError, ValueError):
        return {}
    return state if isinstance(state, dict) and state.get("boot") == boot_id() else {}


def save(path, state):
    os.makedirs(os.path.dirname(path) or ".", mode=0o700, exist_ok=True)
    part = f"{path}.{os.getpid()}.tmp"
    try:  # a link or file left at this name is removed, never written through (O_EXCL | O_NOFOLLOW)
        os.unlink(part)
    except FileNotFoundError:
        pass
    fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(state, f)
    os.replace(part, path)  # atomic: a status and a doctor at once leave one whole file


def journal(state):
    """(new NVRM lines, the next position, why not when it could not read)."""
    after = ["--after-cursor", str(state["cursor"])] if state.get("cursor") else []
    for count in (KLOG_LINES, KLOG_LINES_AGAIN):
        argv = ["journalctl", "-k", "-b", "--no-pager", "-o", "short-iso", "--show-cursor", "-n", str(count)]
        code, out = bounded(argv + after, KLOG_BYTES, KLOG_SECONDS)
        if code is not None:  # whole: a cut keeps the oldest part and drops the newest lines and the cursor
            break
    if code is None:
        return [], {"cursor": state.get("cursor")}, "journalctl: past its bounds (4 MiB or 15 s) and stopped"
    lines = out.splitlines()
    cursor = state.get("cursor")
    if lines and lines[-1].startswith("-- cursor: "):
        cursor = lines.pop()[len("-- cursor: ") :].strip()
    if code != 0 and not lines:
        return [], {"cursor": cursor}, "journalctl: " + (out.strip().splitlines() or [f"exit {code}"])[-1]
    if any(NOT_ALLOWED in line for line in lines[:5]):  # exit 0, and no kernel line: silence that is not health
        return [], {"cursor": state.get("cursor")}, "journalctl may not read the kernel log for this user"
    return [line for line in lines if NVRM.search(line)], {"cursor": cursor}, None


def ring(state):
    """dmesg's lines after the last kernel timestamp seen (no cursor there)."""
    code, out = bounded(["dmesg"], KLOG_BYTES, KLOG_SECONDS)
    if code is None:  # its newest lines are the ones cut: nothing read can stand for the whole
        return [], {"after": state.get("after")}, "dmesg: past its bounds (4 MiB or 15 s) and stopped"
    if code != 0:
        return [], {"after": state.get("after")}, "dmesg: " + (out.strip().splitlines() or [f"exit {code}"])[-1]
    after, new = float(state.get("after") or 0.0), []
    last = after
    for line in out.splitlines():
        stamp = DMESG_TIME.match(line)
        when = float(stamp.group(1)) if stamp else last
        last = max(last, when)
        if when > after and NVRM.search(line):
            new.append(line)
    return new, {"after": last}, None


def about(line):
    """(bus:device, Xid or "off bus") of an NVRM line, the line itself when it names neither."""
    found = ABOUT.search(line)
    if found is None:
        return line
    bus = (found.group(1) or found.group(3)).lower().split(".")[0].split(":")[-2:]
    return ":".join(bus), found.group(2) or "off bus"


def one_of_each(entries):
    """The newest entry of each kind (about()), in the order of those newest entries."""
    newest = {}
    for entry in entries:
        newest.pop(about(entry["line"]), None)
        newest[about(entry["line"])] = entry
    return list(newest.values())


def kernel_log(path, peek, refused=None):
    state = {} if refused else load(path)
    source = "journalctl" if shutil.which("journalctl") else "dmesg"
    new, position, error = (journal if source == "journalctl" else ring)(state)
    seen = [dict(line=line, new=False) for line in state.get("seen", []) if isinstance(line, str)]
    seen += [dict(line=line[:LINE_CHARS], new=True) for line in new]  # printable already (bounded())
    seen = one_of_each(seen)[-KEPT:]
    if refused and error is None:
        error = f"its position not kept (every line of this boot counts as new): the state_dir is {refused}"
    elif not peek and error is None:
        try:
            save(path, dict(position, boot=boot_id(), seen=[s["line"] for s in seen]))
        except OSError as exc:
            error = f"cannot keep the position in {path}: {exc.strerror or exc}"
    return {"source": source, "lines": seen, "error": error}


def main(argv):
    path = argv[0] if argv else os.path.expanduser("~/.launcher-gpu-health.json")
    tool = shutil.which("nvidia-smi")
    answer = {"v": 1, "tool": "nvidia-smi" if tool else None}
    if tool:
        answer["query"] = query(tool)
        refused = next((a.split("=", 1)[1] for a in argv if a.startswith("--state-refused=")), None)
        answer["klog"] = kernel_log(path, "--peek" in argv, refused)
    if "--diag" in argv:
        dcgmi = shutil.which("dcgmi")
        answer["dcgmi"] = None
        if dcgmi is not None:
            code, out = bounded([dcgmi, "diag", "-r", "1"], DIAG_BYTES, DIAG_SECONDS)
            answer["dcgmi"] = {"rc": code, "out": out}
    sys.stdout.write(json.dumps(answer) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
