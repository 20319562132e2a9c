"""The one redactor: every text the launcher writes for people or into files (plan views, `logs`,
`collect`'s bundle, `bench`'s recipe, the audit log) passes through a `Redactor`.

It hides two things. Every secret value it was given, in each form the value takes once a program has
written it: as is, JSON-escaped (a log line or a JSON file), JSON inside JSON, Python's repr, shell-quoted,
URL-encoded, and base64 (whole, or inside a longer base64 text at any byte offset). And the value after any
secret-looking name written `NAME=value`, `"NAME": "value"` or `NAME: value`, for values it was never told.

Values shorter than MIN_SECRET_LEN characters (and true/false/none/null) are not searched for in free
text: replacing every "x" or "true" would garble everything and hide nothing a guess would not find.
They are still hidden wherever their name is next to them (the env maps of the plan, `NAME=value`).
"""

from __future__ import annotations

import base64
import json
import re
import shlex
import urllib.parse
from collections.abc import Iterable

REDACTED = "***"
MIN_SECRET_LEN = 4
# Values a secret-looking setting may hold that are flags, not secrets: never searched for in text.
NOT_SECRET = {"true", "false", "none", "null"}
# base64 pieces shorter than this could turn up by chance in an unrelated blob.
MIN_BASE64_LEN = 8

# Env (and inventory var) names whose values are secret even when the file does not list them under
# `secrets`: the last word says what it holds (`*_TOKEN`, `*_KEY`, `*_PASSWORD`...), any case.
SECRET_NAME = re.compile(
    r"(?:^|_)(?:TOKEN|KEY|APIKEY|SECRET|PASSWORD|PASSWD|PASS|PASSPHRASE|CREDENTIALS?|AUTH)$"
    r"|^HUGGING_FACE_HUB_TOKEN$|^(?:NATS|ETCD)_AUTH_",
    re.IGNORECASE,
)

_NAME = r"(?<![A-Za-z0-9_])(?P<name>[A-Za-z_][A-Za-z0-9_]*)"
# NAME=value, NAME="value", NAME='value' (env dumps, command lines)
_ASSIGNED = re.compile(_NAME + r"""=(?:"(?P<dq>(?:\\.|[^"\\\n])*)"|'(?P<sq>[^'\n]*)'|(?P<bare>[^\s"',;&|)}\]]+))""")
# "NAME": "value" (JSON), 'NAME': 'value' (Python's repr)
_QUOTED_KEY = re.compile(
    r"""(?P<q>["'])""" + _NAME + r"""(?P=q)[ \t]*:[ \t]*(?P<q2>["'])(?P<value>(?:\\.|(?!(?P=q2))[^\\\n])*)(?P=q2)"""
)
# NAME: value (YAML); only names in env style (upper case or with `_`), so that prose ("key: ...") stays
_COLON = re.compile(_NAME + r""":[ \t]+(?:"(?P<dq>(?:\\.|[^"\\\n])*)"|'(?P<sq>[^'\n]*)'|(?P<bare>[^\s,#}\]]+))""")


def is_secret_name(name: str, declared: Iterable[str] = ()) -> bool:
    return name in set(declared) or bool(SECRET_NAME.search(name))


def searchable(value: str) -> bool:
    return len(value) >= MIN_SECRET_LEN and value.lower() not in NOT_SECRET


def base64_forms(raw: bytes) -> set[str]:
    """The base64 characters that `raw` alone decides, wherever it starts in a longer encoded text."""
    forms = set()
    for offset in range(3):
        for encode in (base64.b64encode, base64.urlsafe_b64encode):
            text = encode(b"\0" * offset + raw).decode()
            first = -(-8 * offset // 6)  # the first character with no bit of the bytes before
            last = 8 * (offset + len(raw)) // 6  # past the last character with no bit of the bytes after
            forms.add(text[first:last])
    forms.add(base64.b64encode(raw).decode())  # whole, with its padding
    return {f for f in forms if len(f) >= MIN_BASE64_LEN}


def escaped_forms(value: str) -> set[str]:
    """`value` as the programs that print it write it."""
    as_json = json.dumps(value)[1:-1]
    forms = {
        value,
        as_json,
        json.dumps(value, ensure_ascii=False)[1:-1],
        json.dumps(as_json)[1:-1],  # a JSON document carried in a JSON string (structured logs)
        repr(value)[1:-1],
        shlex.quote(value),
        value.replace("'", "'\"'\"'"),  # inside shlex.quote's single quotes
        value.replace("'", "'\\''"),  # inside an env file's single quotes
        urllib.parse.quote(value, safe=""),
        urllib.parse.quote(value),
        urllib.parse.quote_plus(value),
    }
    return {f for f in forms if searchable(f)} | base64_forms(value.encode())


class Redactor:
    """Replaces every secret value (in all its escaped forms), and the value of every secret-looking
    name, by `***`."""

    def __init__(self, values: Iterable[str] = ()):
        forms = set()
        for value in values:
            if value and searchable(value):
                forms |= escaped_forms(value)
        # Longest first: at each place the longest form wins, so a secret that contains another is hidden whole.
        ordered = sorted(forms, key=lambda f: (-len(f), f))
        self.pattern = re.compile("|".join(map(re.escape, ordered))) if ordered else None

    def __call__(self, text: str) -> str:
        if self.pattern is not None:
            text = self.pattern.sub(REDACTED, text)
        text = _ASSIGNED.sub(_hide_value, text)
        text = _QUOTED_KEY.sub(_hide_value, text)
        return _COLON.sub(_hide_yaml_value, text)


def _hide_value(match: re.Match[str]) -> str:
    if not SECRET_NAME.search(match["name"]):
        return match[0]
    group = next(g for g in ("value", "dq", "sq", "bare") if g in match.re.groupindex and match[g] is not None)
    value = match[group]
    if not value or value == REDACTED or value.startswith("$"):  # `${MY_KEY}`, "$MY_KEY": a name, no value
        return match[0]
    start, end = match.start(group) - match.start(), match.end(group) - match.start()
    return match[0][:start] + REDACTED + match[0][end:]


def _hide_yaml_value(match: re.Match[str]) -> str:
    name = match["name"]
    if not (name.isupper() or "_" in name):
        return match[0]
    return _hide_value(match)
