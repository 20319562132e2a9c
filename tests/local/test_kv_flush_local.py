"""The Dynamo KV-cache flush (launcher/remote/kv_flush.py, which `launcher bench` runs before each
concurrency) against workers on the real Dynamo runtime, on this machine.

Real: etcd and NATS (the project environment's binaries, on this run's ports), Dynamo 1.6.1's
DistributedRuntime on both sides (discovery through etcd, requests over its TCP plane), the Dynamo frontend
whose /health lists the workers' endpoints, kv_flush.py fed to `python3 -` with the endpoint paths as
arguments and the workers' ETCD_ENDPOINTS/NATS_SERVER as bench runs it, and bench's own flush_endpoints()
and flush() (bench_recipe) through a process-runtime plan of this machine.

The test's own: the worker (WORKER below), a few lines that serve NAMESPACE.COMPONENT.clear_kv_blocks as
dynamo.sglang's init_llm registers it, answering what its handler (handler_base.clear_kv_blocks) yields:
one {"status": "success"|"error", "message": ...}. The real dynamo.sglang / dynamo.vllm workers need GPUs
and the mocker registers no clear_kv_blocks. Each worker appends its instance id to a file per call, so the
test sees that the flush reached every instance, not only that an answer came back."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import urllib.request
from pathlib import Path

import pytest
import yaml

from launcher.config.load import load as load_config
from launcher.operations import bench_recipe
from launcher.plan.build import build as build_plan
from launcher.plan.engines.base import dynamo_env
from launcher.remote import program as remote_program
from tests.helpers import REPO, connected_target, free_port, fresh_env, listening, wait_for

pytestmark = pytest.mark.slow

BIN = REPO / ".venv" / "bin"
NAMESPACE = "kvtest"
FLUSHED = f"{NAMESPACE}.backend.clear_kv_blocks"
REFUSED = f"{NAMESPACE}.refusing.clear_kv_blocks"

WORKER = """\
import asyncio, sys
from dynamo.runtime import DistributedRuntime

ANSWERS = {
    "success": {"status": "success", "message": "KV cache cleared"},
    "error": {"status": "error", "message": "Cannot clear KV cache while requests are active"},
}


async def main(path, answer, calls):
    runtime = DistributedRuntime(asyncio.get_running_loop(), "etcd", "tcp")
    endpoint = runtime.endpoint(path)

    async def clear_kv_blocks(request=None):
        with open(calls, "a") as f:
            f.write(f"{endpoint.connection_id()}\\n")
        yield ANSWERS[answer]

    await endpoint.serve_endpoint(clear_kv_blocks)


asyncio.run(main(*sys.argv[1:]))
"""


class Stack:
    """etcd, NATS (the project environment's binaries, on this run's ports), the frontend and the test's
    workers, as processes of this test; stop() ends each by its pid."""

    def __init__(self, work: Path):
        self.work, self.procs, self.logs = work, [], []
        self.etcd, self.nats, self.http = free_port(), free_port(), free_port()
        # what the launcher gives a Dynamo process on a node (here 127.0.0.1): where etcd and NATS are, and
        # the address it advertises (else Dynamo picks an interface's)
        self.env = dynamo_env("127.0.0.1", f"http://127.0.0.1:{self.etcd}", f"nats://127.0.0.1:{self.nats}")
        (work / "worker.py").write_text(WORKER)
        (work / "calls").mkdir()

    def spawn(self, name: str, argv: list[str]) -> None:
        log = open(self.work / f"{name}.log", "w")  # noqa: SIM115 (closed by stop())
        self.logs.append(log)
        env = {**fresh_env(), **self.env, "PATH": f"{BIN}:{os.environ['PATH']}"}
        self.procs.append(subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=self.work))

    def services(self) -> None:
        peer = f"http://127.0.0.1:{free_port()}"
        self.spawn("etcd", ["etcd", "--name", "kv", "--data-dir", str(self.work / "etcd"),
                            "--listen-client-urls", self.env["ETCD_ENDPOINTS"],
                            "--advertise-client-urls", self.env["ETCD_ENDPOINTS"], "--listen-peer-urls", peer,
                            "--initial-advertise-peer-urls", peer, "--initial-cluster", f"kv={peer}"])  # fmt: skip
        self.spawn("nats", ["nats-server", "-js", "-a", "127.0.0.1", "-p", str(self.nats),
                            "-sd", str(self.work / "nats")])  # fmt: skip
        wait_for(lambda: listening(self.etcd) and listening(self.nats), 30, what="etcd and NATS to listen")

    def frontend(self) -> None:
        """The real Dynamo frontend (the launcher's argv for it): its /health lists what the workers serve."""
        argv = ["python3", "-m", "dynamo.frontend", "--http-host", "127.0.0.1", "--http-port", str(self.http)]
        self.spawn("frontend", argv)

    def listed(self) -> list[str]:
        """The endpoints the frontend's /health lists ([] until it answers)."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.http}/health", timeout=5) as response:
                return json.loads(response.read()).get("endpoints", [])
        except OSError:
            return []

    def worker(self, path: str, answer: str) -> None:
        component = path.split(".")[1]
        self.spawn(f"{component}-{len(self.procs)}",
                   ["python3", str(self.work / "worker.py"), path, answer, str(self.calls(component))])  # fmt: skip

    def calls(self, component: str) -> Path:
        return self.work / "calls" / component

    def registered(self, path: str) -> int:
        """How many instances of path etcd lists (Dynamo keeps one key per instance under v1/instances/)."""
        prefix = "v1/instances/" + path.replace(".", "/") + "/"
        body = {"key": b64(prefix), "range_end": b64(prefix[:-1] + chr(ord(prefix[-1]) + 1)), "keys_only": True}
        request = urllib.request.Request(f"{self.env['ETCD_ENDPOINTS']}/v3/kv/range", json.dumps(body).encode())
        with urllib.request.urlopen(request, timeout=5) as response:
            return int(json.loads(response.read()).get("count", 0))

    def running(self) -> bool:
        """True while every process runs; a worker that exited fails the test with its log."""
        for proc in self.procs:
            if proc.poll() is not None:
                logs = "\n".join(f.read_text()[-2000:] for f in self.work.glob("*.log"))
                raise AssertionError(f"{proc.args[:2]} exited {proc.returncode}:\n{logs}")
        return True

    def stop(self) -> None:
        for proc in reversed(self.procs):
            proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        for log in self.logs:
            log.close()


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """Two workers of FLUSHED answering success and one of REFUSED answering an error, registered, and the
    frontend that lists them."""
    s = Stack(tmp_path_factory.mktemp("kv-flush"))
    try:
        s.services()
        s.worker(FLUSHED, "success")
        s.worker(FLUSHED, "success")
        s.worker(REFUSED, "error")
        s.frontend()
        wait_for(lambda: s.running() and s.registered(FLUSHED) == 2 and s.registered(REFUSED) == 1, 60,
                 what="3 workers in etcd")  # fmt: skip
        wait_for(lambda: s.running() and len(s.listed()) == 2, 60, what="the frontend to list both endpoints")
        yield s
    finally:
        s.stop()


def kv_flush(env: dict[str, str], *paths: str) -> tuple[int, dict]:
    """kv_flush.py as bench runs it on a worker's node: the program on stdin, the paths as arguments."""
    done = subprocess.run(
        [str(BIN / "python3"), "-", *paths],
        input=remote_program("kv_flush"),  # as bench sends it (launcher.remote.program)
        env={**fresh_env(), **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    assert len(lines) == 1, done.stdout + done.stderr
    return done.returncode, json.loads(lines[0])


def test_both_worker_instances_are_flushed(stack):
    before = len(stack.calls("backend").read_text().split()) if stack.calls("backend").exists() else 0
    code, answer = kv_flush(stack.env, FLUSHED)
    assert code == 0 and answer["ok"] is True and answer["error"] is None, answer
    replies = answer["instances"][FLUSHED]
    assert len(replies) == 2, answer
    assert all(reply == [{"status": "success", "message": "KV cache cleared"}] for reply in replies.values())
    # each instance the answer names was called, once
    assert sorted(stack.calls("backend").read_text().split()[before:]) == sorted(replies), replies


def test_a_worker_that_answers_an_error_is_not_ok(stack):
    code, answer = kv_flush(stack.env, FLUSHED, REFUSED)
    assert code == 1 and answer["ok"] is False, answer
    ((instance, reply),) = answer["instances"][REFUSED].items()
    assert reply == [{"status": "error", "message": "Cannot clear KV cache while requests are active"}]
    assert stack.calls("refusing").read_text().split()[-1] == instance  # the worker that answered was asked
    assert len(answer["instances"][FLUSHED]) == 2, answer


def worker_plan(stack: Stack, tmp_path: Path):
    """The plan of a process-runtime file with the stack's frontend (its port) and, as its first group, the
    `backend` workers with their ETCD_ENDPOINTS/NATS_SERVER: what bench's flush_endpoints() and flush() read
    (the frontend's /health; where a worker runs, to run kv_flush.py there)."""
    data = {
        "deployment": "kv-flush",
        "runtime": "process",
        "python_env": str(REPO / ".venv"),
        "state_dir": str(tmp_path / "state"),
        "gpus_per_node": 0,
        "nodes": [{"name": "local", "address": "127.0.0.1"}],
        "services": {"etcd": {"enabled": False}, "nats": {"enabled": False}, "frontend": {"port": stack.http}},
        "groups": {"backend": {"engine": "command", "nodes": ["local"], "args": ["python3", "worker.py"],
                               "env": stack.env}},
    }  # fmt: skip
    path = tmp_path / "deploy.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return build_plan(load_config(path, environ={}))


def test_bench_flush_through_the_workers_node(stack, tmp_path):
    """What bench does before each concurrency: flush_endpoints() finds both clear_kv_blocks endpoints in the
    frontend's /health, flush() clears the workers' caches and says so in the line bench prints; a worker's
    error answer is bench's error (exit 1) naming the endpoints and the reply."""
    before = stack.calls("backend").read_text().split()
    with connected_target(worker_plan(stack, tmp_path)) as target:
        assert bench_recipe.flush_endpoints(target) == ("dynamo", [FLUSHED, REFUSED])
        assert bench_recipe.flush(target, "dynamo", [FLUSHED]) == "clear_kv_blocks on 2 worker instance(s)"
        called = stack.calls("backend").read_text().split()[len(before) :]
        assert len(called) == 2 and len(set(called)) == 2, called  # each instance, once
        with pytest.raises(bench_recipe.BenchError) as refused:
            bench_recipe.flush(target, "dynamo", [FLUSHED, REFUSED])
    message = str(refused.value)
    assert message.startswith(f"KV-cache flush through {FLUSHED}, {REFUSED} failed: "), message
    assert "Cannot clear KV cache while requests are active" in message and refused.value.exit_code == 1
