"""Runtimes: how a plan's services become shell scripts on a node (`docker`, `process`), and the
`Runtime` protocol both follow (`base`). Pure text; `transport` runs it."""

from __future__ import annotations

from launcher.plan.types import Plan
from launcher.runtime.base import Runtime
from launcher.runtime.docker import Docker
from launcher.runtime.process import Process


def for_plan(plan: Plan) -> Runtime:
    return Process() if plan.runtime == "process" else Docker()
