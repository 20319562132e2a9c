"""Secrets reach the processes through a 0600 file, never through argv, plan output or docker inspect."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import time

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from launcher.config.load import load as load_config
from launcher.plan.build import build as build_plan
from launcher.runtime import docker
from tests.helpers import MINIMAL, STATE_DIR, wait_for, write

TOKEN = "hf_Sup3r-s3cret_'value'"


@settings(max_examples=200, derandomize=True)
@given(st.text(alphabet=st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",)), max_size=40))
def test_env_file_sources_back_to_the_same_value(value):
    body = docker.secrets_body({"S": value})
    out = subprocess.run(["sh", "-c", f'{body}printf %s "$S"'], capture_output=True).stdout
    assert out.decode("utf-8", "surrogateescape") == value


def test_docker_run_mounts_and_sources_the_file_instead_of_passing_values(tmp_path):
    path = write(tmp_path, MINIMAL + "secrets: [HF_TOKEN]\n")
    (tmp_path / ".env").write_text(f"HF_TOKEN={TOKEN}\n")
    p = build_plan(load_config(path, environ={}))
    worker = next(s for s in p.services if s.group)
    argv = docker.docker_run(p, worker)
    assert not any(TOKEN in a for a in argv) and "--env-file" not in argv
    assert f"{docker.secrets_file(p, worker)}:{docker.SECRETS_IN_CONTAINER}:ro" in argv
    image_at = argv.index(worker.image)
    assert argv[image_at + 1 : image_at + 3] == ["sh", "-c"] and argv[-len(worker.command) :] == worker.command
    script, stdin = docker.Docker().start_script(p, [worker])
    assert TOKEN not in script
    sourced = subprocess.run(["sh", "-c", f'{stdin}printf %s "$HF_TOKEN"'], capture_output=True, text=True).stdout
    assert sourced == TOKEN


def test_doctor_check_run_does_not_mount_the_secrets_file(tmp_path):
    """Before the first `up` the file does not exist: docker would make a directory there and break `up`."""
    path = write(tmp_path, MINIMAL + "secrets: [HF_TOKEN]\n")
    (tmp_path / ".env").write_text(f"HF_TOKEN={TOKEN}\n")
    p = build_plan(load_config(path, environ={}))
    worker = next(s for s in p.services if s.group)
    argv = docker.docker_check_run(p, worker, ["python3", "-c", "pass"])
    assert not any(docker.SECRETS_IN_CONTAINER in a for a in argv) and not any(TOKEN in a for a in argv)
    assert argv[-3:] == ["python3", "-c", "pass"] and worker.secret_env  # the service itself keeps them


def test_a_secret_under_another_env_name_still_goes_to_the_file(tmp_path):
    decode = "    args: {tp-size: 16}\n"
    text = MINIMAL.replace(decode, decode + '    env: {OPENAI_KEY: "${MY_API_KEY}"}\n')
    path = write(tmp_path, text)
    (tmp_path / ".env").write_text(f"MY_API_KEY={TOKEN}\n")
    p = build_plan(load_config(path, environ={}))
    decode = next(s for s in p.services if s.group == "decode")
    assert decode.secret_env == {"OPENAI_KEY": TOKEN} and "OPENAI_KEY" not in decode.env
    assert not any(TOKEN in a for a in docker.docker_run(p, decode))


@pytest.mark.parametrize(
    "where",
    [
        '    args: {tp-size: 16, api-key: "${MY_API_KEY}"}\n',
        '    container: {run_options: [--label, "k=${MY_API_KEY}"]}\n',
    ],
)
def test_a_secret_on_the_command_line_is_refused(tmp_path, capsys, where):
    from tests.helpers import run_cli

    text = MINIMAL.replace("    args: {tp-size: 16}\n", where)
    path = write(tmp_path, text)
    (tmp_path / ".env").write_text(f"MY_API_KEY={TOKEN}\n")
    code, out, err = run_cli(["plan", str(path)], capsys)
    assert code == 2 and "Traceback" not in err and TOKEN not in out + err
    assert err.startswith(f"error: {path}: groups.decode: the value of secret MY_API_KEY would be on the command line")


@pytest.mark.testbed
def test_secret_stays_out_of_argv_output_ps_and_inspect(testbed, tmp_path):
    """On real nodes: the secret from .env is readable inside the container and nowhere else."""
    data = {
        "deployment": "secret-test",
        "image": "${TESTBED_IMAGE}",
        "state_dir": STATE_DIR,
        "gpus_per_node": 0,
        "container": {"shm_size": "", "ulimits": {"memlock": None, "nofile": None}, "volumes": ["/usr:/usr:ro"]},
        "secrets": ["LAUNCHER_TEST_TOKEN"],
        "services": {"etcd": {"enabled": False}, "nats": {"enabled": False}, "frontend": {"enabled": False}},
        "groups": {"work": {"engine": "command", "nodes": 2, "args": ["sleep", "infinity"]}},
    }
    cfg = tmp_path / "secret.yaml"
    cfg.write_text(yaml.safe_dump(data))
    (tmp_path / ".env").write_text(f"LAUNCHER_TEST_TOKEN={TOKEN}\n")

    def launcher(*args):
        argv = [sys.executable, "-m", "launcher", *args, "-i", str(testbed.inventory)]
        return subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=300)

    shown = [launcher("plan", str(cfg), "-v"), launcher("plan", str(cfg), "-f", "json")]
    up = launcher("up", str(cfg), "--no-wait", "--skip-doctor")
    try:
        assert up.returncode == 0, up.stderr
        for r in [*shown, up]:
            assert TOKEN not in r.stdout + r.stderr
        for i in (0, 1):
            # the container's main process has sourced the secrets file and exec'd the command
            def environ(i=i) -> str | None:
                e = testbed.ssh(i, f"docker exec secret-test-work-r{i} cat /proc/1/environ").stdout
                return e if "LAUNCHER_TEST_TOKEN=" in e else None

            inside = wait_for(environ, 30, what=f"the secret in node {i}'s service environment")
            assert f"LAUNCHER_TEST_TOKEN={TOKEN}" in inside.split("\0")
            inspect = testbed.ssh(i, "docker inspect secret-test-work-r" + str(i)).stdout
            assert json.loads(inspect) and TOKEN not in inspect
            assert TOKEN not in testbed.ssh(i, "ps auxww").stdout
            mode = testbed.ssh(i, f"stat -c %a {STATE_DIR}/secret-test/secrets/secret-test-work-r" + str(i) + ".env")
            assert mode.stdout.strip() == "600"
        # The launcher's own records on the nodes (audit log, lock, labels' state) never hold it either.
        # Searched for its distinctive head, so that a quoted or escaped copy is found too.
        grep = "grep -rlF -- " + shlex.quote(TOKEN.split("'")[0]) + " " + STATE_DIR + "/secret-test"
        assert testbed.ssh(0, grep + "/secrets").returncode == 0  # the search works: it finds the env files
        records = testbed.ssh(0, grep.replace("-rlF", "-rlF --exclude-dir=secrets"))
        assert records.returncode == 1 and records.stdout == "", records.stdout
        assert testbed.ssh(0, f"test -s {STATE_DIR}/secret-test/audit.log").returncode == 0
        # Nor what it keeps locally (.launcher/ in the working directory); only the user's own .env has it.
        local = [p for p in tmp_path.rglob("*") if p.is_file() and p.name != ".env" and TOKEN in p.read_text()]
        assert local == [] and any(tmp_path.rglob(".launcher/*")), local
        print(
            "\nsecret absent from 2 plans, up's output, local state, the audit log, docker inspect and ps on 2 nodes; "
            "readable in 2 containers; env files mode 600"
        )
    finally:
        down = launcher("down", str(cfg))
    assert down.returncode == 0 and TOKEN not in down.stdout + down.stderr
    for i in (0, 1):
        assert testbed.ssh(i, f"ls {STATE_DIR}/secret-test/secrets 2>&1").returncode != 0  # removed by down


@pytest.mark.testbed
def test_up_with_doctor_and_a_secret_serves(testbed, tmp_path):
    """The doctor's parser check runs before the secret file exists; it must not leave a directory there."""
    from tests.helpers import REPO, launcher_on, printed_curl_answer

    data = yaml.safe_load((REPO / "configs" / "testbed-small.yaml").read_text())
    data["secrets"] = ["HF_TOKEN"]
    cfg = tmp_path / "with-secret.yaml"
    cfg.write_text(yaml.safe_dump(data, sort_keys=False))
    (tmp_path / ".env").write_text(f"HF_TOKEN={TOKEN}\n")
    started = time.monotonic()
    up = launcher_on(testbed, cfg, "up", cwd=tmp_path)
    try:
        print(f"\nup with doctor and a secret: ready in {time.monotonic() - started:.1f}s")
        assert up.returncode == 0, up.stderr
        # the doctor ran (this line only without --skip-doctor) and passed (a failed check stops `up`, exit 1)
        assert "doctor: checking every node and the engine flags" in up.stderr, up.stderr
        assert printed_curl_answer(up.stdout)  # and the deployment serves: the printed curl gets words back
        files = testbed.ssh(0, f"stat -c '%F %a' {STATE_DIR}/testbed-small/secrets/*.env").stdout.splitlines()
        assert files and set(files) == {"regular file 600"}, files
    finally:
        down = launcher_on(testbed, cfg, "down", cwd=tmp_path)
    assert down.returncode == 0, down.stderr
