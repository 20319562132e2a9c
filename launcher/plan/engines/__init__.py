"""Engine adapters by name. Adding an engine is one module here that defines `ENGINE` (an `Engine`):
it is found by its presence, nothing else to register."""

from __future__ import annotations

import importlib
import pkgutil

from launcher.plan.engines.base import Engine


def _discover() -> dict[str, Engine]:
    found: dict[str, Engine] = {}
    for info in pkgutil.iter_modules(__path__):
        engine = getattr(importlib.import_module(f"{__name__}.{info.name}"), "ENGINE", None)
        if isinstance(engine, Engine):
            found[engine.name] = engine
    return dict(sorted(found.items()))


ENGINES: dict[str, Engine] = _discover()


def get(name: str) -> Engine | None:
    return ENGINES.get(name)
