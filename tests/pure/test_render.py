"""Rendered shell text must split back into exactly the argv that was meant, whatever the strings."""

from __future__ import annotations

import json
import shlex
import subprocess

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from launcher.config.load import load as load_config
from launcher.output import plan_views
from launcher.plan.build import build as build_plan
from launcher.plan.engines import args as A
from launcher.runtime import docker
from launcher.runtime.shell import join
from tests.helpers import MINIMAL, write

# Any text an argv can hold: everything but NUL.
arg_text = st.text(alphabet=st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",)), max_size=40)


@settings(max_examples=300, derandomize=True)
@given(st.lists(arg_text, min_size=1, max_size=8))
def test_shell_text_splits_back(argv):
    assert shlex.split(join(argv)) == argv


NASTY = ["/models/my model", "it's", 'say "hi"', "$(touch /tmp/pwned)", "a;b", "`id`", "x\ny", "*", "~", "$HOME", "-e"]


def test_bash_receives_exactly_the_argv(tmp_path):
    """Run the rendered text through real bash, with `docker` replaced by a function printing its argv."""
    text = (
        MINIMAL.replace("example/image:1", "img:1").replace(
            "{tp-size: 16}", "{tp-size: 16, served-model-name: " + json.dumps(NASTY[2]) + "}"
        )
        + "container:\n  volumes: ['/models/my model:/m ro:ro']\n  env:\n"
        + "".join(f"    V{i}: {json.dumps(v)}\n" for i, v in enumerate(NASTY))
    )
    p = build_plan(load_config(write(tmp_path, text), environ={}))
    for service in p.services:
        argv = docker.docker_run(p, service)
        script = (
            "docker() { python3 -c 'import json,sys; print(json.dumps(sys.argv[1:]))' \"$@\"; }\n" + join(argv) + "\n"
        )
        result = subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=True, cwd=tmp_path)
        assert json.loads(result.stdout) == argv[1:]
    assert not (tmp_path / "pwned").exists()


def test_node_script_runs_the_same_argv(tmp_path):
    p = build_plan(load_config(write(tmp_path, MINIMAL + "container:\n  env: {V: '$(echo no); x'}\n"), environ={}))
    script = plan_views.node_script(p, 0)
    printer = "python3 -c 'import json,sys; print(json.dumps(sys.argv[1:]))'"
    fake = 'docker() { if [ "$1" = run ]; then ' + printer + ' "$@"; fi; }\n'
    body = script.replace("set -euo pipefail", "set -euo pipefail\n" + fake)
    out = subprocess.run(["bash", "-c", body], capture_output=True, text=True, check=True).stdout
    lines = [json.loads(line) for line in out.splitlines()]
    assert lines == [docker.docker_run(p, s)[1:] for s in p.by_node(0)]


@settings(max_examples=200, derandomize=True)
@given(
    st.dictionaries(
        st.from_regex(r"[a-z][a-z0-9-]{0,12}", fullmatch=True),
        st.one_of(st.booleans(), st.integers(), arg_text),
        max_size=6,
    )
)
def test_mapping_args_round_trip(mapping):
    argv = A.normalize(mapping)
    found = A.flags(argv)
    for key, value in mapping.items():
        if value is False:
            assert f"--{key}" not in found
        elif value is True:
            assert found[f"--{key}"] == []
        elif not str(value).startswith("--"):
            assert found[f"--{key}"][0] == str(value)


def test_pasted_command_string():
    assert A.normalize("--tp-size 16 \\\n  --model-path '/m x'") == ["--tp-size", "16", "--model-path", "/m x"]


def test_without_removes_flags_and_values():
    argv = ["--a", "1", "--b", "--c=3", "--d", "x", "y", "--e"]
    assert A.without(argv, "--a", "--c", "--d") == ["--b", "--e"]


@pytest.mark.parametrize(("gpus", "flag"), [("all", "all"), ("7", '"device=7"'), ("0,1,2,3", '"device=0,1,2,3"')])
def test_gpu_selection_is_always_a_device_list(tmp_path, gpus, flag):
    """`--gpus 7` would mean "seven GPUs" (0-6) to docker, not GPU 7."""
    from launcher.config.load import load as load_config
    from launcher.plan.build import build as build_plan
    from launcher.runtime import docker
    from tests.helpers import MINIMAL, write

    decode = "    args: {tp-size: 16}\n"
    text = MINIMAL.replace(decode, decode + f"    container: {{gpus: '{gpus}'}}\n")
    p = build_plan(load_config(write(tmp_path, text), environ={}))
    argv = docker.docker_run(p, next(s for s in p.services if s.group == "decode"))
    assert argv[argv.index("--gpus") + 1] == flag
