"""The one redactor (launcher/config/redact.py) as users meet it: what `collect`, `logs`, `bench`'s recipe,
`plan` and `export` write never holds a secret, in clear or escaped; and where a secret is renamed
(`OPENAI_KEY: ${MY_KEY}`), the scripts and hints ask for the variable the user holds (MY_KEY)."""

from __future__ import annotations

import gzip
import json
import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import yaml

from launcher.config.load import load as load_config
from launcher.plan.build import build as build_plan
from tests.helpers import MINIMAL, UNREACHABLE, fresh_env, local_command_deployment, wait_for, write

LAUNCHER = [sys.executable, "-m", "launcher"]


def launcher(*args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 180):
    return subprocess.run(
        [*LAUNCHER, *args], cwd=cwd, env=env or fresh_env(), capture_output=True, text=True, timeout=timeout
    )


def bundle_texts(path: Path) -> dict[str, str]:
    with tarfile.open(path) as tar:
        return {m.name.split("/", 1)[1]: tar.extractfile(m).read().decode() for m in tar.getmembers() if m.isfile()}


# -- collect: the inventory's secret-looking vars ------------------------------------------------------


def test_collect_hides_the_inventorys_secret_vars(tmp_path):
    """An inventory var API_TOKEN (unused by the file) is bundled as `***`; an ordinary var stays."""
    token = "tok-" + os.urandom(8).hex()
    password = "pw-" + os.urandom(8).hex()
    (tmp_path / "deploy.yaml").write_text(UNREACHABLE)
    inventory = {
        "vars": {"API_TOKEN": token, "db_passwd": password, "REGION": "eu-west-7"},
        "nodes": [{"name": "n0", "address": "192.0.2.10"}],
    }
    (tmp_path / "inv.yaml").write_text(yaml.safe_dump(inventory, sort_keys=False))
    out = tmp_path / "b.tgz"
    proc = launcher(
        "collect", "deploy.yaml", "-i", "inv.yaml", "--connect-timeout", "1", "--out", str(out), cwd=tmp_path
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr  # the node never answers; the rest is collected
    texts = bundle_texts(out)
    bundled = texts["inventory.yaml"].splitlines()
    assert {"  API_TOKEN: ***", "  db_passwd: ***", "  REGION: eu-west-7"} <= set(bundled), bundled
    raw = gzip.decompress(out.read_bytes())
    assert token.encode() not in raw and password.encode() not in raw
    assert token not in proc.stdout + proc.stderr


# -- logs and collect: a secret with `"` and `\`, printed JSON-escaped and repr-escaped -------------------

PRINTER = (
    "import json, os; v = os.environ['MY_API_KEY']; "
    "print('json:', json.dumps({'note': v})); print('repr:', repr({'note': v})); print('plain:', v)"
)


def test_logs_and_collect_hide_a_secrets_escaped_forms(tmp_path):
    """The service prints its secret as JSON and as Python's repr (where `"` and `\\` are escaped): `logs`
    and the bundle show `***` in each place. Positive control: the node's own log has the escaped forms."""
    secret = 'k3y"with\\slash-' + os.urandom(6).hex()
    config = local_command_deployment(tmp_path, "escaped", "talker", f"python3 -c {json.dumps(PRINTER)}; sleep 600")
    data = yaml.safe_load(config.read_text())
    data["secrets"] = ["MY_API_KEY"]
    config.write_text(yaml.safe_dump(data, sort_keys=False))
    env = {**fresh_env(), "MY_API_KEY": secret}
    tail = secret[-12:]  # the random end: in every escaped form, found whatever escaping precedes it
    up = launcher("up", str(config), "--skip-doctor", cwd=tmp_path, env=env)
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        logs = tmp_path / "state" / "escaped" / "run"
        escaped = json.dumps({"note": secret})
        wait_for(lambda: any(escaped in p.read_text() for p in logs.glob("*/*/log")), 30, what="the log lines")
        shown = launcher("logs", str(config), "--role", "talker", cwd=tmp_path, env=env)
        assert shown.returncode == 0, shown.stderr
        for line in ('json: {"note": "***"}', "repr: {'note': '***'}", "plain: ***"):
            assert line in shown.stdout, shown.stdout
        assert tail not in shown.stdout + shown.stderr
        out = tmp_path / "b.tgz"
        collect = launcher("collect", str(config), "--out", str(out), cwd=tmp_path, env=env)
        assert collect.returncode == 0, collect.stdout + collect.stderr
        log = next(text for name, text in bundle_texts(out).items() if name.endswith("talker-r0.log"))
        assert 'json: {"note": "***"}' in log and "repr: {'note': '***'}" in log, log
        assert tail.encode() not in gzip.decompress(out.read_bytes())
    finally:
        launcher("down", str(config), cwd=tmp_path, env=env)


# -- bench's recipe ------------------------------------------------------------------------------------


def test_bench_recipe_files_hold_no_secret(tmp_path):
    """The recipe writer: command.txt (a command line that carried the value) and nodes.json (a node's
    error that echoed it, JSON-escaped there) show `***`; the deployment file keeps its `${MY_KEY}`."""
    from launcher.operations import bench_recipe
    from launcher.operations.context import Target
    from launcher.runtime import for_plan

    secret = 'b3nch"s3cret\\' + os.urandom(6).hex()
    decode = "    args: {tp-size: 16}\n"
    path = write(tmp_path, MINIMAL.replace(decode, decode + '    env: {OPENAI_KEY: "${MY_KEY}"}\n'))
    (tmp_path / ".env").write_text(f"MY_KEY='{secret}'\n")
    plan = build_plan(load_config(path, environ={}))
    t = Target(path, None, plan, for_plan(plan))
    argv = ["launcher", "bench", str(path), "--header", f"Authorization: Bearer {secret}"]
    nodes = {"0": {"name": "node0", "address": "10.9.0.1", "images": {}, "model": {}, "error": f"echo {secret}: 1"}}
    summary = bench_recipe.recipe(t, tmp_path / "out", argv, nodes)
    recipe = tmp_path / "out" / "recipe"
    command = (recipe / "command.txt").read_text()
    assert command.startswith("launcher bench ") and "Bearer ***" in command, command
    assert json.loads((recipe / "nodes.json").read_text())["0"]["error"] == "echo ***: 1"
    assert 'OPENAI_KEY: "${MY_KEY}"' in (recipe / "deploy.yaml").read_text()
    tail = secret[-12:]
    assert not [p.name for p in recipe.iterdir() if tail in p.read_text()]
    assert tail not in json.dumps(summary)


# -- a renamed secret: the name the user holds -----------------------------------------------------------

RENAMED = [
    pytest.param("secrets: [MY_KEY]\n", id="declared"),
    pytest.param("", id="secret-looking"),
]


def renamed(tmp_path: Path, top: str) -> Path:
    decode = "    args: {tp-size: 16}\n"
    text = MINIMAL.replace(decode, decode + '    env: {OPENAI_KEY: "${MY_KEY}"}\n') + top
    return write(tmp_path, text.replace("deployment: demo\n", f"deployment: demo\nstate_dir: {tmp_path}/state\n"))


@pytest.mark.parametrize("top", RENAMED)
def test_exports_and_scripts_ask_for_the_variable_the_user_holds(tmp_path, top):
    """`OPENAI_KEY: ${MY_KEY}` with MY_KEY in .env: the Slurm script, the `kubectl create secret` hint and
    the node script take the value from MY_KEY; run, they give the service OPENAI_KEY = MY_KEY's value."""
    secret = "sk-" + os.urandom(8).hex()
    path = renamed(tmp_path, top)
    (tmp_path / ".env").write_text(f"MY_KEY={secret}\n")

    lws = launcher("export", str(path), "--to", "lws", "-o", str(tmp_path / "k8s"), cwd=tmp_path)
    assert lws.returncode == 0, lws.stderr
    assert '--from-literal=OPENAI_KEY="$MY_KEY"' in lws.stderr and "$OPENAI_KEY" not in lws.stderr, lws.stderr

    slurm = launcher("export", str(path), "--to", "slurm", cwd=tmp_path)
    assert slurm.returncode == 0, slurm.stderr
    lines = [x for x in slurm.stdout.splitlines() if x.startswith((': "${', "export "))]
    assert ': "${MY_KEY:?launcher: secret MY_KEY is not set in the environment sbatch was run from}"' in lines
    assert not [x for x in lines if "${OPENAI_KEY" in x], lines
    check = "\n".join([*lines, 'printf %s "$OPENAI_KEY"'])
    given = subprocess.run(["bash", "-c", check], env={"MY_KEY": secret}, capture_output=True, text=True)
    assert given.returncode == 0 and given.stdout == secret, given.stderr
    missing = subprocess.run(["bash", "-c", check], env={"OPENAI_KEY": secret}, capture_output=True, text=True)
    assert missing.returncode != 0 and "secret MY_KEY is not set" in missing.stderr

    script = launcher("plan", str(path), "--format", "script", cwd=tmp_path)
    assert script.returncode == 0, script.stderr
    assert secret not in script.stdout and "${OPENAI_KEY" not in script.stdout
    # node 2 runs decode rank 0: its secrets file, as the script writes it from the user's MY_KEY
    node = script.stdout.split("#!/usr/bin/env bash")[3]
    setup = node.split("\ndocker rm -f ")[0]
    assert "# secrets come from your environment, never from this file: MY_KEY" in setup, setup
    env_file = re.search(r">> (\S+\.env)$", setup, re.M)[1]
    sourced = f'{setup}\n. {env_file}; printf %s "$OPENAI_KEY"'
    given = subprocess.run(["bash", "-c", sourced], env={"MY_KEY": secret}, capture_output=True, text=True)
    assert given.returncode == 0 and given.stdout == secret, given.stderr


def test_a_very_short_secret_is_hidden_by_its_name_only(tmp_path):
    """A 3-character secret is not searched for in free text (every `abc` would go); beside its name it is."""
    path = write(tmp_path, MINIMAL.replace("deployment: demo", "deployment: abc-demo") + "secrets: [HF_TOKEN]\n")
    (tmp_path / ".env").write_text("HF_TOKEN=abc\n")
    shown = launcher("plan", str(path), "-f", "json", cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    plan = json.loads(shown.stdout)
    assert plan["deployment"] == "abc-demo"
    worker = next(s for s in plan["services"] if s["group"] == "decode")
    assert worker["env"]["HF_TOKEN"] == "***" and "HF_TOKEN" in worker["secret_env"]
    text = launcher("plan", str(path), "-v", cwd=tmp_path)
    assert text.returncode == 0 and "HF_TOKEN='***'" in text.stdout, text.stderr
    assert text.stdout.startswith("deployment abc-demo: "), text.stdout[:200]
