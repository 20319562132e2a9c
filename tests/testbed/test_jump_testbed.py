"""Nodes reached through a jump host (ProxyJump): it works, and the jump host's key is checked too."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.helpers import REPO

pytestmark = pytest.mark.testbed


def inventory_via_jump(testbed, tmp_path: Path, known_hosts: Path) -> Path:
    inv = yaml.safe_load(testbed.inventory.read_text())
    inv["ssh"]["jump"] = f"root@{testbed.nodes[0][1]}"
    inv["ssh"]["known_hosts"] = str(known_hosts)
    inv["nodes"] = inv["nodes"][:4]
    path = tmp_path / "inventory.yaml"
    path.write_text(yaml.safe_dump(inv, sort_keys=False))
    return path


def exec_all(inventory: Path, cwd: Path):
    import subprocess
    import sys

    config = REPO / "configs" / "testbed-small.yaml"
    argv = [sys.executable, "-m", "launcher", "exec", "-c", str(config), "-i", str(inventory), "--all", "--"]
    return subprocess.run([*argv, "uname", "-n"], cwd=cwd, capture_output=True, text=True, timeout=120)


def test_exec_through_a_jump_host(testbed, tmp_path):
    result = exec_all(inventory_via_jump(testbed, tmp_path, testbed.known_hosts), tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    for name, _ in testbed.nodes[:4]:
        assert f"\n{name}\n" in f"\n{result.stdout}\n", result.stdout  # each node's own hostname


def test_an_unknown_jump_host_key_is_refused(testbed, tmp_path):
    jump = testbed.nodes[0][1]
    known = tmp_path / "known_hosts"
    lines = testbed.known_hosts.read_text().splitlines()
    known.write_text("".join(line + "\n" for line in lines if not line.split()[0].split(",")[0].endswith(jump)))
    assert len(known.read_text().splitlines()) < len(lines)
    result = exec_all(inventory_via_jump(testbed, tmp_path, known), tmp_path)
    assert result.returncode != 0
    text = result.stdout + result.stderr
    # The other nodes are refused because the jump host on the way is unknown, and say so.
    assert f"via jump host root@{jump}" in text and "not found in known_hosts" in text, text
    assert "Traceback" not in text


def test_a_proxyjump_from_ssh_config_is_used_and_its_key_checked(testbed, tmp_path):
    """fabric's own ProxyJump hop would accept any jump host key; the launcher opens that hop itself."""
    import os
    import subprocess
    import sys

    jump = testbed.nodes[0][1]
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    others = " ".join(address for _, address in testbed.nodes[1:4])
    (home / ".ssh" / "config").write_text(f"Host {others}\n    ProxyJump root@{jump}\n")
    known = tmp_path / "known_hosts"
    lines = testbed.known_hosts.read_text().splitlines()
    known.write_text("".join(line + "\n" for line in lines if not line.split()[0].split(",")[0].endswith(jump)))
    inv = yaml.safe_load(testbed.inventory.read_text())
    inv["ssh"]["known_hosts"] = str(known)
    inv["nodes"] = inv["nodes"][:4]
    inventory = tmp_path / "inventory.yaml"
    inventory.write_text(yaml.safe_dump(inv, sort_keys=False))
    config = REPO / "configs" / "testbed-small.yaml"
    argv = [sys.executable, "-m", "launcher", "exec", "-c", str(config), "-i", str(inventory), "--all", "--"]
    result = subprocess.run(
        [*argv, "uname", "-n"],
        cwd=tmp_path,
        env={**os.environ, "HOME": str(home)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    text = result.stdout + result.stderr
    assert result.returncode != 0 and "Traceback" not in text
    # nodes 1-3 only through the jump host, whose key is unknown; node 0 (the jump host) directly
    assert text.count(f"via jump host root@{jump}") == 3 and "not found in known_hosts" in text, text
    (node0,) = [line for line in text.splitlines() if line.startswith("node 0 ") and "host key unknown" in line]
    assert "via jump host" not in node0, text
