"""Doctor's pure parts: where the model lives on a node, cross-node comparisons, node scripts."""

from __future__ import annotations

import json
import subprocess

from launcher.config.load import load as load_config
from launcher.operations import preflight
from launcher.plan.build import build as build_plan
from launcher.runtime.docker import Docker
from tests.helpers import CONFIGS, REPO, run_cli, write

INV = REPO / "tests" / "data" / "inventory-32.yaml"


def test_model_host_path_follows_the_volume():
    p = build_plan(load_config(CONFIGS / "dsr1-104gpu.yaml", environ={}))
    worker = next(s for s in p.services if s.group)
    assert preflight.model_host_path(p, worker) == "/models/DeepSeek-R1"
    t = build_plan(load_config(CONFIGS / "testbed-104.yaml", INV, environ={}))
    assert preflight.model_host_path(t, next(s for s in t.services if s.group)) == "/repo/models/tiny"


def test_a_different_image_id_fails_only_the_odd_node():
    checks = [preflight.Check(i, "image", "ok", f"img:1=sha256:{'b' if i == 2 else 'a'}") for i in range(4)]
    preflight._compare(checks, "image", "same", "images differ between nodes")
    assert [(c.node, c.status) for c in checks if c.status == "fail"] == [(2, "fail")]
    assert "most nodes: sha256:a" in checks[2].detail


def test_node_scripts_are_valid_bash_and_check_every_planned_port():
    p = build_plan(load_config(CONFIGS / "dsr1-104gpu.yaml", environ={}))
    script = preflight.node_script(p, Docker(), 0, running=set())
    subprocess.run(["bash", "-n", "-c", script], check=True)
    for port in (2379, 2380, 4222, 8222, 8000, 29500, 30001, 9090):
        assert f"port ok {port}" in script
    assert "nvidia-smi" in script and "image inspect" in script
    # a running service of this deployment holds its own port: not reported as busy
    assert "port ok 8000" not in preflight.node_script(p, Docker(), 0, running={"dsr1-104gpu-frontend"})


STALE = """\
deployment: stale
runtime: process
state_dir: {tmp}/state
gpus_per_node: 8
versions: {{sglang: "0.5.21"}}
model: {{path: {tmp}/model, name: m}}
nodes: [{{name: local, address: 127.0.0.1}}]
services: {{etcd: {{enabled: false}}, nats: {{enabled: false}}, frontend: {{enabled: false}}}}
groups:
  prefill: {{engine: dynamo-sglang, nodes: [0], gpus: [0, 1, 2, 3], args: {{tp-size: 4, {prefill}: true}}}}
  decode: {{engine: dynamo-sglang, nodes: [0], gpus: [4, 5, 6, 7], dist_init_port: 29600, bootstrap_port: 30002,
           args: {{tp-size: 4, {decode}: true}}}}
"""


def test_stale_flags_become_failing_checks(tmp_path, capsys):
    """`launcher doctor` on this machine (the local node): a flag the declared SGLang removed is a failing
    check, a deprecated one a warning, each naming its group and the fix; a current file has neither."""
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    stale = write(tmp_path, STALE.format(tmp=tmp_path, prefill="enable-deepep-moe", decode="disable-cuda-graph"))
    code, out, err = run_cli(["doctor", str(stale), "--json", "--no-args"], capsys)
    data = json.loads(out)
    flags = [c for c in data["checks"] if c["name"] == "flags"]
    assert [(c["node"], c["status"]) for c in flags] == [(None, "fail"), (None, "warn")], flags
    assert flags[0]["detail"].startswith("groups.prefill: --enable-deepep-moe was removed in SGLang 0.5.5")
    assert "use --moe-a2a-backend deepep (declared SGLang 0.5.21)" in flags[0]["detail"]
    assert flags[1]["detail"].startswith("groups.decode: --disable-cuda-graph is deprecated since SGLang 0.5.15")
    assert all(c["fix"] == "launcher migrate CONFIG --sglang VERSION" for c in flags)
    assert code == 1 and data["ok"] is False, err

    current = write(tmp_path, STALE.format(tmp=tmp_path, prefill="enable-dp-attention", decode="enable-dp-lm-head"))
    code, out, err = run_cli(["doctor", str(current), "--json", "--no-args"], capsys)
    data = json.loads(out)
    assert not [c for c in data["checks"] if c["name"] == "flags"]
    others_fail = any(c["status"] == "fail" for c in data["checks"])
    assert code == (1 if others_fail else 0) and data["ok"] is not others_fail, data
