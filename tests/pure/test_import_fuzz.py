"""`launcher import` on wrongly typed manifests: seed 001's LeaderWorkerSets with one value swapped for one of
another type (a mapping where a list belongs, a number where a mapping belongs, null, ...) at a path drawn at
random. The property: never a traceback; the import (manifests -> deployment file) either refuses in one line
naming the manifest (ConfigError: exit 2) or succeeds, and then the file it wrote plans and exports back to
LeaderWorkerSets that the CRD's schema accepts. Fixed seed (derandomize), 200 examples, no shrinking
(a failure shows its path and value as drawn).
A few of the reviewer's cases also as fresh `launcher import` processes."""

from __future__ import annotations

import copy
import subprocess
import sys

import jsonschema
import pytest
import yaml
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from launcher.commands import import_
from launcher.config.load import load
from launcher.errors import ConfigError, ConfigErrors
from launcher.plan.build import build
from launcher.plan.kube.exporter import to_manifests
from launcher.plan.kube.importer import Options, from_manifests, render
from tests.helpers import fresh_env
from tests.pure.test_lws import crd_schema
from tests.seeds import manifests

SEED = [d for d in yaml.safe_load_all(manifests("001_3bc60c81eb28b8e5.txt")) if d]
OPTIONS = Options(sglang="0.5.21", sglang_router="0.3.2")
SWAPS = [None, 7, 1.5, True, "x y", {}, [], [None], [7], {"a": 7}]
LWS_SCHEMA = jsonschema.Draft4Validator(crd_schema())


def lws_indices() -> list[int]:
    return [i for i, d in enumerate(SEED) if d.get("kind") == "LeaderWorkerSet"]


@st.composite
def mutated(draw) -> tuple[list, tuple, object]:
    docs = copy.deepcopy(SEED)
    index = draw(st.sampled_from(lws_indices() if draw(st.booleans()) else list(range(len(docs)))))
    node, path = docs[index], [index]
    # walk down: at each level stop here (swap this value) or go into one of its children
    while isinstance(node, (dict, list)) and node and draw(st.integers(0, 5)) > 0:
        key = draw(st.sampled_from(sorted(node, key=str) if isinstance(node, dict) else range(len(node))))
        path.append(key)
        node = node[key]
    value = draw(st.sampled_from(SWAPS))
    if len(path) == 1:
        docs[index] = {"kind": "LeaderWorkerSet", "spec": value}
    else:
        parent = docs[index]
        for key in path[1:-1]:
            parent = parent[key]
        parent[path[-1]] = value
    return docs, tuple(path), value


@settings(derandomize=True, max_examples=200, deadline=None, database=None, phases=[Phase.generate],
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])  # fmt: skip
@given(case=mutated())
def test_wrongly_typed_manifests_never_traceback(tmp_path, case):
    docs, path, value = case
    manifest = tmp_path / "m.yaml"
    manifest.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    try:
        text = render(from_manifests(import_.read([manifest]), OPTIONS), "launcher import m.yaml")
    except (ConfigError, ConfigErrors) as exc:
        text = str(exc)
        assert "\n" not in text and text.startswith(str(manifest)), (path, value, text)
        return
    # Accepted: the deployment file it wrote plans, and exports back to LeaderWorkerSets the CRD accepts.
    deployment = tmp_path / "imported.yaml"
    deployment.write_text(text)
    plan = build(load(deployment, environ={}))
    objects = to_manifests(plan)
    sets = [o for o in objects if o["kind"] == "LeaderWorkerSet"]
    assert [o["metadata"]["name"] for o in sets] == [f"{plan.deployment}-{g.name}" for g in plan.groups], (path, value)
    for lws in sets:
        assert list(LWS_SCHEMA.iter_errors(lws)) == [], (path, value, lws["metadata"]["name"])


def pod_spec(docs: list, role: str = "leaderTemplate") -> dict:
    lws = next(d for d in docs if d.get("kind") == "LeaderWorkerSet")
    return lws["spec"]["leaderWorkerTemplate"][role]


def first_container(docs: list) -> dict:
    return pod_spec(docs)["spec"]["containers"][0]


@pytest.mark.parametrize(
    ("swap", "expected"),
    [
        (lambda d: pod_spec(d).__setitem__("spec", 7), "spec: expected a mapping (a pod spec), got 7"),
        (lambda d: first_container(d).__setitem__("volumeMounts", [None]),
         "volumeMounts[0]: expected a mapping ({name: ..., mountPath: ...}), got null"),
        (lambda d: first_container(d).setdefault("securityContext", {}).__setitem__("capabilities", {"add": 7}),
         "securityContext.capabilities.add: expected a list, got 7"),
        (lambda d: first_container(d).__setitem__("command", {}), "command: expected a list of strings, got {}"),
    ],
)  # fmt: skip
def test_wrongly_typed_pod_fields_one_line_exit_2(tmp_path, swap, expected):
    docs = copy.deepcopy(SEED)
    swap(docs)
    manifest = tmp_path / "m.yaml"
    manifest.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    run = subprocess.run(
        [sys.executable, "-m", "launcher", "import", str(manifest), "--sglang", "0.5.21", "--sglang-router", "0.3.2"],
        capture_output=True, text=True, timeout=120, env=fresh_env(), cwd=tmp_path,
    )  # fmt: skip
    lines = run.stderr.strip().splitlines()
    assert run.returncode == 2 and len(lines) == 1 and "Traceback" not in run.stderr, run.stderr
    assert lines[0].startswith(f"error: {manifest}:") and "LeaderWorkerSet/" in lines[0], lines[0]
    assert lines[0].endswith(expected), lines[0]
