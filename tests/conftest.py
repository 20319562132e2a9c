"""Shared fixtures. `testbed`: the multi-node testbed of scripts/testbed, brought up once per session.

Each testbed node is a network namespace with its own sshd and dockerd (see scripts/testbed). The fixture runs
`scripts/testbed up N` once (N: 5, grown to 13 for the files that need it; LAUNCHER_TESTBED_NODES caps it) and
`scripts/testbed down` at the end of the session (LAUNCHER_TESTBED_KEEP=1 leaves it up for debugging). Without
root or network namespaces the tests that use it are skipped, except under CI=true, where that is a failure.
"""

from __future__ import annotations

import dataclasses
import importlib.machinery
import importlib.util
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.helpers import RUN, STATE_DIR, suite_chosen, user_set

REPO = Path(__file__).resolve().parent.parent
TESTBED_SCRIPT = REPO / "scripts" / "testbed"
# The tests' own look at a node (their OpenSSH, a fresh connection each time, some 500 a suite). Its default key
# exchange here, sntrup761x25519 (Debian's OpenSSH 9.2), costs 0.185 CPU-s of this machine per connection against
# 0.05 with curve25519 (10 connections each, /proc/stat), 70 CPU-s a suite: what the tests check is on the node, not
# in the key exchange. The launcher's own connections (paramiko) are untouched.
SSH_OPTIONS = ["-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes", "-o", "ConnectTimeout=5",
               "-o", "KexAlgorithms=curve25519-sha256"]  # fmt: skip


def checkout_testbed_names(run: str = "") -> dict[str, str]:
    """scripts/testbed's defaults for this checkout (TESTBED_PREFIX, _SUBNET, _BRIDGE), from its own code;
    RUN (a test process, e.g. "gw1") has names of its own."""
    loader = importlib.machinery.SourceFileLoader("testbed_script", str(TESTBED_SCRIPT))
    module = importlib.util.module_from_spec(importlib.util.spec_from_loader(loader.name, loader))
    loader.exec_module(module)
    return module.checkout_names(run=run)


TESTBED_NAME_KEYS = ("TESTBED_PREFIX", "TESTBED_SUBNET", "TESTBED_BRIDGE", "TESTBED_DIR", "TESTBED_STATE_DIR")


def suite_names() -> dict[str, str]:
    """Every name a test process shares with the machine, its own (two checkouts' suites run at once, and
    the processes of one suite side by side; a user's deployment in /var/tmp/launcher is left alone): the
    testbed's (scripts/testbed and the tests that read them agree) and the state dir of
    configs/testbed-*.yaml (tests.helpers)."""
    names = {**checkout_testbed_names(RUN), "TESTBED_STATE_DIR": STATE_DIR}
    if RUN:
        names["TESTBED_DIR"] = str(REPO / f".testbed-{RUN}")
    return names


_chosen = {key: value for key, value in suite_names().items() if not user_set(key)}
os.environ.update(_chosen)
os.environ["LAUNCHER_TEST_SUITE_NAMES"] = ",".join(sorted(suite_chosen() | _chosen.keys()))


def in_ci() -> bool:
    """The one rule for "this is CI" (CI=true, 1 or yes): there a missing environment fails, never skips."""
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def unavailable(reason: str) -> None:
    """pytest.skip (locally) or pytest.fail (in CI) for a test whose environment is missing here."""
    if in_ci():
        pytest.fail(f"required in CI but unavailable: {reason}", pytrace=False)
    pytest.skip(reason)


def testbed_unavailable_reason() -> str | None:
    """Why the testbed cannot run on this machine, or None."""
    if not sys.platform.startswith("linux"):
        return "the testbed needs Linux"
    if os.geteuid() != 0:
        return "the testbed needs root (network namespaces, one sshd and one dockerd per node)"
    if not Path("/proc/self/ns/net").exists():
        return "this kernel has no network namespaces"
    unshare = shutil.which("unshare")
    if unshare:
        probe = subprocess.run([unshare, "--net", "true"], capture_output=True, text=True, timeout=30)
        if probe.returncode != 0:
            return f"cannot create a network namespace here: {probe.stderr.strip()}"
    return None


def require_testbed_capable() -> None:
    """pytest.skip (locally) or pytest.fail (CI=true) when the testbed cannot run here."""
    reason = testbed_unavailable_reason()
    if reason is None:
        return
    if in_ci():
        pytest.fail(f"testbed required in CI but unavailable: {reason}", pytrace=False)
    pytest.skip(reason)


@dataclasses.dataclass
class Testbed:
    """A running testbed: where it lives, its nodes, and helpers to reach them."""

    __test__ = False  # not a test class, despite the name

    repo: Path
    dir: Path
    inventory: Path
    key: Path
    known_hosts: Path
    nodes: list[tuple[str, str]]  # (name, address)
    vars: dict[str, str]  # the inventory's `vars:` (TESTBED_IMAGE, TESTBED_PYTHON_HOME, TESTBED_VENV, TESTBED_REPO)
    env: dict[str, str]  # environment for scripts/testbed (TESTBED_* overrides for a second testbed)
    up_seconds: float = 0.0  # bring-up time the script reported
    up_output: str = ""

    def ssh_command(self, i: int, cmd: str, known_hosts: Path | None = None) -> list[str]:
        return [
            "ssh",
            "-F", "/dev/null",
            "-i", str(self.key),
            "-o", "IdentitiesOnly=yes",
            "-o", f"UserKnownHostsFile={known_hosts or self.known_hosts}",
            "-o", "GlobalKnownHostsFile=/dev/null",
            *SSH_OPTIONS,
            f"root@{self.nodes[i][1]}",
            cmd,
        ]  # fmt: skip

    def ssh(self, i: int, cmd: str, timeout: float = 120, check: bool = False) -> subprocess.CompletedProcess:
        """Run `cmd` on node i with OpenSSH (host key checked against the testbed's known_hosts)."""
        return subprocess.run(self.ssh_command(i, cmd), capture_output=True, text=True, timeout=timeout, check=check)

    def run(self, verb: str, *args: str, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess:
        """Call scripts/testbed (e.g. run("cut", "3"), run("heal", "3"), run("status", "--json"))."""
        proc = subprocess.run(
            [sys.executable, str(TESTBED_SCRIPT), verb, *map(str, args)],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=self.env,
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"scripts/testbed {verb} {' '.join(map(str, args))} failed ({proc.returncode}):\n"
                                 f"{proc.stdout}{proc.stderr}")  # fmt: skip
        return proc

    def docker_run(self, *args: str, detach: bool = False) -> str:
        """`docker run` command line (--rm, or -d) for a node container, with /usr, python and venv mounted as
        deployments do, and PATH leading to the venv."""
        v = self.vars
        mounts = [
            "-v", "/usr:/usr:ro",
            "-v", f"{v['TESTBED_PYTHON_HOME']}:{v['TESTBED_PYTHON_HOME']}:ro",
            "-v", f"{v['TESTBED_VENV']}:{v['TESTBED_VENV']}:ro",
            "-e", f"PATH={v['TESTBED_VENV']}/bin:/usr/bin:/bin",
        ]  # fmt: skip
        return shlex.join(["docker", "run", "-d" if detach else "--rm", "--network", "host", *mounts, *args])


def env_for_testbed(**overrides: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(overrides)
    return env


def bring_up(n: int, env: dict[str, str], timeout: float = 1200) -> Testbed:
    """`scripts/testbed up n` with env; returns the Testbed read back from its inventory."""
    t0 = time.monotonic()
    proc = subprocess.run(
        [sys.executable, str(TESTBED_SCRIPT), "up", str(n)], capture_output=True, text=True, timeout=timeout, env=env
    )
    wall = time.monotonic() - t0
    if proc.returncode != 0:
        pytest.fail(f"scripts/testbed up {n} failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}", pytrace=False)
    state_dir = Path(env.get("TESTBED_DIR") or REPO / ".testbed")
    inventory = state_dir / "inventory.yaml"
    inv = yaml.safe_load(inventory.read_text())
    m = re.search(r"(\d+) nodes up in ([\d.]+) s", proc.stdout)
    return Testbed(
        repo=REPO,
        dir=state_dir,
        inventory=inventory,
        key=Path(inv["ssh"]["key"]),
        known_hosts=Path(inv["ssh"]["known_hosts"]),
        nodes=[(node["name"], node["address"]) for node in inv["nodes"]],
        vars={k: str(v) for k, v in inv["vars"].items()},
        env=env,
        up_seconds=float(m.group(2)) if m else wall,
        up_output=proc.stdout + proc.stderr,
    )


# The session's testbed starts with the nodes most files need and grows, once, for a module that declares
# more (`TESTBED_NODES = 13` at its top). The whole suite runs the files that need 13 in one process
# (BIG_TESTBED_FILES below), so its three processes run one testbed of 13 nodes and two of 5 instead of three
# of 13: 16 nodes' dockerd, containerd and sshd fewer to start and keep idle.
SMALL_TESTBED = 5


def max_testbed_nodes() -> int:
    """The most nodes a testbed of this run may have (LAUNCHER_TESTBED_NODES, default 13)."""
    return int(os.environ.get("LAUNCHER_TESTBED_NODES", "13"))


@pytest.fixture(scope="session")
def session_testbed():
    """The session's testbed: SMALL_TESTBED nodes (fewer where LAUNCHER_TESTBED_NODES says so), grown by
    `testbed` for a module that needs more, torn down at the end."""
    require_testbed_capable()
    tb = bring_up(min(max_testbed_nodes(), SMALL_TESTBED), env_for_testbed())
    try:
        yield tb
    finally:
        if os.environ.get("LAUNCHER_TESTBED_KEEP") != "1":
            down = tb.run("down", check=False)
            if down.returncode != 0:
                pytest.fail(f"scripts/testbed down failed:\n{down.stdout}{down.stderr}", pytrace=False)


def grow_testbed(tb: Testbed, n: int) -> Testbed:
    """TB with at least N nodes (at most max_testbed_nodes()): `scripts/testbed up N` adds the missing ones and
    rewrites the inventory; TB's node list is updated in place, so every holder of it sees them."""
    n = min(n, max_testbed_nodes())
    if len(tb.nodes) < n:
        grown = bring_up(n, tb.env)
        tb.nodes[:] = grown.nodes
        tb.up_seconds, tb.up_output = grown.up_seconds, grown.up_output
    return tb


@pytest.fixture(scope="module")
def testbed(session_testbed, request):
    """The session's testbed, with as many nodes as the module declares (TESTBED_NODES, else SMALL_TESTBED)."""
    return grow_testbed(session_testbed, getattr(request.module, "TESTBED_NODES", SMALL_TESTBED))


FABRIC_ENV = REPO / "scripts" / "fabric-env"


@pytest.fixture(scope="session")
def fabric_python() -> Path:
    """The CPU torch environment the fabric check runs with where an image has none (scripts/fabric-env:
    built once, cached under .cache/fabric-env/; CI builds it here, never skipped)."""
    done = subprocess.run(
        [sys.executable, str(FABRIC_ENV)], stdout=subprocess.PIPE, text=True, timeout=1200, check=True
    )
    return Path(done.stdout.strip().splitlines()[-1])


# What makes a test heavy, by the fixtures it uses (directly or through another fixture): a built
# environment or the testbed. Such a test carries the marker even where its file forgot it, so that
# `-m "not slow and not testbed"` is a run of pure tests only.
HEAVY_FIXTURES = {
    "testbed": "testbed",
    "session_testbed": "testbed",
    "bench_env": "slow",
    "fabric_python": "slow",
    "parser_env": "slow",
    "vllm_parser_env": "slow",
}


def pytest_runtest_teardown(item, nextitem):
    # The session's testbed-104 goes down after its last user, not at the end of the session: the testbed
    # tests after it need the nodes' ports and containers free.
    uses = "testbed_104" in getattr(item, "fixturenames", ())
    if uses and (nextitem is None or "testbed_104" not in getattr(nextitem, "fixturenames", ())):
        from tests.testbed_104 import take_down

        take_down()


# How many processes run the whole suite (`-n auto` in pyproject.toml): the testbed tests mostly wait on
# nodes, timeouts and services, so three processes on 2 cores finish in about half the time of one. A run
# of named files, or one with testbed names of the user's own (one testbed only), runs in this process.
SUITE_PROCESSES = 3


def pytest_xdist_auto_num_workers(config) -> int:
    if any(user_set(key) for key in TESTBED_NAME_KEYS):
        return 0
    whole = config.args_source == pytest.Config.ArgsSource.TESTPATHS or all(
        Path(arg).resolve() == REPO / "tests" for arg in config.args
    )
    return int(os.environ.get("LAUNCHER_TEST_PROCESSES", SUITE_PROCESSES)) if whole else 0


# The files that use the session's testbed-104 deployment (tests/testbed_104.py): they run in one process,
# one after another (a test of another file that uses it fails, naming this list).
TESTBED_104_FILES = frozenset({"tests/testbed/test_bench_testbed.py", "tests/testbed/test_observe_testbed.py"})
# The files that need a testbed of 13 nodes (TESTBED_NODES = 13): one process runs them all, one after
# another, so that only its testbed grows to 13 (SMALL_TESTBED above).
BIG_TESTBED_FILES = TESTBED_104_FILES | {"tests/testbed/test_e2e_testbed.py", "tests/testbed/test_fabric_testbed.py"}


def suite_file(item) -> str:
    return item.path.relative_to(REPO).as_posix()


def pytest_xdist_make_scheduler(config, log):
    """Each file's tests in one process (they share its module fixtures), and the files of BIG_TESTBED_FILES
    in one; the files in the order of the collection (conftest puts the longest tiers first)."""
    from xdist.scheduler import LoadFileScheduling

    class FilesAndSharedDeployments(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            path = nodeid.split("::", 1)[0]
            return "testbed-13" if path in BIG_TESTBED_FILES else path

    return FilesAndSharedDeployments(config, log)


def tier(item) -> int:
    """Testbed tests first (the longest files start first, so the processes finish at about the same time),
    then the other heavy ones and the pure ones, interleaved (file_order)."""
    return 0 if item.get_closest_marker("testbed") else 1 if item.get_closest_marker("slow") else 2


# The longest files of the local and pure tiers (seconds in the fresh-clone CI runs of 2026-12-07), which start
# first in their tier: a long file begun near the end leaves the other processes idle while it finishes.
LONG_FILES = (
    "tests/local/test_roll_local.py",  # ~90 s, mostly waiting on mockers to start
    "tests/local/test_promises_local.py",  # ~75 s
    "tests/local/test_drain_local.py",  # ~65 s
    "tests/local/test_bench_local.py",  # ~50 s
    "tests/local/test_real_parsers.py",
    "tests/local/test_fabric_program.py",
    "tests/local/test_scale_local.py",
    "tests/local/test_watch_hung_local.py",
    "tests/pure/test_fuzz_cli.py",  # ~55 s of computing
    "tests/pure/test_cli_fresh.py",
    "tests/pure/test_fuzz_config.py",
    "tests/pure/test_hostile_files.py",
    "tests/pure/test_import_fuzz.py",
)


def file_order(first_tier: dict[str, int]) -> dict[str, int]:
    """Each file's place: the testbed files first, in their order; then a local file, a pure file, a local file,
    and so on. The local files mostly wait (on streams, rolls, timeouts) and the pure ones only compute: run
    side by side they keep both cores busy, where the local tier alone left about 130 CPU-s idle in a CI run
    (three processes all waiting at once). In each tier the LONG_FILES first; the many short pure files left
    over end the run evenly."""

    def longest_first(files: list[str]) -> list[str]:
        return sorted(files, key=lambda f: LONG_FILES.index(f) if f in LONG_FILES else len(LONG_FILES))

    testbed = [f for f, t in first_tier.items() if t == 0]
    heavy, pure = (longest_first([f for f, t in first_tier.items() if t == k]) for k in (1, 2))
    mixed = [f for pair in zip(heavy, pure, strict=False) for f in pair]
    mixed += heavy[len(pure) :] + pure[len(heavy) :]
    return {f: i for i, f in enumerate(testbed + mixed)}


def pytest_collection_modifyitems(config, items):
    # The users of the session's testbed-104 (tests/testbed_104.py) run one after another, from where the
    # first of them is: another module that brings testbed-104 up and down itself never comes in between.
    shared = [item for item in items if "testbed_104" in getattr(item, "fixturenames", ())]
    if shared:
        first, ids = items.index(shared[0]), {id(item) for item in shared}
        rest = [item for item in items if id(item) not in ids]
        items[:] = rest[:first] + shared + rest[first:]
    for item in items:
        for fixture in HEAVY_FIXTURES.keys() & set(getattr(item, "fixturenames", ())):
            if not item.get_closest_marker(HEAVY_FIXTURES[fixture]):
                item.add_marker(HEAVY_FIXTURES[fixture])
    for module in {item.module for item in items if getattr(item.module, "TESTBED_NODES", 0) > SMALL_TESTBED}:
        file = Path(module.__file__).relative_to(REPO).as_posix()
        if file not in BIG_TESTBED_FILES:
            raise pytest.UsageError(f"{file} needs a testbed of {module.TESTBED_NODES}: add it to BIG_TESTBED_FILES")
    for item in shared:
        if suite_file(item) not in TESTBED_104_FILES:
            raise pytest.UsageError(f"{suite_file(item)} uses testbed_104: add it to TESTBED_104_FILES (conftest)")
    if os.environ.get("PYTEST_XDIST_WORKER"):  # the order the processes take the files in
        files = [suite_file(item) for item in items]
        first_tier: dict[str, int] = {}
        for item, file in zip(items, files, strict=True):
            first_tier[file] = min(first_tier.get(file, 2), tier(item))
        place = file_order(first_tier)
        order = {id(item): place[file] for item, file in zip(items, files, strict=True)}
        items.sort(key=lambda item: order[id(item)])  # stable: a file's own order is kept


# Where the suite's time goes, per process: with LAUNCHER_TEST_TIMELINE set (`.ci/run` sets it), each test's
# process, start and end (epoch seconds) and id are appended to that file, one line each.
_test_started: dict[str, float] = {}


def pytest_runtest_logstart(nodeid, location):
    _test_started[nodeid] = time.time()


def pytest_runtest_logfinish(nodeid, location):
    timeline = os.environ.get("LAUNCHER_TEST_TIMELINE")
    if timeline and nodeid in _test_started:
        worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
        with open(timeline, "a") as out:  # one short write per line: O_APPEND keeps the processes' lines whole
            out.write(f"{worker}\t{_test_started.pop(nodeid):.1f}\t{time.time():.1f}\t{nodeid}\n")
