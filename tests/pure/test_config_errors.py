"""Bad input: exit code 2 and one line naming the file, the key (and line) and what was expected."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.helpers import MINIMAL, REPO, fresh_env, run_cli, write


def plan_error(tmp_path, capsys, text: str, env: dict[str, str] | None = None, monkeypatch=None, extra=()):
    path = write(tmp_path, text)
    if env and monkeypatch:
        for k, v in env.items():
            monkeypatch.setenv(k, v)
    code, out, err = run_cli(["plan", str(path), *extra], capsys)
    assert code == 2, (out, err)
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines, "an error message is printed"
    assert lines[0].startswith(f"error: {path}"), lines[0]
    return lines[0]


def test_minimal_is_valid(tmp_path, capsys):
    code, out, err = run_cli(["plan", str(write(tmp_path, MINIMAL))], capsys)
    assert code == 0, err
    assert "4 nodes" in out


def test_yaml_syntax_error_names_line(tmp_path, capsys):
    line = plan_error(tmp_path, capsys, "deployment: demo\nimage: [unclosed\nnodes: 1\n")
    assert "YAML syntax error" in line
    assert ":3" in line or ":2" in line


def test_unknown_key_suggests_closest(tmp_path, capsys):
    text = MINIMAL.replace("gpus_per_node: 8", "gpus_per_nod: 8")
    line = plan_error(tmp_path, capsys, text)
    assert "gpus_per_nod" in line and "did you mean 'gpus_per_node'" in line
    assert ":3:" in line  # the line where the key was written


def test_unknown_nested_key(tmp_path, capsys):
    text = MINIMAL.replace(
        "    engine: dynamo-sglang\n    nodes: 2\n    args: {tp-size: 16}",
        "    engine: dynamo-sglang\n    nodez: 2\n    args: {tp-size: 16}",
    )
    line = plan_error(tmp_path, capsys, text)
    assert "groups.decode.nodez" in line and "did you mean 'nodes'" in line


def test_wrong_type(tmp_path, capsys):
    line = plan_error(tmp_path, capsys, MINIMAL.replace("gpus_per_node: 8", "gpus_per_node: eight"))
    assert "gpus_per_node" in line and "whole number" in line and "'eight'" in line


def test_missing_required_key(tmp_path, capsys):
    line = plan_error(tmp_path, capsys, MINIMAL.replace("image: example/image:1\n", ""))
    assert "`image` is required with the docker runtime" in line


def test_tp_not_matching_nodes_times_gpus(tmp_path, capsys):
    line = plan_error(tmp_path, capsys, MINIMAL.replace("{tp-size: 16}", "{tp-size: 24}"))
    assert "groups.decode.args" in line and "--tp-size 24" in line and "2 node(s) x 8 GPU(s) = 16" in line


def test_dp_must_divide_tp(tmp_path, capsys):
    line = plan_error(tmp_path, capsys, MINIMAL.replace("dp-size: 16", "dp-size: 5"))
    assert "groups.prefill.args" in line and "--dp-size 5 must divide --tp-size 16" in line


def test_more_nodes_than_inventory(tmp_path, capsys):
    line = plan_error(
        tmp_path,
        capsys,
        MINIMAL.replace("    nodes: 2\n    args: {tp-size: 16}\n", "    nodes: 3\n    args: {tp-size: 24}\n"),
    )
    assert "groups.decode.nodes" in line and "asks for 3 node(s)" in line and "only 2 are free" in line


def test_same_address_twice(tmp_path, capsys):
    line = plan_error(tmp_path, capsys, MINIMAL.replace("10.9.0.2", "10.9.0.1"))
    assert "nodes[1].address" in line and "listed twice" in line


def test_node_in_two_groups(tmp_path, capsys):
    text = MINIMAL.replace(
        "    nodes: 2\n    args: {tp-size: 16, dp", "    nodes: [0, 1]\n    args: {tp-size: 16, dp"
    ).replace("    nodes: 2\n    args: {tp-size: 16}\n", "    nodes: [1, 2]\n    args: {tp-size: 16}\n")
    line = plan_error(tmp_path, capsys, text)
    assert "groups.decode.nodes" in line and "node 1" in line and "in groups prefill and decode" in line


def test_two_services_same_port(tmp_path, capsys):
    text = MINIMAL + "services:\n  nats: {port: 2379}\n"
    line = plan_error(tmp_path, capsys, text)
    assert "services.nats" in line and "port 2379" in line and "etcd" in line


def test_unset_variable_without_default(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("LAUNCHER_TEST_UNSET", raising=False)
    line = plan_error(tmp_path, capsys, MINIMAL.replace("example/image:1", "${LAUNCHER_TEST_UNSET}"))
    assert "image" in line and "${LAUNCHER_TEST_UNSET} is not set" in line and ":2:" in line


def test_secret_named_but_not_defined(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    line = plan_error(tmp_path, capsys, MINIMAL + "secrets: [HF_TOKEN]\n")
    assert "secrets[0]" in line and "secret HF_TOKEN is named but not defined" in line


def test_unknown_engine(tmp_path, capsys):
    line = plan_error(
        tmp_path,
        capsys,
        MINIMAL.replace(
            "engine: dynamo-sglang\n    nodes: 2\n    args: {tp-size: 16}",
            "engine: dynamo-sglng\n    nodes: 2\n    args: {tp-size: 16}",
        ),
    )
    assert "groups.decode.engine" in line and "did you mean 'dynamo-sglang'" in line


def test_managed_flag_refused(tmp_path, capsys):
    line = plan_error(tmp_path, capsys, MINIMAL.replace("{tp-size: 16}", "{tp-size: 16, node-rank: 0}"))
    assert "--node-rank is set by the launcher" in line


def test_duplicate_yaml_key(tmp_path, capsys):
    line = plan_error(tmp_path, capsys, MINIMAL.replace("gpus_per_node: 8", "gpus_per_node: 8\ngpus_per_node: 4"))
    assert "duplicate key" in line and "gpus_per_node" in line


def test_unknown_node_reference(tmp_path, capsys):
    line = plan_error(tmp_path, capsys, MINIMAL + "services:\n  etcd: {node: h100-99}\n")
    assert "services.etcd.node" in line and "no node 'h100-99'" in line


def test_file_not_found(tmp_path, capsys):
    code, out, err = run_cli(["plan", str(tmp_path / "nope.yaml")], capsys)
    assert code == 2 and "file not found" in err and "Traceback" not in err


def test_top_level_not_a_mapping(tmp_path, capsys):
    line = plan_error(tmp_path, capsys, "- just\n- a list\n")
    assert "expected a mapping" in line


@pytest.mark.parametrize("bad", ["has space", "", "-x", "a/b"])
def test_bad_deployment_name(tmp_path, capsys, bad):
    line = plan_error(tmp_path, capsys, MINIMAL.replace("deployment: demo", f"deployment: '{bad}'"))
    # The path printed first contains the test's name (and so `deployment`): check what follows it.
    where = line.removeprefix(f"error: {tmp_path / 'deploy.yaml'}")
    assert where == f":1: deployment: '{bad}' does not match the allowed form ^[a-zA-Z0-9][a-zA-Z0-9_.-]*$", line


def test_too_long_deployment_name(tmp_path, capsys):
    line = plan_error(tmp_path, capsys, MINIMAL.replace("deployment: demo", "deployment: " + "a" * 49))
    assert line.removeprefix(f"error: {tmp_path / 'deploy.yaml'}").startswith(
        ":1: deployment: String should have at most 48 characters"
    ), line


def test_inventory_errors_name_the_inventory(tmp_path, capsys):
    deploy = write(tmp_path, MINIMAL.split("nodes:")[0] + MINIMAL[MINIMAL.index("groups:") :])
    inv = write(tmp_path, "nodes:\n  - {adress: 10.0.0.1}\n", name="inv.yaml")
    code, out, err = run_cli(["plan", str(deploy), "-i", str(inv)], capsys)
    assert code == 2
    assert err.startswith(f"error: {inv}:2: nodes[0].adress: unknown key: did you mean 'address'?"), err


@pytest.mark.parametrize("name", ["X$(id>&2)Y", "BAD KEY", "MY-VAR", "1ST"])
def test_env_names_a_shell_cannot_export(tmp_path, capsys, name):
    text = MINIMAL.replace("    args: {tp-size: 16}\n", f'    args: {{tp-size: 16}}\n    env: {{"{name}": "1"}}\n')
    line = plan_error(tmp_path, capsys, text)
    assert f"groups.decode.env.{name}" in line and "does not match" in line


def test_ipv6_address_is_refused_clearly(tmp_path, capsys):
    line = plan_error(tmp_path, capsys, MINIMAL.replace("10.9.0.3", '"fd00::10"'))
    assert "nodes[2].address" in line and "IPv6 addresses are not supported yet" in line


def test_empty_node_list_in_an_inventory(tmp_path, capsys):
    inventory = write(tmp_path, "nodes: []\n", name="inventory.yaml")
    code, out, err = run_cli(["plan", str(write(tmp_path, MINIMAL)), "-i", str(inventory)], capsys)
    assert code == 2 and "Traceback" not in err
    assert err.startswith(f"error: {inventory}:1: nodes: ") and "at least 1 item" in err, err


@pytest.mark.parametrize("flag", ["-c", "-i"])
def test_a_file_of_another_kind_is_one_line_not_one_per_key(tmp_path, flag):
    """A YAML mapping none of whose keys belongs to the file's kind (another tool's file; /proc/self/status,
    which libyaml reads as 50-odd keys) is named in one line, as a fresh process, not once per key."""
    other = write(tmp_path, "".join(f"Key{i}:\tvalue {i}\n" for i in range(40)), "other.yaml")
    config = other if flag == "-c" else REPO / "configs" / "local.yaml"
    argv = [sys.executable, "-m", "launcher", "plan", str(config)] + (["-i", str(other)] if flag == "-i" else [])
    r = subprocess.run(argv, capture_output=True, text=True, timeout=60, env=fresh_env(), cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    assert r.stderr.splitlines() == [r.stderr.strip()], r.stderr
    assert str(other) in r.stderr and "none of its 40 top-level key(s) is one (Key0, Key1" in r.stderr
