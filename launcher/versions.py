"""Engine version strings as comparable tuples. Imports nothing of the launcher, so any layer may use it."""

from __future__ import annotations

import re


def version(text: str) -> tuple[int, ...]:
    """'0.4.10.post2' -> (0, 4, 10, 2); '0.5.21' -> (0, 5, 21, 0)."""
    parts = re.findall(r"\d+", text)
    numbers = [int(p) for p in parts[:4]]
    return tuple(numbers + [0] * (4 - len(numbers)))
