"""configs/testbed-104.yaml on the 13-node testbed with its metrics stack (Prometheus on node 0): brought up
once for the modules that use it as it is (`launcher bench`'s runs, `top`, `collect`), taken down at the end
of the session. Import it into a test module:

    from tests.testbed_104 import testbed_104  # noqa: F401

Its users run one after another (tests/conftest.py puts them together), so that another module's own
testbed-104 (tests/testbed/test_e2e_testbed.py brings it up and down itself) never comes between them.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import grow_testbed
from tests.helpers import REPO, fresh_env

PROMETHEUS_PORT = 9099  # 9090 is the mockers' system port on every node
DEPLOYMENT_FILE = "testbed-104-metrics.yaml"  # in the fixture's directory


def launcher(testbed, config: Path, *args: str, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    argv = [sys.executable, "-m", "launcher", args[0], "-c", str(config), "-i", str(testbed.inventory), *args[1:]]
    return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=fresh_env())


@pytest.fixture(scope="session")
def testbed_104(session_testbed, tmp_path_factory):
    """(directory, deployment file): configs/testbed-104.yaml with `metrics: {prometheus: true}`, up."""
    from tests.local.test_observe_local import ensure_prometheus

    testbed = grow_testbed(session_testbed, 13)
    if len(testbed.nodes) < 13:
        pytest.fail("these tests run configs/testbed-104.yaml: LAUNCHER_TESTBED_NODES=13", pytrace=False)
    ensure_prometheus()
    cwd = tmp_path_factory.mktemp("testbed-104")
    data = yaml.safe_load((REPO / "configs" / "testbed-104.yaml").read_text())
    data["metrics"] = {"prometheus": True, "port": PROMETHEUS_PORT, "scrape_interval": "1s"}
    config = cwd / DEPLOYMENT_FILE
    config.write_text(yaml.safe_dump(data, sort_keys=False))
    up = launcher(testbed, config, "up", cwd=cwd)
    _running.append((testbed, config, cwd))
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        assert "prometheus: ready" in up.stderr
        yield cwd, config
    finally:
        take_down()


_running: list = []  # (testbed, deployment file, directory) while the shared deployment is up


def take_down() -> None:
    """`down` the shared deployment if it is up: right after its last user (tests/conftest.py), so that the
    testbed tests after it find the nodes free (a session fixture would hold their ports until the end)."""
    while _running:
        testbed, config, cwd = _running.pop()
        down = launcher(testbed, config, "down", cwd=cwd)
        assert down.returncode == 0, down.stdout + down.stderr
