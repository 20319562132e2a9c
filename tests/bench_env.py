"""The AIPerf environment `launcher bench` runs its client and plot in (scripts/bench-env builds it once,
cached under .cache/bench-env/): a session fixture for the tests that need it. Import it into a test module:

    from tests.bench_env import bench_env  # noqa: F401
"""

from __future__ import annotations

import functools
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import REPO

BUILD_TIMEOUT = 1800  # seconds: a cold build downloads about 200 MB


@functools.cache
def bench_env_bin() -> Path:
    done = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "bench-env")],
        stdout=subprocess.PIPE,
        text=True,
        timeout=BUILD_TIMEOUT,
        check=True,
    )
    return Path(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="session")
def bench_env() -> Path:
    """bin/ of the AIPerf 0.13.0 + matplotlib environment (built here if missing; never skipped)."""
    return bench_env_bin()
