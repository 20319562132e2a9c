"""`launcher stage --from PATH|NODE:PATH [--to PATH]`: model weights onto every node's local disk, with
the relay of `image push` (one stream from the source, the nodes passing it on to each other).

The source is hashed (sha256, reusing its manifest for files whose size and mtime did not change) and
so is what each node already holds: complete files are skipped, a partial file (`NAME.launcher-part`,
left by an interrupted stage) continues where it stopped; the stream carries each file any node needs,
from the smallest offset any of them holds. Before a byte moves, every node's free space is checked:
a node without room is named with the space needed and nothing is copied anywhere. Each node writes
the manifest (relative path, size, sha256) next to the weights; `doctor` checks it.

What each node keeps is checked against the list computed by the source's scan (carried to each node
over its SSH session), never against what the stream says: a file whose sha256 differs is not kept and
the node fails naming it and both hashes; a path that is absolute, has `..`, or leads out of the
destination through a link is refused (remote/relay.py). A destination inside the source, or around
it, on the machine that holds both, is refused before anything moves.
"""

from __future__ import annotations

import ipaddress
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from launcher.errors import ConfigError, Exit, LauncherError, one_line
from launcher.operations import ship
from launcher.operations.context import Connection, Target, connected, target
from launcher.operations.preflight import model_host_path
from launcher.output.console import say
from launcher.output.tables import print_json
from launcher.output.transfer import outcome_table, size
from launcher.plan.types import Node
from launcher.remote.manifest import unsafe_name  # the nodes' own rule, applied here first
from launcher.transport.errors import describe
from launcher.transport.host import Host
from launcher.transport.relay import Feed, Hop


@dataclass
class Source:
    host: Host
    root: str
    node: Node | None  # None: this machine
    given: str  # as typed after --from


@dataclass
class Outcome:
    index: int
    node: str
    path: str
    status: str  # complete | staged | failed | no-space
    detail: str = ""
    written: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    bytes: int = 0
    seconds: float = 0.0
    cause: str = ""
    upstream: str = ""  # where its stream came from: "this machine" or a node

    def to_json(self) -> dict:
        return {
            "node_index": self.index,
            "node": self.node,
            "path": self.path,
            "status": self.status,
            "detail": self.detail,
            "written": self.written,
            "failed": self.failed,
            "bytes": self.bytes,
            "seconds": round(self.seconds, 1),
            "from": self.upstream,
        }


def run(config, config_opt, inventory, connection: Connection, *, source, to, verify, as_json, fanout) -> None:
    t = target(config, config_opt, inventory)
    dest = destinations(t, to)
    src = parse_from(t, source)
    refuse_nesting(t, src, dest)
    with connected(t, connection):
        if src.node is not None:
            src.host = t.fleet.host(src.node.index)
        files = scan_source(t, src, verify)
        total = sum(f["size"] for f in files)
        say(f"{src.given}: {len(files)} file(s), {size(total)}; to {len(dest)} node(s)", to_stderr=True)
        outcomes = stage_round(t, src, files, dest, verify, connection, fanout, as_json)
        again = {i: dest[i] for i, o in outcomes.items() if o.cause == "upstream"}
        if again:  # only their upstream failed, and they could not resume: one more stream of their own
            say(f"again for {', '.join(outcomes[i].node for i in again)}: their upstream failed", to_stderr=True)
            outcomes.update(stage_round(t, src, files, again, verify, connection, fanout, as_json))
    report(t, src, files, [outcomes[i] for i in sorted(outcomes)], as_json)
    if any(o.status in ("failed", "no-space") for o in outcomes.values()):
        raise Exit(1)


def destinations(t: Target, to: str | None) -> dict[int, str]:
    """Each node that runs a model -> where its weights go: --to, or the host side of the volume that
    mounts model.path (the process runtime: model.path itself)."""
    if to is not None and not to.startswith("/"):
        raise ConfigError(f"{to!r}: expected an absolute path on the nodes", key="--to")
    dest: dict[int, str] = {}
    for s in t.plan.services:
        if s.group is None or s.node.index in dest:
            continue
        path = to or model_host_path(t.plan, s)
        if not path:
            raise ConfigError(
                "no target: model.path is not set, or no volume of the workers mounts it: pass --to PATH",
                file=str(t.path),
                key="model.path",
            )
        dest[s.node.index] = path.rstrip("/") or "/"
    if not dest:
        raise ConfigError("no node runs a model (the file has no groups)", file=str(t.path), key="groups")
    return dest


# The bound of one scan (hashing every file of the weights: ~700 GB at a slow disk's 100 MB/s is two hours)
SCAN_TIMEOUT = 4 * 3600


def parse_from(t: Target, value: str) -> Source:
    """`--from`: NODE:PATH (a node of the plan, an absolute path) or a directory on this machine."""
    if not value.strip():
        raise ConfigError("expected a directory or NODE:PATH, got an empty value", key="--from")
    ref, sep, path = value.partition(":")
    node = t.plan.node(ref) if sep else None
    if node is not None and path.startswith("/"):
        return Source(ship.this_machine(), not_root(value, path.rstrip("/") or "/"), node, value)
    local = Path(value).expanduser()
    if not local.is_dir():
        if sep and path.startswith("/"):
            raise ConfigError(
                f"{value}: no node {ref!r} (expected an index 0..{len(t.plan.nodes) - 1}, a name or an address), "
                "and no such directory here",
                key="--from",
            )
        raise ConfigError(f"{value}: no such directory here (the weights to copy)", key="--from")
    return Source(ship.this_machine(), not_root(value, str(local.resolve())), None, value)


def not_root(given: str, root: str) -> str:
    """The whole filesystem is never the weights (and stage writes its manifest into the source)."""
    if root == "/":
        raise ConfigError(f"{given}: expected the directory of the weights, not / (the whole filesystem)", key="--from")
    return root


def nested(a: str, b: str) -> bool:
    a, b = a.rstrip("/") + "/", b.rstrip("/") + "/"
    return a.startswith(b) or b.startswith(a)


def refuse_nesting(t: Target, src: Source, dest: dict[int, str]) -> None:
    """A destination inside the source (or around it) on the machine that holds both would copy each
    run into the last one, one level deeper. The node checks it again with links resolved."""
    for i, path in dest.items():
        node = t.plan.nodes[i]
        same = src.node.index == i if src.node is not None else _loopback(node.address)
        if same and nested(path, src.root):
            raise ConfigError(
                f"{src.given}: the destination {path} on {node.label} and the source are inside one another",
                key="--from",
            )


def _loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return address == "localhost"


SHA256 = re.compile(r"[0-9a-f]{64}")


def checked_scan(given: str, where: str, files: object) -> list[dict]:
    """The source's scan as the list every node is held to: relative paths without `..`, sizes, sha256s
    (a node or a disk that says otherwise is refused, one line)."""
    if not isinstance(files, list):
        raise ConfigError(f"{given}: the scan {where} gave no list of files", key="--from")
    for entry in files:
        path = entry.get("path") if isinstance(entry, dict) else None
        why = unsafe_name(path)
        if why is None and not (type(entry.get("size")) is int and entry["size"] >= 0):
            why = "no size"
        if why is None and not (isinstance(entry.get("sha256"), str) and SHA256.fullmatch(entry["sha256"])):
            why = "no sha256"
        if why is not None:
            raise ConfigError(f"{given}: the scan {where} named {str(path)[:200]!r}: {why}: refused", key="--from")
    return files


def scan_source(t: Target, src: Source, verify: bool) -> list[dict]:
    where = "here" if src.node is None else f"on {src.node.label}"
    try:
        request = {"root": src.root, "rehash": verify, "write_manifest": True}
        found = ship.ask(src.host, t.plan, "scan", request, timeout=SCAN_TIMEOUT)
    except LauncherError:
        raise
    except TimeoutError:
        raise LauncherError(
            f"--from {src.given}: reading it {where} took over {SCAN_TIMEOUT // 3600} hours (a stuck disk or mount?)"
        ) from None
    except Exception as exc:
        raise LauncherError(f"--from {src.given}: cannot read it {where}: {describe(exc)}") from None
    if found.get("error") == "missing":
        raise ConfigError(f"{src.given}: no such directory {where} (the weights to copy)", key="--from")
    if found.get("error"):
        raise LauncherError(f"--from {src.given}: cannot read it {where}: {found.get('detail')}")
    for link in found.get("skipped", []):
        say(f"--from {src.given}: skipped {one_line(str(link))}: a link that leads outside the source", to_stderr=True)
    files = checked_scan(src.given, where, found.get("files"))
    if not files:
        raise ConfigError(f"{src.given}: no files in it {where}", key="--from")
    return files


def scan_nodes(t: Target, files: list[dict], dest: dict[int, str], verify: bool) -> dict:
    def scan(host: Host) -> dict:
        request = {"root": dest[host.node.index], "expect": files, "rehash": verify, "write_manifest": True}
        return ship.ask(host, t.plan, "scan", request, timeout=SCAN_TIMEOUT)

    return t.fleet.map(scan, list(dest))


def stage_round(t, src, files, dest, verify, connection, fanout, as_json) -> dict[int, Outcome]:
    """Scan the nodes, check their space, then one relay to every node that needs anything."""
    plan = t.plan
    outcomes: dict[int, Outcome] = {}
    needs: dict[int, dict] = {}
    for i, found in scan_nodes(t, files, dest, verify).items():
        name = plan.nodes[i].name
        if isinstance(found, Exception) or found.get("error"):
            why = describe(found) if isinstance(found, Exception) else found.get("detail")
            outcomes[i] = Outcome(i, name, dest[i], "failed", f"cannot scan {dest[i]}: {why}")
            continue
        need = {p: s["have"] for p, s in found["files"].items() if s["state"] != "complete"}
        if not need:
            outcomes[i] = Outcome(i, name, dest[i], "complete", "holds every file")
        elif found["need"] > found["free"]:
            detail = f"not enough space in {dest[i]}: needs {size(found['need'])}, has {size(found['free'])} free"
            outcomes[i] = Outcome(i, name, dest[i], "no-space", detail)
        else:
            needs[i] = {"need": need, "complete": [p for p in found["files"] if p not in need]}
    if any(o.status == "no-space" for o in outcomes.values()):
        for o in outcomes.values():
            if o.status == "no-space":
                say(f"{plan.nodes[o.index].label}: {o.detail}", to_stderr=True)
        say("nothing was copied to any node: free the space (or choose --to), then stage again", to_stderr=True)
        return outcomes | {i: Outcome(i, plan.nodes[i].name, dest[i], "failed", "not started") for i in needs}
    if needs:
        outcomes.update(relay_files(t, src, files, dest, needs, connection, fanout, as_json))
    return outcomes


def records(files: list[dict], needs: dict[int, dict]) -> list[dict]:
    """The files any node needs, each from the smallest offset a node needing it already holds (what a
    node says it holds counts only within the file: a node cannot make the source read past it)."""
    out = []
    for f in files:
        holds = [_within(n["need"][f["path"]], f["size"]) for n in needs.values() if f["path"] in n["need"]]
        if holds:
            out.append({"path": f["path"], "size": f["size"], "sha256": f["sha256"], "start": min(holds)})
    return out


def _within(have: object, size: int) -> int:
    return have if type(have) is int and 0 <= have < size else 0


def relay_files(t, src: Source, files, dest, needs, connection, fanout, as_json) -> dict[int, Outcome]:
    plan = t.plan
    recs = records(files, needs)
    hops = {
        i: Hop(str(i), t.fleet.host(i), {"sink": {"kind": "dir", "root": dest[i], "files": files, **needs[i]}})
        for i in needs
    }
    source_hop, stop = None, None
    if src.node is None:
        stop, pieces = ship.emitted(src.host, {"root": src.root, "records": recs})
        root: Feed | Hop = Feed(lambda: pieces)
    else:
        source_hop = hops.get(src.node.index) or Hop("source", src.host)
        source_hop.hello["source"] = {"root": src.root, "records": recs}
        root = source_hop
    chain = list(hops.values()) + ([source_hop] if source_hop is not None and source_hop.key == "source" else [])
    started = time.monotonic()
    try:
        run = ship.spread(
            chain, root, what="weights", total=sum(r["size"] - r["start"] for r in recs), fanout=fanout,
            parallel=connection.parallel, plan=plan, as_json=as_json,
        )  # fmt: skip
    finally:
        if stop is not None:
            stop()
    seconds = time.monotonic() - started
    if run.interrupted:
        interrupted(t, run.hops, needs, files)
    outcomes = {i: outcome_of(t, i, dest[i], run.hops[str(i)], seconds) for i in needs}
    for i, o in outcomes.items():
        o.upstream = ship.upstream(run, run.hops[str(i)])
    return outcomes


def outcome_of(t: Target, i: int, path: str, hop: Hop, seconds: float) -> Outcome:
    name = t.plan.nodes[i].name
    sink = hop.sink or {}
    written, failed = list(sink.get("written") or []), dict(sink.get("failed") or {})
    got = int(sink.get("bytes") or hop.received)
    done = [e for e in hop.files if e.get("state") == "done"]
    resumed = [f"{e['path']} at {size(e['resumed_at'])}" for e in done if e.get("resumed_at")]
    wrote = sum(int(e.get("bytes") or 0) for e in done)
    note = f"; continued {', '.join(resumed)}" if resumed else ""
    if sink.get("ok"):
        detail = f"wrote {len(written)} file(s) ({size(wrote)}), sha256 checked{note}"
        return Outcome(i, name, path, "staged", detail, written, failed, got, seconds)
    said = [f"{p}: {why}" for p, why in failed.items()] + ([sink["detail"]] if sink.get("detail") else [])
    detail = "; ".join(said) if said else ship.failure(hop)
    return Outcome(i, name, path, "failed", detail + note, written, failed, got, seconds, hop.cause)


def interrupted(t: Target, hops: dict[str, Hop], needs: dict[int, dict], files: list[dict]) -> None:
    say("interrupted: every relay was stopped; what each node holds now:", to_stderr=True)
    for i, need in needs.items():
        hop = hops[str(i)]
        done = [e["path"] for e in hop.files if e.get("state") == "done"]
        whole = len(files) - len(need) + len(done)
        partial = sorted({e["path"] for e in hop.files if e.get("state") == "receiving"} - set(done))
        kept = f"; partial (kept, stage again continues it): {', '.join(partial)}" if partial else ""
        say(f"  {t.plan.nodes[i].label}: {whole} of {len(files)} file(s) complete{kept}", to_stderr=True)
    say("run `launcher stage` again to finish", to_stderr=True)
    raise Exit(130)


def report(t: Target, src: Source, files: list[dict], outcomes: list[Outcome], as_json: bool) -> None:
    bad = [o for o in outcomes if o.status in ("failed", "no-space")]
    if as_json:
        print_json(
            {
                "deployment": t.plan.deployment,
                "from": src.given,
                "files": len(files),
                "bytes": sum(f["size"] for f in files),
                "nodes": [o.to_json() for o in outcomes],
                "ok": not bad,
            }
        )
        return
    rows = [
        {
            "node": f"{o.index} {o.node}",
            "path": o.path,
            "status": o.status,
            "received": size(o.bytes) if o.bytes else "-",
            "rate": f"{size(o.bytes / o.seconds)}/s" if o.bytes and o.seconds else "-",
            "detail": o.detail,
        }
        for o in outcomes
    ]
    outcome_table(rows, ("node", "path", "status", "received", "rate", "detail"))
    if bad:
        say(f"{len(bad)} node(s) lack weights: {', '.join(o.node for o in bad)}; run `launcher stage` again")
    else:
        say(f"every node holds the {len(files)} file(s) of {src.given}, with a manifest; next: launcher doctor")
