"""Hostile files (issue 24): whatever the launcher reads (deployment file, inventory, .env, manifests, bench
results) is bounded in size, nesting, the values it expands to (aliases followed) and its counts. Each
refusal is a fresh `launcher` process giving one line that names the file and the limit, exit 2, within
2 CPU seconds and 200 MB (measured by the kernel for that process; its address space is capped at 1 GiB
so that a runaway fails fast). Files just inside each limit still load and plan."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from launcher.config.limits import MAX_DEPTH, MAX_FILE_BYTES, MAX_NODES, MAX_VALUES
from launcher.config.yamlfile import load_json, load_yaml
from launcher.errors import ConfigError
from tests.helpers import MINIMAL, REPO, run_bounded
from tests.seeds import manifests

CPU_S = 2.0
RSS_MB = 200
LWS_SEED = "002_5075cd10cd9de433.txt"  # one LeaderWorkerSet (tests/pure/test_lws.py imports it whole)


def refused(args: list[str], cwd: Path, starts: str, *words: str) -> str:
    """Run the command; it must refuse in exactly one line starting `starts` and saying `words`."""
    done = run_bounded(args, cwd)
    lines = [line for line in done.err.splitlines() if line.strip()]
    assert done.code == 2, (done.code, done.err[-2000:])
    assert len(lines) == 1 and "Traceback" not in done.err, done.err[-2000:]
    assert lines[0].startswith(starts) and all(w in lines[0] for w in words), lines[0]
    assert done.cpu_s < CPU_S, f"{done.cpu_s:.2f} CPU seconds: {lines[0]}"
    assert done.max_rss_mb < RSS_MB, f"{done.max_rss_mb:.0f} MB: {lines[0]}"
    return lines[0]


def laughs(levels: int = 9) -> str:
    """The billion laughs: each level a list of nine aliases of the one before (9**9 values expanded)."""
    out = "l0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n"
    for i in range(1, levels + 1):
        out += f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]\n"
    return out


NESTED = "[" * 5000 + "]" * 5000
TOO_BIG = "# " + "x" * MAX_FILE_BYTES + "\n"
DEPLOYMENT_FILES = {
    "alias bomb": (laughs() + MINIMAL, [f"{MAX_VALUES:,} values"]),
    "self-referencing list": (MINIMAL.replace("image: example/image:1", "image: &me [a, *me]"), ["recursive alias"]),
    "self-referencing mapping": ("x: &m {a: 1, b: *m}\n" + MINIMAL, ["*m", "recursive alias"]),
    "5,000 nested brackets": (MINIMAL.replace("image: example/image:1", f"image: {NESTED}"), ["deeper than 100"]),
    "oversized": (MINIMAL + TOO_BIG, ["larger than 4 MiB"]),
    "huge gpus_per_node": (MINIMAL.replace("gpus_per_node: 8", "gpus_per_node: 10000000"), ["1024"]),
    "huge group": (
        MINIMAL.replace("nodes: 2\n    args: {tp-size: 16}\n", "nodes: 10000000\n"),
        ["less than or equal to 10000"],
    ),
    # PyYAML's int/float/timestamp constructors: a ValueError past Python's 4,300-digit limit, a base-60
    # number of a million parts that takes minutes (each part multiplies a growing integer), an
    # OverflowError for the float form, a ValueError for a time zone offset of 99 hours
    "5,000-digit number": (MINIMAL.replace("gpus_per_node: 8", "gpus_per_node: " + "1" * 5000), ["100 characters"]),
    "base-60 number of a million parts": (MINIMAL + "x: 1" + ":1" * 1_000_000 + "\n", ["100 characters"]),
    "base-60 float": (MINIMAL + "x: 1" + ":1" * 200 + ".5\n", ["100 characters"]),
    "timestamp out of range": (MINIMAL + "x: 2001-12-14t21:59:43.10-99:99\n", ["not a valid timestamp"]),
    "a NUL character": (MINIMAL + "x: \x00\n", ["control characters are not allowed"]),
    "1,001 groups": (
        MINIMAL.split("groups:")[0]
        + "groups:\n"
        + "".join(f"  g{i}: {{engine: mocker, nodes: 1}}\n" for i in range(1001)),
        ["groups", "at most 1000"],
    ),
}


@pytest.mark.parametrize("name", DEPLOYMENT_FILES)
def test_hostile_deployment_file_is_one_line(tmp_path, name):
    text, words = DEPLOYMENT_FILES[name]
    path = tmp_path / "deploy.yaml"
    path.write_text(text)
    refused(["plan", str(path)], tmp_path, f"error: {path}", *words)


def test_dotenv_that_doubles_on_every_line_is_one_line(tmp_path):
    (tmp_path / "deploy.yaml").write_text(MINIMAL.replace("example/image:1", "${IMAGE}"))
    lines = ["IMAGE=example/image:1", "A0=" + "x" * 64] + [f"A{i}=${{A{i - 1}}}${{A{i - 1}}}" for i in range(1, 48)]
    (tmp_path / ".env").write_text("\n".join(lines) + "\n")
    refused(["plan", str(tmp_path / "deploy.yaml")], tmp_path, f"error: {tmp_path / '.env'}", "4 MiB")


def inventory(count: int) -> str:
    return "nodes:\n" + "".join(f"  - {{address: 10.{i >> 16}.{i >> 8 & 255}.{i & 255}}}\n" for i in range(count))


@pytest.mark.parametrize(
    "name,text,words",
    [
        ("10,001 nodes", inventory(MAX_NODES + 1), ["nodes", "at most 10000"]),
        ("alias bomb", laughs() + inventory(4), [f"{MAX_VALUES:,} values"]),
        ("nodes nested 5,000 deep", f"nodes: {NESTED}\n", ["deeper than 100"]),
    ],
)
def test_hostile_inventory_is_one_line(tmp_path, name, text, words):
    path = tmp_path / "inventory.yaml"
    path.write_text(text)
    config = REPO / "configs" / "sglang-tp16-2node.yaml"
    refused(["plan", str(config), "-i", str(path)], tmp_path, f"error: {path}", *words)


def lws_manifest(**changes) -> str:
    """The seed's LeaderWorkerSet with spec.replicas or spec.leaderWorkerTemplate.size changed."""
    docs = [d for d in yaml.safe_load_all(manifests(LWS_SEED)) if d]
    lws = next(d for d in docs if d["kind"] == "LeaderWorkerSet")
    if "replicas" in changes:
        lws["spec"]["replicas"] = changes["replicas"]
    if "size" in changes:
        lws["spec"]["leaderWorkerTemplate"]["size"] = changes["size"]
    return yaml.safe_dump_all(docs, sort_keys=False)


@pytest.mark.parametrize(
    "name,text,words",
    [
        ("replicas 10,000,000", lws_manifest(replicas=10_000_000), ["spec.replicas", "0 to 1000"]),
        ("size 10,000,000", lws_manifest(size=10_000_000), ["spec.leaderWorkerTemplate.size", "1 to 10000"]),
        ("1,000 replicas of 11", lws_manifest(replicas=1000, size=11), ["spec.replicas", "more than 10000 nodes"]),
        ("alias bomb after a manifest", lws_manifest() + "---\n" + laughs(), [f"{MAX_VALUES:,} values"]),
        ("self-referencing alias", "a: &a [*a]\n", ["recursive alias"]),
        ("5,000 nested brackets", f"spec: {NESTED}\n", ["deeper than 100"]),
        ("oversized", lws_manifest() + TOO_BIG, ["larger than 4 MiB"]),
    ],
)
def test_hostile_manifest_is_one_line(tmp_path, name, text, words):
    path = tmp_path / "lws.yaml"
    path.write_text(text)
    refused(["import", str(path)], tmp_path, f"error: {path}", *words)


@pytest.mark.parametrize(
    "name,text,words",
    [
        ("5,000 nested brackets", NESTED, ["deeper than 100"]),
        ("900 nested inside a result", '{"results": [], "x": ' + "[" * 900 + "]" * 900 + "}", ["deeper than 100"]),
        ("200,000 values", '{"results": [' + ",".join(["0"] * 200_000) + "]}", [f"{MAX_VALUES:,} values"]),
        ("oversized", '{"results": []}' + " " * MAX_FILE_BYTES, ["larger than 4 MiB"]),
        ("5,000-digit number", '{"results": [], "x": ' + "1" * 5000 + "}", ["not a number Python reads"]),
    ],
)
def test_hostile_bench_results_are_one_line(tmp_path, name, text, words):
    good, bad = tmp_path / "good", tmp_path / "bad"
    good.mkdir()
    bad.mkdir()
    (good / "results.json").write_text('{"results": []}')
    (bad / "results.json").write_text(text)
    args = ["bench", "compare", str(good), str(bad)]
    refused(args, tmp_path, f"error: DIR2: {bad / 'results.json'}", "not a `launcher bench` result", *words)


# -- just inside each limit: still read, still planned ---------------------------------------------------


def planned(args: list[str], cwd: Path) -> str:
    done = run_bounded(args, cwd, limit=120)
    assert done.code == 0, done.err[-2000:]
    return done.out


def test_files_just_inside_the_limits_plan(tmp_path):
    inv = tmp_path / "inventory.yaml"
    inv.write_text(inventory(MAX_NODES))
    out = planned(["plan", str(REPO / "configs" / "sglang-tp16-2node.yaml"), "-i", str(inv)], tmp_path)
    assert "10.0.0.1" in out  # the second of the 10,000 nodes runs rank 1
    padded = tmp_path / "padded.yaml"
    padded.write_text(MINIMAL + "#" * (MAX_FILE_BYTES - len(MINIMAL) - 1) + "\n")
    assert padded.stat().st_size == MAX_FILE_BYTES
    assert "4 nodes" in planned(["plan", str(padded)], tmp_path)
    # 100 levels in all: the file, groups, prefill, args and a flag's value nested 96 deep
    nested = tmp_path / "nested.yaml"
    deep = "[" * 96 + "1" + "]" * 96
    nested.write_text(MINIMAL.replace("args: {tp-size: 16}", f"args: {{tp-size: 16, deep: {deep}}}"))
    plan = json.loads(planned(["plan", str(nested), "--format", "json"], tmp_path))
    assert deep[1:-1] in json.dumps(plan)  # a list value is the flag's arguments: each of them as JSON


def test_dotenv_expansion_still_works(tmp_path):
    (tmp_path / "deploy.yaml").write_text(MINIMAL.replace("example/image:1", "${IMAGE}"))
    (tmp_path / ".env").write_text("REPO=example\nIMAGE=${REPO}/image:${TAG:-2}\n")
    assert "image example/image:2" in planned(["plan", str(tmp_path / "deploy.yaml")], tmp_path)


def expanding_to(values: int) -> str:
    """A YAML list whose document expands to `values` values: 270 aliases of one list of 368 (100,000)."""
    text = "- &s [" + ", ".join(["x"] * 368) + "]\n" + "- *s\n" * 270
    return text + "- x\n" * (values - 100_000)


def test_each_limit_is_exact(tmp_path):
    path = tmp_path / "f.yaml"
    path.write_text(expanding_to(MAX_VALUES))
    data, _ = load_yaml(path)
    assert len(data) == 271 and data[0] is data[-1] and len(data[0]) == 368
    path.write_text(expanding_to(MAX_VALUES + 1))
    with pytest.raises(ConfigError, match="100,000 values"):
        load_yaml(path)
    for depth, ok in ((MAX_DEPTH, True), (MAX_DEPTH + 1, False)):
        path.write_text("[" * depth + "]" * depth)
        (tmp_path / "f.json").write_text("[" * depth + "]" * depth)
        for load, file in ((load_yaml, path), (load_json, tmp_path / "f.json")):
            if ok:
                load(file)
            else:
                with pytest.raises(ConfigError, match="deeper than 100") as refused_at:
                    load(file)
                assert refused_at.value.line == 1
    (tmp_path / "f.json").write_text(json.dumps([0] * (MAX_VALUES - 1)))
    assert len(load_json(tmp_path / "f.json")) == MAX_VALUES - 1
    (tmp_path / "f.json").write_text(json.dumps([0] * MAX_VALUES))
    with pytest.raises(ConfigError, match="100,000 values"):
        load_json(tmp_path / "f.json")


def test_lws_size_and_replicas_at_their_limits():
    from launcher.plan.kube.importer import lws_counts
    from launcher.plan.kube.pods import Doc

    def doc(size: int, replicas: int) -> Doc:
        return Doc("lws.yaml", {"spec": {"replicas": replicas, "leaderWorkerTemplate": {"size": size}}}, {})

    assert lws_counts(doc(MAX_NODES, 1)) == (MAX_NODES, 1)
    assert lws_counts(doc(10, 1000)) == (10, 1000)
    for size, replicas in ((MAX_NODES + 1, 1), (1, 1001), (11, 1000), (0, 1), (1, -1)):
        with pytest.raises(ConfigError):
            lws_counts(doc(size, replicas))
