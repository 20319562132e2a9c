"""What a node holds of a directory, and doctor's check of it: the launcher's manifest program.

Standard library only (the host's python3, 3.8 or newer); it imports nothing of the launcher. Small on
purpose: doctor sends it (not the relay) to every node. The relay (remote/relay.py) writes the
manifest with it when a stage ends. Modes:
  scan   one JSON line on stdin -> the state of a directory against the files expected (complete,
         partial, missing, altered) and its free space; or, without `expect`, the files it holds with
         hashes. One `scan` event (a JSON line) on stdout, `hashing` events while it hashes.
  check  ROOT MARK -> doctor's check of ROOT against its manifest, one `MARK model ...` line (exit 3
         when there is no manifest).

The manifest (`.launcher-manifest`, JSON): the expected files (path, size, sha256) and, for those
verified on this node, their size and mtime then: a later check re-hashes only files that changed.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time

BLOCK = 1 << 20  # bytes read at a time while hashing
MANIFEST = ".launcher-manifest"
PART = ".launcher-part"
LOCK = ".launcher-stage.lock"
OURS = (MANIFEST, LOCK, MANIFEST + ".tmp")  # the launcher's own files, at any level of a directory


def say(ev: str, **fields) -> None:
    sys.stdout.write(json.dumps(dict(ev=ev, **fields)) + "\n")
    sys.stdout.flush()


def unsafe_name(rel) -> str | None:
    """Why a relative path from a list or a record is not one to write, by its words alone (or None)."""
    if not isinstance(rel, str) or not rel or "\x00" in rel or len(rel) > 4096:
        return "an empty path, a NUL in it, or over 4096 bytes"
    if rel.startswith("/"):
        return "an absolute path"
    parts = rel.split("/")
    if any(part in ("", ".", "..") for part in parts):
        return "a path with `..`, `.` or an empty part"
    if parts[-1] in OURS or parts[-1].endswith(PART):
        return "the name of one of the launcher's own files"
    return None


def sha256_file(path: str, progress=None) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            block = f.read(BLOCK)
            if not block:
                return digest.hexdigest()
            digest.update(block)
            if progress is not None:
                progress(len(block))


def read_manifest(root: str) -> dict:
    try:
        with open(os.path.join(root, MANIFEST)) as f:
            data = json.load(f)
        return data if isinstance(data, dict) and isinstance(data.get("files"), list) else {}
    except (OSError, ValueError):
        return {}


def known_hash(root: str, rel: str, st, manifest: dict):
    """The file's sha256 from the manifest, when its size and mtime are those it had when verified."""
    seen = (manifest.get("verified") or {}).get(rel)
    if seen != [st.st_size, st.st_mtime_ns]:
        return None
    for entry in manifest["files"]:
        if entry.get("path") == rel and entry.get("size") == st.st_size:
            return entry.get("sha256")
    return None


def write_manifest(root: str, files: list, verified) -> None:
    """The expected files (path, size, sha256) and, for those verified on this node, their size and
    mtime then: a later check re-hashes only files that changed since."""
    seen = {}
    for entry in files:
        if entry["path"] in verified:
            try:
                st = os.stat(os.path.join(root, entry["path"]))
                seen[entry["path"]] = [st.st_size, st.st_mtime_ns]
            except OSError:
                pass
    data = {"format": "launcher-manifest 1", "files": files, "verified": seen}
    tmp = os.path.join(root, MANIFEST + ".tmp")
    try:
        os.unlink(tmp)  # whatever is there (a link another user planted) goes, its target untouched
    except FileNotFoundError:
        pass
    with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644), "w") as f:
        json.dump(data, f, indent=0)
    os.replace(tmp, os.path.join(root, MANIFEST))


class Hashing:
    """Progress of a long hash, as events (no more than one every 2 s)."""

    def __init__(self):
        self.done = 0
        self.last = time.monotonic()

    def __call__(self, n: int) -> None:
        self.done += n
        if time.monotonic() - self.last > 2:
            self.last = time.monotonic()
            say("hashing", bytes=self.done)


def inside(root: str, path: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def source_files(root: str, skipped: list | None = None) -> list:
    """The files under root, links followed: each real directory once (device and inode: a link back up
    makes no loop), links (to a directory or a file) that lead outside root not at all (named in
    `skipped`); the launcher's own files (manifest, lock, partial files) at no level."""
    found, seen, real_root = [], set(), os.path.realpath(root)
    skipped = [] if skipped is None else skipped
    for here, dirs, names in os.walk(root, followlinks=True):
        st = os.stat(here)
        if (st.st_dev, st.st_ino) in seen:
            dirs[:] = []
            continue
        seen.add((st.st_dev, st.st_ino))
        keep = []
        for d in sorted(dirs):
            full = os.path.join(here, d)
            if os.path.islink(full) and not inside(real_root, os.path.realpath(full)):
                skipped.append(os.path.relpath(full, root))
            else:
                keep.append(d)
        dirs[:] = keep
        for name in sorted(names):
            full = os.path.join(here, name)
            rel = os.path.relpath(full, root)
            if name in OURS or name.endswith(PART) or not os.path.isfile(full):
                continue
            if not inside(real_root, os.path.realpath(full)):
                skipped.append(rel)
                continue
            found.append(rel)
    return found


def scan_source(req: dict) -> dict:
    root = req["root"]
    if not os.path.isdir(root):
        return {"error": "missing", "detail": f"{root}: no such directory"}
    manifest = {} if req.get("rehash") else read_manifest(root)
    progress = Hashing()
    files, skipped = [], []
    for rel in source_files(root, skipped):
        path = os.path.join(root, rel)
        st = os.stat(path)
        sha = known_hash(root, rel, st, manifest) or sha256_file(path, progress)
        files.append({"path": rel, "size": st.st_size, "sha256": sha})
    if req.get("write_manifest"):
        try:
            write_manifest(root, files, {f["path"] for f in files})
        except OSError:
            pass  # a read-only source
    return {"files": files, "bytes": sum(f["size"] for f in files), "skipped": skipped}


def file_state(root: str, entry: dict, manifest: dict, progress) -> dict:
    path = os.path.join(root, entry["path"])
    try:
        st = os.stat(path)
    except OSError:
        st = None
    if st is not None:
        if st.st_size == entry["size"]:
            sha = known_hash(root, entry["path"], st, manifest) or sha256_file(path, progress)
            if sha == entry["sha256"]:
                return {"state": "complete", "have": 0}
            return {"state": "altered", "have": 0}
        return {"state": "short" if st.st_size < entry["size"] else "longer", "have": 0}
    try:
        have = os.path.getsize(path + PART)
    except OSError:
        return {"state": "missing", "have": 0}
    return {"state": "partial", "have": have if have < entry["size"] else 0}


def free_bytes(path: str) -> int:
    while path and not os.path.exists(path):
        path = os.path.dirname(path.rstrip("/")) or "/"
    st = os.statvfs(path or "/")
    return st.f_bavail * st.f_frsize


def scan_target(req: dict) -> dict:
    root, expect = req["root"], req["expect"]
    exists = os.path.isdir(root)
    manifest = {} if req.get("rehash") or not exists else read_manifest(root)
    progress = Hashing()
    states = {e["path"]: file_state(root, e, manifest, progress) for e in expect} if exists else {}
    for e in expect:
        states.setdefault(e["path"], {"state": "missing", "have": 0})
    need = sum(e["size"] - states[e["path"]]["have"] for e in expect if states[e["path"]]["state"] != "complete")
    complete = all(s["state"] == "complete" for s in states.values())
    if complete and exists and req.get("write_manifest"):
        try:
            write_manifest(root, expect, {e["path"] for e in expect})
        except OSError:
            pass
    return {"exists": exists, "files": states, "need": need, "free": free_bytes(root)}


def scan(req: dict) -> int:
    try:
        result = scan_target(req) if req.get("expect") is not None else scan_source(req)
    except OSError as exc:
        result = {"error": "os", "detail": str(exc)}
    say("scan", **result)
    return 0


def check(root: str, mark: str) -> int:
    """Doctor: every file of the manifest present, whole and unaltered (re-hashed only when its size
    or mtime changed since it was verified). Exit 3 when there is no manifest."""
    manifest = read_manifest(root)
    if not manifest:
        return 3
    problems = []
    for entry in manifest["files"]:
        state = file_state(root, entry, manifest, None)["state"]
        if state == "short":
            size = os.path.getsize(os.path.join(root, entry["path"]))
            problems.append(f"short {entry['path']} ({size} of {entry['size']} bytes)")
        elif state in ("missing", "partial"):
            problems.append(f"missing {entry['path']}")
        elif state != "complete":
            problems.append(f"{state} {entry['path']} (sha256 or size differs from the manifest)")
    if problems:
        print(f"{mark} model fail {root}: " + "; ".join(problems))
        return 0
    listing = "".join(f"{e['path']} {e['size']} {e['sha256']}\n" for e in manifest["files"])
    digest = hashlib.sha256(listing.encode()).hexdigest()[:16]
    total = sum(e["size"] for e in manifest["files"])
    print(f"{mark} model ok {root}=manifest:{digest} ({len(manifest['files'])} files, {total} bytes)")
    return 0


def main() -> int:
    mode = sys.argv[1] if len(sys.argv) > 1 else ""
    if mode == "check":
        return check(sys.argv[2], sys.argv[3])
    if mode != "scan":
        say("error", detail=f"unknown mode {mode!r}")
        return 2
    try:
        req = json.loads(sys.stdin.buffer.readline())
    except ValueError:
        say("error", detail="no request from the launcher")
        return 2
    return scan(req)


if __name__ == "__main__":
    sys.exit(main())
