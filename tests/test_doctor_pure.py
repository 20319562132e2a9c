"""Doctor's pure parts: where the model lives on a node, cross-node comparisons, node scripts."""

from __future__ import annotations

import subprocess

from launcher.commands import preflight
from launcher.config.load import load as load_config
from launcher.plan.build import build as build_plan
from launcher.runtime.docker import Docker
from tests.helpers import CONFIGS, REPO

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


def test_stale_flags_become_failing_checks(tmp_path):
    text = (CONFIGS / "dsr1-104gpu.yaml").read_text().replace("moe-a2a-backend: deepep", "enable-deepep-moe: true")
    path = tmp_path / "old.yaml"
    path.write_text(text)
    p = build_plan(load_config(path, environ={}))
    assert p.flag_errors and all("--enable-deepep-moe" in e for e in p.flag_errors)
