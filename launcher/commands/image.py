"""`launcher image build` and `launcher image push`.

build: the Docker SDK builds on the operator's engine, the log streamed as it comes; the tag defaults
to the deployment file's `image`.

push: every node that lacks the plan's image (compared by image ID) gets it without a registry. The
operator's uplink carries ONE `docker save` stream to the first node; the nodes relay it to each other
(a chain, or a tree with --fanout), each `docker load`ing as the bytes pass (launcher/transport/
relay.py, launcher/remote/relay.py). A node holding the ID is skipped (one holding it under another
name is only tagged). A node failing mid-way is named and the nodes after it are re-routed. A node
keeps what it loaded only when the plan's name then holds the image ID computed here (any other tag
the load set is put back, any other image it brought is removed: remote/relay.py image_sink).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from launcher.config.load import load
from launcher.errors import ConfigError, Exit
from launcher.operations import ship
from launcher.operations.context import Connection, Target, connected, resolve, target
from launcher.output.console import say
from launcher.output.tables import print_json
from launcher.output.transfer import outcome_table, size
from launcher.runtime.shell import q
from launcher.transport.docker_engine import BuildContext, Engine, LocalImage, build_context, where
from launcher.transport.errors import describe
from launcher.transport.relay import Feed, Hop

# -- build ---------------------------------------------------------------------------------------


def build(config, config_opt, inventory, *, dockerfile: Path, tag: str | None, context: Path | None, as_json: bool):
    if tag is None or config is not None or config_opt is not None:  # the file first, as every verb does
        path, inv = resolve(config, config_opt, inventory)
        tag = tag or load(path, inv).spec.image
        if not tag:
            raise ConfigError("the file has no `image` to tag the build with: pass --tag", file=str(path), key="image")
    if not dockerfile.is_file():
        raise ConfigError(f"{dockerfile}: no such file (the Dockerfile to build)", key="-f")
    if context is not None and not context.is_dir():
        raise ConfigError(f"{context}: no such directory (the build context)", key="--context")
    context = context or dockerfile.resolve().parent
    engine = Engine()
    say(f"building {tag} from {dockerfile} (context {context}) on {where()}", to_stderr=True)
    started = time.monotonic()
    sent = _context(context.resolve(), dockerfile.resolve())
    try:
        image_id = engine.build(sent, tag, lambda line: say(line, to_stderr=as_json))
    except KeyboardInterrupt:
        say(f"interrupted: the build of {tag} was stopped; nothing was tagged", to_stderr=True)
        raise Exit(130) from None
    finally:
        sent.archive.close()
    seconds = time.monotonic() - started
    if as_json:
        print_json({"image": tag, "id": image_id, "seconds": round(seconds, 1), "ok": True})
    else:
        say(f"built {tag} ({image_id}) in {seconds:.0f}s; next: launcher image push")


def _context(context: Path, dockerfile: Path) -> BuildContext:
    """The context as it will be sent (its .dockerignore applied), its size said first."""
    try:
        sent = build_context(context, dockerfile)
    except OSError as exc:
        raise ConfigError(f"{context}: cannot read the build context: {exc}", key="--context") from None
    ignored = "" if (context / ".dockerignore").is_file() else "; no .dockerignore there: nothing left out"
    say(f"sending build context: {size(sent.bytes)} ({sent.files} files){ignored}", to_stderr=True)
    return sent


# -- push ----------------------------------------------------------------------------------------


@dataclass
class Outcome:
    index: int
    node: str
    status: str  # skipped | tagged | pushed | failed
    detail: str = ""
    bytes: int = 0
    seconds: float = 0.0
    cause: str = ""  # why the relay failed it (upstream: only its upstream failed; it may try again)
    upstream: str = ""  # where its stream came from: "this machine" or a node

    def to_json(self) -> dict:
        return {
            "node_index": self.index,
            "node": self.node,
            "status": self.status,
            "detail": self.detail,
            "bytes": self.bytes,
            "seconds": round(self.seconds, 1),
            "from": self.upstream,
        }


def push(config, config_opt, inventory, connection: Connection, *, as_json: bool, fanout: int) -> None:
    t = target(config, config_opt, inventory)
    if t.plan.runtime != "docker":
        raise ConfigError("image push needs `runtime: docker` (the process runtime runs no image)", key="runtime")
    wanted = images_of(t)
    engine = Engine()
    local = {ref: engine.image(ref) for ref in wanted}
    outcomes: list[Outcome] = []
    with connected(t, connection):
        for ref, indices in wanted.items():
            outcomes += push_one(t, engine, local[ref], indices, connection, as_json=as_json, fanout=fanout)
    report(t, local, outcomes, as_json)
    if any(o.status == "failed" for o in outcomes):
        raise Exit(1)


def images_of(t: Target) -> dict[str, list[int]]:
    """Each image the plan runs -> the nodes that run it."""
    wanted: dict[str, list[int]] = {}
    for s in t.plan.services:
        nodes = wanted.setdefault(s.image, [])
        if s.node.index not in nodes:
            nodes.append(s.node.index)
    return wanted


def held_script(image: LocalImage) -> str:
    """What a node holds: the ID under the plan's name, the ID under any name."""
    fmt = q("{{.Id}}")
    return (
        f"echo tag=$(docker image inspect --format {fmt} {q(image.ref)} 2>/dev/null); "
        f"echo id=$(docker image inspect --format {fmt} {q(image.id)} 2>/dev/null)"
    )


def holdings(t: Target, image: LocalImage, indices: list[int]) -> dict[int, dict | Exception]:
    results = t.fleet.run(held_script(image), indices, timeout=60)
    held: dict[int, dict | Exception] = {}
    for i, r in results.items():
        if isinstance(r, Exception):
            held[i] = r
        else:
            held[i] = dict(line.split("=", 1) for line in r.stdout.splitlines() if "=" in line)
    return held


# What a node holds, asked by its relay before anything moves: "held" (the ID under the plan's name),
# "tagged" (the ID under another name: tagged now, nothing to move) or "lacks". $1: the name, $2: the ID.
CHECK = (
    'held=$(docker image inspect --format "{{.Id}}" "$1" 2>/dev/null); '
    'if [ "$held" = "$2" ]; then echo held; '
    'elif docker image inspect "$2" >/dev/null 2>&1 && docker tag "$2" "$1"; then echo tagged; '
    "else echo lacks; fi"
)


def push_one(t, engine: Engine, image: LocalImage, indices, connection, *, as_json, fanout) -> list[Outcome]:
    outcomes: dict[int, Outcome] = {}
    todo = list(indices)
    for attempt in (1, 2):
        moved = relay_image(t, engine, image, todo, connection, fanout=fanout, as_json=as_json)
        outcomes.update(moved)
        # Nodes that only lost their upstream (and could not resume) get one more stream of their own.
        todo = [i for i, o in moved.items() if o.status == "failed" and o.cause == "upstream"]
        if not todo:
            break
        if attempt == 1:
            names = ", ".join(t.plan.nodes[i].name for i in todo)
            say(f"again for {names}: their upstream failed and they could not resume", to_stderr=True)
    return [outcomes[i] for i in sorted(outcomes)]


def relay_image(t, engine: Engine, image: LocalImage, todo: list[int], connection, *, fanout, as_json) -> dict:
    plan = t.plan
    hello = {
        "check": ["sh", "-c", CHECK, "sh", image.ref, image.id],
        "sink": {"kind": "image", "ref": image.ref, "id": image.id},  # kept only as this ID
    }
    hops = [Hop(str(i), t.fleet.host(i), dict(hello)) for i in todo]

    def started(all_hops: dict[str, Hop]) -> None:
        lack = sum(h.state == "waiting" for h in all_hops.values())
        say(f"{image.ref} ({image.id[:19]}, {size(image.size)}): {lack} of {len(todo)} node(s) lack it", to_stderr=True)

    began = time.monotonic()
    run = ship.spread(
        hops, Feed(lambda: engine.save(image.ref)), what="image", total=image.size, fanout=fanout,
        parallel=connection.parallel, plan=plan, as_json=as_json, wanted=lambda h: _said(h) not in ("held", "tagged"),
        on_started=started,
    )  # fmt: skip
    seconds = time.monotonic() - began
    if run.interrupted:
        interrupted(t, image, todo)
    moved: dict[int, Outcome] = {}
    for i in todo:
        hop = run.hops[str(i)]
        moved[i] = image_outcome(plan.nodes[i].name, i, hop, image, seconds)
        moved[i].upstream = ship.upstream(run, hop)
    return moved


def _said(hop: Hop) -> str:
    return (hop.check.strip().splitlines() or [""])[-1]


def image_outcome(name: str, i: int, hop: Hop, image: LocalImage, seconds: float) -> Outcome:
    """What a node holds after the relay: its image ID as it reported it after loading, or why not."""
    if hop.state == "skipped":
        said = _said(hop)
        return Outcome(i, name, "skipped" if said == "held" else "tagged", HELD[said])
    sink = hop.sink or {}
    got = int(sink.get("bytes") or hop.received)
    if hop.state == "failed":
        return Outcome(i, name, "failed", f"{hop.detail} (at {size(got)})", got, seconds, hop.cause)
    holds = str(sink.get("id") or "")
    if sink.get("ok") and holds == image.id:
        return Outcome(i, name, "pushed", "image ID verified", got, seconds)
    why = f"holds {holds or 'no ID'} after loading" if sink.get("ok") else ship.failure(hop)
    return Outcome(i, name, "failed", f"docker load: {why}" if sink else why, got, seconds)


HELD = {"held": "holds it", "tagged": "held it under another name: tagged"}


def interrupted(t: Target, image: LocalImage, indices: list[int]) -> None:
    """Ctrl-C: say what each node holds now (bounded; a second Ctrl-C skips it), exit 130."""
    say(f"interrupted: every relay was stopped; what each node holds of {image.ref}:", to_stderr=True)
    try:
        held = holdings(t, image, indices)
        for i in indices:
            h = held.get(i)
            state = (
                describe(h) if isinstance(h, Exception) else ("holds it" if h.get("tag") == image.id else "lacks it")
            )
            say(f"  {t.plan.nodes[i].label}: {state}", to_stderr=True)
    except KeyboardInterrupt:
        pass
    say("run `launcher image push` again to finish", to_stderr=True)
    raise Exit(130)


def report(t: Target, local: dict[str, LocalImage], outcomes: list[Outcome], as_json: bool) -> None:
    if as_json:
        images = [{"image": ref, "id": img.id, "bytes": img.size} for ref, img in local.items()]
        ok = not any(o.status == "failed" for o in outcomes)
        print_json(
            {"deployment": t.plan.deployment, "images": images, "nodes": [o.to_json() for o in outcomes], "ok": ok}
        )
        return
    rows = [
        {
            "node": f"{o.index} {o.node}",
            "status": o.status,
            "received": size(o.bytes) if o.bytes else "-",
            "rate": f"{size(o.bytes / o.seconds)}/s" if o.bytes and o.seconds else "-",
            "detail": o.detail,
        }
        for o in outcomes
    ]
    outcome_table(rows, ("node", "status", "received", "rate", "detail"))
    failed = [o for o in outcomes if o.status == "failed"]
    if failed:
        names = ", ".join(o.node for o in failed)
        say(f"{len(failed)} node(s) lack the image: {names}; run `launcher image push` again")
    else:
        say(f"every node holds {', '.join(local)}")
