"""`watch`'s alert when it gives up: a line in the audit log always (the caller's), and a POST of a small
JSON document to the webhook the file names (watch.webhook_url_env, a declared secret).

The URL is a secret: it is never printed, logged or put on a command line; what is said of a failure is
redacted. The POST is bounded (WEBHOOK_TIMEOUT for the whole exchange, the answer read up to
ANSWER_LIMIT bytes); a failure is reported in one line and never ends `watch`.
"""

from __future__ import annotations

import socket
import ssl
from typing import Any
from urllib.parse import urlsplit

from launcher.plan.types import Plan
from launcher.transport import http

WEBHOOK_TIMEOUT = 5.0
ANSWER_LIMIT = 4096


def post(url: str, document: dict[str, Any], timeout: float = WEBHOOK_TIMEOUT) -> int:
    """POST DOCUMENT as JSON to URL (http or https) -> the HTTP status; OSError/ConnectionError/ValueError."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("not an http(s) URL")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")

    def open_socket() -> socket.socket:
        sock = socket.create_connection((parts.hostname, port), timeout=timeout)
        if parts.scheme == "https":
            return ssl.create_default_context().wrap_socket(sock, server_hostname=parts.hostname)
        return sock

    status, _ = http.request(open_socket, "POST", parts.hostname, port, path, document, timeout, ANSWER_LIMIT)
    return status


def webhook(plan: Plan, document: dict[str, Any]) -> str | None:
    """Send the alert to the file's webhook, if it names one -> what happened, in words (None: no webhook)."""
    name = plan.watch_webhook_env
    if name is None:
        return None
    url = plan.secrets.get(name, "")
    try:
        status = post(url, document, WEBHOOK_TIMEOUT)
    except Exception as exc:  # the user's endpoint failing is reported, never the end of watch
        return f"webhook ({name}) failed: {why(exc, url)}"
    return f"webhook ({name}) answered HTTP {status}" + ("" if 200 <= status < 300 else " (not a success)")


def why(exc: BaseException, url: str) -> str:
    """A failure in words that cannot hold the URL or a part of it (a token in its path, its host)."""
    if isinstance(exc, TimeoutError | socket.timeout) or "within" in str(exc):
        return f"no answer within {WEBHOOK_TIMEOUT:g}s"
    text = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
    parts = urlsplit(url)
    for piece in (url, parts.hostname or "", parts.path, parts.query):
        if len(piece) > 1:
            text = text.replace(piece, "***")
    return text
