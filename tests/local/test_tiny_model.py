"""models/tiny: reproducible from scripts/make-tiny-model, self-consistent, and served by the real Dynamo frontend with
prefill + decode mockers on loopback (file discovery, no etcd/NATS)."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import unavailable
from tests.helpers import wait_for

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "models" / "tiny"
FILES = ["config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json"]


def test_make_tiny_model_reproduces_models_tiny(tmp_path: Path) -> None:
    out = tmp_path / "tiny"
    proc = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "make-tiny-model"), str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in out.iterdir()) == FILES
    assert sorted(p.name for p in TINY.iterdir()) == FILES
    for name in FILES:
        assert (out / name).read_bytes() == (TINY / name).read_bytes(), f"{name} differs from models/tiny/{name}"


def test_tiny_model_is_consistent() -> None:
    import tokenizers  # in the project's `local` dependency group: always installed by `uv run`

    config = json.loads((TINY / "config.json").read_text())
    tok_config = json.loads((TINY / "tokenizer_config.json").read_text())
    tok = tokenizers.Tokenizer.from_file(str(TINY / "tokenizer.json"))
    assert config["model_type"] == "llama"
    assert (config["hidden_size"], config["num_hidden_layers"], config["num_attention_heads"]) == (64, 2, 4)
    assert config["num_key_value_heads"] == 4 and config["max_position_embeddings"] == 4096
    assert config["vocab_size"] == tok.get_vocab_size(with_added_tokens=True)
    # The Dynamo mocker answers with ids in [1000, 2000) whatever the model (sampled in the test below).
    assert config["vocab_size"] >= 2000
    assert all(tok.decode([i]).strip() for i in range(1000, 2000)), "every id the mocker emits must decode to text"
    assert tok.token_to_id(tok_config["bos_token"]) == config["bos_token_id"]
    assert tok.token_to_id(tok_config["eos_token"]) == config["eos_token_id"]
    assert "messages" in tok_config["chat_template"]
    text = "Hello, how are you? ünïcödé 123"
    assert tok.decode(tok.encode(text).ids) == text
    assert sum(p.stat().st_size for p in TINY.iterdir()) < 64 * 1024


def _free_ports(n: int) -> list[int]:
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _get(url: str, data: dict | None = None, timeout: float = 5) -> tuple[int, str]:
    req = urllib.request.Request(url, data=json.dumps(data).encode() if data is not None else None)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")
    except OSError as exc:
        return 0, str(exc)


@pytest.mark.slow
def test_frontend_and_mockers_serve_tiny_model(tmp_path: Path) -> None:
    if importlib.util.find_spec("dynamo") is None:
        # `uv sync` installs it; in CI its absence is a broken set-up, not a reason to skip
        unavailable("ai-dynamo is not installed")
    http_port, bootstrap = _free_ports(2)
    env = dict(
        os.environ,
        HF_HUB_OFFLINE="1",
        DYN_TCP_RPC_HOST="127.0.0.1",
        DYN_TCP_RESPONSE_STREAM_HOST="127.0.0.1",
        DYN_EVENT_PLANE_HOST="127.0.0.1",
        DYN_SYSTEM_HOST="127.0.0.1",
        DYN_DISCOVERY_BACKEND="file",
        DYN_FILE_KV=str(tmp_path / "kv"),
    )
    mocker = [
        sys.executable,
        "-m",
        "dynamo.mocker",
        "--model-path",
        str(TINY),
        "--model-name",
        "tiny",
        "--speedup-ratio",
        "10",
    ]
    commands = {
        "frontend": [
            sys.executable,
            "-m",
            "dynamo.frontend",
            "--http-host",
            "127.0.0.1",
            "--http-port",
            str(http_port),
        ],
        "prefill": [*mocker, "--disaggregation-mode", "prefill", "--bootstrap-ports", str(bootstrap)],
        "decode": [*mocker, "--disaggregation-mode", "decode"],
    }
    procs: dict[str, subprocess.Popen] = {}
    base = f"http://127.0.0.1:{http_port}"
    try:
        for name, cmd in commands.items():
            with open(tmp_path / f"{name}.log", "wb") as log:
                procs[name] = subprocess.Popen(
                    cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
                )
        deadline = time.monotonic() + 90
        models = ""
        while time.monotonic() < deadline:
            for name, proc in procs.items():
                assert proc.poll() is None, f"{name} exited: {(tmp_path / f'{name}.log').read_text()[-3000:]}"
            status, models = _get(f"{base}/v1/models")
            if status == 200 and '"tiny"' in models:
                break
            time.sleep(0.5)
        assert '"tiny"' in models, f"model never listed: {models}"
        import tokenizers

        tok = tokenizers.Tokenizer.from_file(str(TINY / "tokenizer.json"))
        vocab_size = json.loads((TINY / "config.json").read_text())["vocab_size"]
        sampled: list[int] = []
        requests: list[str] = []
        for _ in range(8):  # 512 token ids: the mocker's range, sampled against this model's vocabulary
            body = {
                "model": "tiny",
                "messages": [{"role": "user", "content": "hi"}],
                "max_tokens": 64,
                "nvext": {"extra_fields": ["completion_token_ids"]},
            }
            status, text = _get(f"{base}/v1/chat/completions", body, timeout=60)
            assert status == 200, text
            answer = json.loads(text)
            assert answer["usage"]["completion_tokens"] == 64, answer
            assert answer["choices"][0]["finish_reason"] == "length", answer
            content = answer["choices"][0]["message"]["content"]
            # What a user sees: words, not an empty answer.
            assert isinstance(content, str) and len(content.split()) >= 32, answer
            sampled += answer["nvext"]["completion_token_ids"]
            requests.append(answer["id"].removeprefix("chatcmpl-"))
        assert len(sampled) == 512
        # Each request crossed the prefill and the decode mocker: both logged its id.
        for role in ("prefill", "decode"):
            log = tmp_path / f"{role}.log"
            wait_for(
                lambda log=log: all(r in log.read_text(errors="replace") for r in requests),
                30,
                what=f"every request id in the {role} mocker's log",
            )
        outside = sorted({i for i in sampled if i >= vocab_size})
        assert not outside, (
            f"the mocker emits ids beyond models/tiny's {vocab_size}: {outside[:10]} (re-run make-tiny-model)"
        )
        silent = sorted({i for i in sampled if not tok.decode([i]).strip()})
        assert not silent, f"ids that decode to no text: {silent[:10]}"
        status, text = _get(f"{base}/v1/completions", {"model": "tiny", "prompt": "hi", "max_tokens": 16}, timeout=60)
        assert status == 200, text
        assert len(json.loads(text)["choices"][0]["text"].split()) >= 8, text
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in procs.values():
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=15)
