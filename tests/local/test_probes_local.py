"""Readiness probes against real processes on this machine (process runtime, no testbed).

The `log` probe is what `sglang` rank 0 uses before SGLang 0.5.1 (whose /health says 200 before the
warm-up): ready only once the log holds the "fired up" line.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from launcher.commands import down
from launcher.config.load import load as load_config
from launcher.operations.nodes import start
from launcher.operations.waiter import ServiceFailed, Waiter
from launcher.output.progress import Progress
from launcher.plan.build import build as build_plan
from launcher.plan.engines.sglang import FIRED_UP
from launcher.plan.types import Probe
from tests.helpers import connected_target, local_command_deployment

pytestmark = pytest.mark.slow


def local_plan(tmp_path: Path, script: str):
    path = local_command_deployment(tmp_path, "probe-local", "serve", script, timeout=6)
    p = build_plan(load_config(path, environ={}))
    (service,) = p.services
    service.probe = Probe(kind="log", expect={"line": FIRED_UP})
    return p, service


def run(tmp_path: Path, script: str) -> float:
    p, service = local_plan(tmp_path, script)
    with connected_target(p) as target:
        started = time.monotonic()
        try:
            start(target, [service], Progress(live=False))
            Waiter(target, Progress(live=False), [service]).run()
            return time.monotonic() - started
        finally:
            down.down(target)


def test_log_probe_passes_only_after_the_line(tmp_path):
    took = run(tmp_path, f"echo starting; sleep 2; echo 'INFO: {FIRED_UP}'; exec sleep 600")
    print(f"\nlog probe passed {took:.1f}s after start (line written at 2 s)")
    assert took >= 2.0


def test_log_probe_times_out_naming_the_line(tmp_path):
    with pytest.raises(ServiceFailed) as failed:
        run(tmp_path, "echo 'Uvicorn running'; exec sleep 600")
    assert f"its probe log line {FIRED_UP!r} has not passed" in str(failed.value)
