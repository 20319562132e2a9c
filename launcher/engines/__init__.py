"""Engine adapters by name. Adding an engine: one module with an `ENGINE`, one line here."""

from __future__ import annotations

from launcher.engines import command, dynamo_sglang, dynamo_vllm, mocker, sglang
from launcher.engines.base import Engine

ENGINES: dict[str, Engine] = {e.ENGINE.name: e.ENGINE for e in (dynamo_sglang, dynamo_vllm, sglang, mocker, command)}


def get(name: str) -> Engine | None:
    return ENGINES.get(name)
