"""SGLang's P/D router (sglang-router 0.3.2, CPU-only) as a service of a plan, on the testbed.

There is no SGLang engine on the testbed (no GPUs), so the prefill and decode groups are planned but
not started: exactly the state of a cluster whose workers are still loading, or died. The router must
start, and the launcher's readiness logic must say it is not ready, and why, instead of calling it up
because `/health` (liveness) answers 200.
"""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from launcher.config.load import load as load_config
from launcher.operations import checks as doctor
from launcher.operations.nodes import start
from launcher.operations.waiter import ServiceFailed, Waiter
from launcher.output.progress import Progress
from launcher.plan.build import build as build_plan
from tests.helpers import REPO, connected_target, launcher_on

pytestmark = pytest.mark.testbed


def router_config(tmp_path: Path) -> Path:
    small = yaml.safe_load((REPO / "configs" / "testbed-small.yaml").read_text())
    data = {
        "deployment": "router-tb",
        "image": "${TESTBED_IMAGE}",
        "gpus_per_node": 8,  # the workers are planned (they give the router its URLs), never started here
        "versions": {"sglang": "0.5.21", "sglang_router": "0.3.2"},
        "model": {"path": "/model", "name": "tiny"},
        "container": small["container"],
        "services": {
            "etcd": {"enabled": False},
            "nats": {"enabled": False},
            "frontend": {"enabled": False},
            "router": {"enabled": True, "node": 0, "port": 8000, "prometheus_port": 29000, "timeout": 8},
        },
        "groups": {
            "prefill": {"engine": "sglang", "nodes": 1, "args": {"tp-size": 8}},
            "decode": {"engine": "sglang", "nodes": 1, "args": {"tp-size": 8}},
        },
    }
    path = tmp_path / "router.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_router_without_workers_is_reported_not_ready(testbed, tmp_path):
    path = router_config(tmp_path)
    p = build_plan(load_config(path, testbed.inventory, environ={}))
    (router,) = [s for s in p.services if s.role == "router"]
    head = testbed.nodes[0][1]
    assert router.node.address == head
    line = " ".join(router.command)
    assert f"--prefill http://{head}:30000 8998 --decode http://{testbed.nodes[1][1]}:30000" in line

    try:
        with connected_target(p, parallel=8, connect_timeout=5) as target:
            # doctor's preflight finds the pinned router in the image (before any engine would load a model)
            (check,) = [c for c in doctor.check_args(target) if c.name == "router"]
            assert (check.status, check.detail) == ("ok", "sglang-router 0.3.2 in the image"), check
            started = time.monotonic()
            start(target, [router], Progress(live=False))
            with pytest.raises(ServiceFailed) as failed:
                Waiter(target, Progress(live=False), [router]).run()
            took = time.monotonic() - started
            message = str(failed.value)
            print(f"\nrouter started; reported not ready after {took:.1f}s: {message.splitlines()[0]}")
            assert f"{router.node.name} router ({head}) not ready after 8s" in message
            assert "/readiness" in message
            assert "HTTP 503 not ready: insufficient healthy workers" in message

            # Liveness says 200 without any worker: the reason the probe is /readiness.
            assert get(f"http://{head}:8000/health")[0] == 200
            status, body = get(f"http://{head}:8000/readiness")
            assert status == 503 and json.loads(body)["status"] == "not ready"
            # The explicit Prometheus port answers (a taken one would have crashed the router).
            assert get(f"http://{head}:29000/metrics")[0] == 200

            shown = launcher_on(testbed, path, "status", cwd=tmp_path)
            assert shown.returncode == 1  # the workers are missing
            assert (
                f"endpoint http://{head}:8000  router not ready: HTTP 503 not ready: insufficient healthy workers"
                in (shown.stdout)
            ), shown.stdout
            data = json.loads(launcher_on(testbed, path, "status", "--json", cwd=tmp_path).stdout)
            states = {s["role"]: s["state"] for s in data["services"]}
            assert states == {"router": "running", "prefill": "missing", "decode": "missing"}
            assert data["frontend"]["ready"] is False and "insufficient healthy workers" in data["frontend"]["answer"]
    finally:
        down = launcher_on(testbed, path, "down", cwd=tmp_path)
    assert down.returncode == 0, down.stderr
    assert not testbed.ssh(0, "docker ps -aq --filter label=launcher.deployment=router-tb").stdout.strip()


def test_router_refuses_an_unpinned_version_in_one_line(testbed, tmp_path):
    """The image holds 0.3.2; a file pinning 0.3.1 fails fast, naming both versions."""
    path = router_config(tmp_path)
    data = yaml.safe_load(path.read_text())
    data["versions"]["sglang_router"] = "0.3.1"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    p = build_plan(load_config(path, testbed.inventory, environ={}))
    (router,) = [s for s in p.services if s.role == "router"]
    try:
        with connected_target(p, parallel=8, connect_timeout=5) as target:
            # doctor says so first, in one line, with the fix; nothing was started by it
            (check,) = [c for c in doctor.check_args(target) if c.name == "router"]
            assert check.status == "fail", check
            assert (
                check.detail == "sglang-router 0.3.2 is installed here but the file pins 0.3.1 (versions.sglang_router)"
            )
            assert "sglang-router==0.3.1" in check.fix
            assert not testbed.ssh(0, "docker ps -aq --filter label=launcher.deployment=router-tb").stdout.strip()
            start(target, [router], Progress(live=False))
            with pytest.raises(ServiceFailed) as failed:
                Waiter(target, Progress(live=False), [router]).run()
            message = str(failed.value)
            assert "exit code 3" in message
            assert "sglang-router 0.3.2 is installed here but the file pins 0.3.1 (versions.sglang_router)" in message
    finally:
        launcher_on(testbed, path, "down", cwd=tmp_path)
