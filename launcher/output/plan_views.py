"""The plan shown to people (`text`), machines (`json`) and shells (one script per node)."""

from __future__ import annotations

import json
import posixpath
from typing import Any

from launcher.config.redact import REDACTED
from launcher.plan import drain, metrics
from launcher.plan import roll as plan_roll
from launcher.plan.types import Group, Plan, Service
from launcher.runtime.docker import docker_run, secrets_file
from launcher.runtime.shell import join, q


def to_json(plan: Plan) -> dict[str, Any]:
    redact = plan.redactor()
    services = []
    for s in plan.services:
        env = dict(s.env)
        env.update({k: REDACTED for k in s.secret_env})
        services.append(
            {
                "name": s.name,
                "service": s.service,
                "role": s.role,
                "group": s.group,
                "engine": s.engine,
                "node_index": s.node.index,
                "rank": s.rank,
                **({"replica": s.replica} if s.replica is not None else {}),
                "image": s.image,
                "command": [redact(a) for a in s.command],
                "docker_run": [redact(a) for a in docker_run(plan, s)],
                "env": {k: redact(v) for k, v in env.items()},
                "secret_env": sorted(s.secret_env),
                "labels": plan.labels(s),
                "ports": s.ports,
                "probe": s.probe.to_json(),
                "timeout": s.timeout,
            }
        )
    data: dict[str, Any] = {
        "deployment": plan.deployment,
        "file": plan.file,
        "endpoint": plan.endpoint,
        "model": plan.model_name,
        "nodes": [{"index": n.index, "address": n.address, "name": n.name} for n in plan.nodes],
        "groups": [
            {
                "name": g.name,
                "engine": g.engine,
                "mode": g.mode,
                "nodes": g.node_indices,
                "gpus": g.gpus,
                "expected_instances": g.expected_instances,
                "rendezvous": g.rendezvous,
                "dist_init_port": g.dist_init_port,
                # only for `replicas:` > 1: the plans of files without replicas stay as they were
                **({"group": g.base, "replica": g.replica, "replicas": g.replicas} if g.replicas > 1 else {}),
            }
            for g in plan.groups
        ],
        "network": {"interface": plan.network_interface, "interfaces": plan.interfaces},
        "peers": [
            {
                "owner": p.owner,
                "address": p.address,
                "port": p.port,
                "what": p.what,
                "service": p.service,
                "users": list(p.users),
            }  # fmt: skip
            for p in plan.peers
        ],
        "services": services,
        "warnings": [redact(w) for w in plan.warnings],
    }
    if plan.profile:  # only when one is applied: the plans of files without profiles stay as they were
        data["profile"] = plan.profile
    data["stop"] = {"drain_timeout": plan.drain_timeout, "migration_limit": plan.migration_limit}
    return data


def to_text(plan: Plan, verbose: bool = False) -> str:
    """For people: the nodes, each single service, then each group's common argv and env once and per
    rank only what differs. `verbose`: every service in full, with its whole `docker run` line."""
    redact = plan.redactor()
    groups = ", ".join(_headline(g) for g in plan.groups if g.replica == 0)
    lines = [f"deployment {plan.deployment}: {len(plan.nodes)} nodes, {len(plan.services)} services — {groups}"]
    if plan.profile:
        lines.append(f"profile {plan.profile}")
    if plan.endpoint:
        lines.append(f"endpoint {plan.endpoint}" + (f"  model {plan.model_name}" if plan.model_name else ""))
    lines += _stop_text(plan)
    lines += [table.line() for table in plan.flag_tables]
    lines.append("")
    for node in plan.nodes:
        here = ", ".join(_who(s) for s in plan.by_node(node.index)) or "(idle)"
        lines.append(f"node {node.index}  {node.name}  {node.address}  {here}")
    for s in plan.services:
        if verbose or s.group is None:
            lines += ["", f"{_who(s)} on node {s.node.index} ({s.node.name} {s.node.address})"]
            lines += _argv_and_env(s.command, _env_text(s), "  ")
            lines += _scrapes(plan, s)
            if verbose:
                lines.append(f"  {join(docker_run(plan, s))}")
    if not verbose:
        for group in plan.groups:
            lines += ["", *_group_text(plan, group)]
    lines += [f"warning: {w}" for w in plan.warnings]
    return "\n".join(redact(line) for line in lines)


def _headline(g: Group) -> str:
    replicas = f" {g.replicas} replicas" if g.replicas > 1 else ""
    return f"{g.base}{replicas} x{len(g.node_indices)} ({g.engine}, {g.summary})"


def _replica_line(plan: Plan, group: Group) -> list[str]:
    """Under a replicated group's head: which replica, and its ports where replicas share a node."""
    if group.replicas == 1:
        return []
    first = next(g for g in plan.groups if g.base == group.base and g.replica == 0)
    shift = group.dist_init_port - first.dist_init_port
    ports = f"; its ports are group {group.base}'s + {shift} (its replicas share a node)" if shift else ""
    return [f"  replica {group.replica} of {group.replicas} of group {group.base}{ports}"]


def _stop_text(plan: Plan) -> list[str]:
    """What a stop does to the requests in flight: the drain, and the frontend's request migration."""
    out = []
    if any(drain.drained(s) for s in plan.services):
        out.append(
            f"drain: a stop lets the Dynamo workers finish their requests first, up to {plan.drain_timeout:g}s"
            " (drain_timeout; `down --now` skips it)"
        )
    if drain.routed(plan.services):
        out.append(
            "drain: `down` takes the SGLang workers out of the router first (its /workers API) and lets them"
            f" finish their requests, up to {plan.drain_timeout:g}s (drain_timeout; `down --now` skips it)"
        )
    if plan.migration_limit:
        out.append(
            f"request migration: a stream whose worker dies continues on another, up to {plan.migration_limit}"
            " time(s) (services.frontend.migration_limit)"
        )
    elif plan.migration_limit == 0:
        out.append("request migration: off (services.frontend.migration_limit: 0)")
    multi = [g for g in plan.groups if g.replica == 0 and g.replicas > 1]
    held = [g.base for g in multi if plan_roll.unholdable(plan, g, []) is None]
    if held:
        out.append(
            f"rolling: a change to {', '.join(held)} rolls, one replica at a time drained, replaced and proven by a"
            " smoke request, rolled back if it fails (`up --max-unavailable K` widens a step)"
        )
    met = [g.base for g in multi if g.base in held and g.rendezvous]
    if met:
        out.append(
            f"rolling: each replica of {', '.join(met)} meets in the fabric check before its new spec starts"
            " (`up --skip-fabric` skips it); a replica that cannot is rolled back"
        )
    out += [
        f"rolling: none: {why}; a change recreates it at once"
        for g in multi
        if (why := plan_roll.unholdable(plan, g, []))
    ]
    return out


def _who(s: Service) -> str:
    return s.role if s.rank is None else f"{s.group} r{s.rank}"


def _env_text(s: Service) -> dict[str, str]:
    return {**s.env, **dict.fromkeys(s.secret_env, REDACTED)}


def _argv_and_env(argv: list[str], env: dict[str, str], indent: str) -> list[str]:
    out = [indent + join(argv)]
    if env:  # no empty `env:` lines
        out.append(indent + "env: " + " ".join(f"{k}={q(_short(k, v))}" for k, v in env.items()))
    return out


def _short(name: str, value: str) -> str:
    """A file the metrics stack writes at start travels in its env: in the text view, its size only."""
    if name in metrics.FILE_ENVS:
        return f"<{len(value)} bytes: the whole file in `plan --format json`>"
    return value


def _scrapes(plan: Plan, s: Service) -> list[str]:
    """Under the Prometheus service: what it scrapes (from the plan)."""
    if s.role != "prometheus":
        return []
    targets = metrics.scrape_targets(plan.services)
    return [f"  scrapes {len(targets)} target(s): " + ", ".join(f"{_who(t.service)} {t.host_port}" for t in targets)]


def _group_text(plan: Plan, group: Group) -> list[str]:
    """A group: what every rank runs (per-rank values as {rank} and {address}), then per rank its node
    and whatever else differs."""
    ranks = [s for s in plan.services if s.group == group.name]
    images = sorted({s.image for s in ranks})
    head = f"{group.name}: {len(ranks)} rank(s), {group.engine}, {group.summary}" + (
        f", image {images[0]}" if len(images) == 1 and images[0] else ""
    )
    argv, argv_rest = _common_argv(ranks)
    env, env_rest = _common_env(ranks)
    out = [head, *_replica_line(plan, group), "  every rank: " + " ".join(_shown(a) for a in argv)]
    if env:
        out.append("  env: " + " ".join(f"{k}={_shown(v)}" for k, v in env.items()))
    if plan.network_interface == "auto" and not any("GLOO_SOCKET_IFNAME" in s.env for s in ranks):
        leader = plan.nodes[group.leader].address
        out.append(
            f"  env: GLOO_SOCKET_IFNAME=NCCL_SOCKET_IFNAME=<auto: per node, the interface that routes to {leader};"
            " read on the node by up/doctor>"
        )
    if group.rendezvous:
        out.append(
            f"  fabric: the ranks' rendezvous at {plan.nodes[group.leader].address}:{group.dist_init_port} is proven"
            " before they start (launcher doctor --fabric; up, unless --skip-fabric)"
        )
    for s in ranks:
        extra = " ".join([*argv_rest[s.rank], *(f"{k}={q(v)}" for k, v in env_rest[s.rank].items())])
        out.append(
            f"  r{s.rank}  node {s.node.index}  {s.node.name}  {s.node.address}" + (f"  {extra}" if extra else "")
        )
    return out


PLACEHOLDERS = ("{address}", "{rank}", "{see below}")


def _shown(token: str) -> str:
    """A token quoted for a shell, except the placeholders standing for per-rank values."""
    bare = token
    for placeholder in PLACEHOLDERS:
        bare = bare.replace(placeholder, "x")
    return token if bare != token and q(bare) == bare else q(token)


def _per_rank(s: Service, token: str) -> str:
    return token.replace(s.node.address, "{address}")


def _common_argv(ranks: list[Service]) -> tuple[list[str], dict[int, list[str]]]:
    """The argv every rank shares, per-rank values replaced by {rank}/{address}; and per rank the
    `flag value` pairs that differ otherwise. Argvs of different lengths are shown whole, per rank."""
    rest: dict[int, list[str]] = {s.rank: [] for s in ranks}
    if len({len(s.command) for s in ranks}) != 1:
        return ["(differs per rank)"], {s.rank: list(s.command) for s in ranks}
    common: list[str] = []
    for i, tokens in enumerate(zip(*(s.command for s in ranks), strict=True)):
        if len(set(tokens)) == 1:
            common.append(tokens[0])
        elif len({_per_rank(s, t) for s, t in zip(ranks, tokens, strict=True)}) == 1:
            common.append(_per_rank(ranks[0], tokens[0]))
        elif all(t == str(s.rank) for s, t in zip(ranks, tokens, strict=True)):
            common.append("{rank}")
        else:
            common.append("{see below}")
            flag = ranks[0].command[i - 1] if i and ranks[0].command[i - 1].startswith("-") else ""
            for s, t in zip(ranks, tokens, strict=True):
                rest[s.rank] += [flag, t] if flag else [t]
    return common, rest


def _common_env(ranks: list[Service]) -> tuple[dict[str, str], dict[int, dict[str, str]]]:
    """Env every rank has with the same value (node addresses as {address}); the rest per rank."""
    envs = {s.rank: _env_text(s) for s in ranks}
    keys = list(dict.fromkeys(k for s in ranks for k in envs[s.rank]))
    common: dict[str, str] = {}
    rest: dict[int, dict[str, str]] = {s.rank: {} for s in ranks}
    for key in keys:
        raw = {envs[s.rank].get(key) for s in ranks}
        shaped = {_per_rank(s, envs[s.rank][key]) if key in envs[s.rank] else None for s in ranks}
        if len(raw) == 1 and None not in raw:
            common[key] = raw.pop()
        elif len(shaped) == 1 and None not in shaped:
            common[key] = shaped.pop()
        else:
            for s in ranks:
                if key in envs[s.rank]:
                    rest[s.rank][key] = envs[s.rank][key]
    return common, rest


def node_script(plan: Plan, index: int) -> str:
    """A bash script a person could run on one node by hand to start what the plan puts there."""
    node = plan.nodes[index]
    redact = plan.redactor()
    out = [
        "#!/usr/bin/env bash",
        f"# {plan.deployment}: node {node.index} ({node.name} {node.address}), generated by `launcher plan`",
        f"# from {plan.file}. Start order: etcd, nats, frontend, then workers.",
        "set -euo pipefail",
    ]
    here = plan.by_node(index)
    if not here:
        out.append("echo 'nothing runs on this node'")
    for s in here:
        out.append("")
        out.append(f"# {s.role}" + (f" rank {s.rank} of group {s.group}" if s.rank is not None else ""))
        if s.secret_env:
            path = secrets_file(plan, s)
            held = sorted({plan.secret_source(k) for k in s.secret_env})  # the names the user has set
            out.append(f"# secrets come from your environment, never from this file: {', '.join(held)}")
            out.append(f"install -d -m 0700 {q(posixpath.dirname(path))}")
            out.append(f"( umask 077; : > {q(path)} )")
            for key in sorted(s.secret_env):
                # KEY='value' with single quotes escaped: what `sh` sources in the container, the value
                # from the variable the user holds (MY_KEY for `OPENAI_KEY: ${MY_KEY}`)
                src = plan.secret_source(key)
                quoted = f"""$(printf '%s' "${{{src}:?set {src} first}}" | sed "s/'/'\\\\\\\\''/g")"""
                out.append(f"""printf "%s='%s'\\n" {q(key)} "{quoted}" >> {q(path)}""")
        out.append(f"docker rm -f {q(s.name)} >/dev/null 2>&1 || true")
        out.append(redact(join(docker_run(plan, s))))
    return "\n".join(out) + "\n"


def curl_command(endpoint: str, model: str | None) -> str:
    body = json.dumps(
        {"model": model or "default", "messages": [{"role": "user", "content": "Hello!"}], "max_tokens": 32}
    )
    return f"curl -sS {endpoint}/v1/chat/completions -H 'Content-Type: application/json' -d {q(body)}"
