"""Clear the KV cache of every Dynamo worker that serves a `clear_kv_blocks` endpoint (Dynamo's SGLang
workers register `NAMESPACE.COMPONENT.clear_kv_blocks`, which flushes SGLang's cache when no request is
active), as seed 004's `utils/sgl_http_server.py` does for its `/flush_cache`.

Runs where a worker runs (inside the worker's image, or its python_env), with the worker's ETCD_ENDPOINTS
and NATS_SERVER, fed on stdin:

    python3 - dynamo.backend.clear_kv_blocks [dynamo.prefill.clear_kv_blocks ...]

Prints one JSON line: {"ok": bool, "instances": {ENDPOINT: {INSTANCE_ID: reply}}, "error": str|null}.
Standard library plus the image's Dynamo; imports nothing of the launcher.
"""

from __future__ import annotations

import asyncio
import json
import sys

WAIT_SECONDS = 20


async def flush(paths: list[str]) -> dict:
    from dynamo.runtime import DistributedRuntime

    runtime = DistributedRuntime(asyncio.get_running_loop(), "etcd", "tcp")
    out: dict = {"ok": True, "instances": {}, "error": None}
    try:
        for path in paths:
            client = await runtime.endpoint(path).client()
            await asyncio.wait_for(client.wait_for_instances(), WAIT_SECONDS)
            replies = {}
            for instance in client.instance_ids():
                chunks = []
                stream = await client.direct({}, instance)
                async for chunk in stream:
                    chunks.append(chunk.data() if hasattr(chunk, "data") else chunk)
                replies[str(instance)] = chunks
                if any(isinstance(c, dict) and c.get("status") == "error" for c in chunks):
                    out["ok"] = False
            out["instances"][path] = replies
    finally:
        runtime.shutdown()
    return out


def main(paths: list[str]) -> int:
    try:
        result = asyncio.run(flush(paths))
    except Exception as exc:  # one line for the launcher to show
        result = {"ok": False, "instances": {}, "error": f"{type(exc).__name__}: {exc}"}
    print(json.dumps(result, default=str))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
