"""Bad input, fuzzed: generated and mutated deployment files either plan or fail with exit 2 and one
message naming the file; never a traceback. Fixed seed, bounded examples (CI-stable)."""

from __future__ import annotations

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.helpers import CONFIGS, run_cli

BASE = yaml.safe_load((CONFIGS / "dsr1-104gpu.yaml").read_text())

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-5, 100000),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=12),
    st.sampled_from(["${UNSET_FUZZ_VAR}", "${X:-1}", "$$", "0.5.21", "-1", "all", "none"]),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)),
    max_leaves=8,
)


def paths(node, prefix=()):
    yield prefix
    if isinstance(node, dict):
        for k, v in node.items():
            yield from paths(v, prefix + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from paths(v, prefix + (i,))


ALL_PATHS = [p for p in paths(BASE) if p]


def mutate(doc, path, value, delete: bool):
    import copy

    doc = copy.deepcopy(doc)
    parent = doc
    for key in path[:-1]:
        parent = parent[key]
    if delete:
        del parent[path[-1]]
    else:
        parent[path[-1]] = value
    return doc


def run_plan(tmp_path, text: str, capsys) -> tuple[int, str, str]:
    """`launcher plan FILE --format json` in-process; a SystemExit with a message (not a number) is exit 1,
    as Python gives it, never 0."""
    path = tmp_path / "fuzz.yaml"
    path.write_text(text)
    return run_cli(["plan", str(path), "--format", "json"], capsys)


def assert_clean(code: int, err: str, tmp_path) -> None:
    assert "Traceback" not in err
    assert code in (0, 2), (code, err)
    if code == 2:
        first = err.splitlines()[0]
        assert first.startswith(f"error: {tmp_path / 'fuzz.yaml'}"), first


@settings(
    max_examples=150,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(st.sampled_from(ALL_PATHS), values, st.booleans())
def test_mutated_104gpu_file(tmp_path, capsys, path, value, delete):
    code, out, err = run_plan(tmp_path, yaml.safe_dump(mutate(BASE, path, value, delete)), capsys)
    assert_clean(code, err, tmp_path)


@settings(
    max_examples=100, derandomize=True, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.text(max_size=200))
def test_arbitrary_text(tmp_path, capsys, text):
    code, out, err = run_plan(tmp_path, text, capsys)
    assert_clean(code, err, tmp_path)


@settings(
    max_examples=100, derandomize=True, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.dictionaries(st.sampled_from(sorted(BASE) + ["nodez", "group"]), values, max_size=6))
def test_generated_top_level(tmp_path, capsys, doc):
    code, out, err = run_plan(tmp_path, yaml.safe_dump(doc), capsys)
    assert_clean(code, err, tmp_path)
