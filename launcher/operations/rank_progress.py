"""Each rank's progress, read from its `/metrics` through the node's connection (as `top` reads it):
what `watch` and `status` judge a rank `hung` by (launcher.plan.stall holds the rule).

A scrape is network input: at most observe.MAX_SCRAPE_BYTES, within SCRAPE_TIMEOUT, and anything that
is not Prometheus text is "no data" with the reason in one line, never an error of the caller.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

from launcher.operations.context import Target
from launcher.plan import observe
from launcher.plan.metrics import ScrapeTarget, scrape_targets
from launcher.plan.stall import Tracker, Verdict
from launcher.plan.types import Service
from launcher.transport.errors import describe

SCRAPE_TIMEOUT = 5.0
STATUS_SPAN = 2.0  # `status` judges over two scrapes this far apart (or the window, when shorter)


def window(t: Target, s: Service) -> float | None:
    """The file's `watch.hung_after` for the rank's group (None: its progress is not judged)."""
    group = next((g for g in t.plan.groups if g.name == s.group), None)
    return group.watch.hung_after if group is not None else None


def judged(t: Target, services: list[Service]) -> list[ScrapeTarget]:
    """The worker ranks among SERVICES whose group has a window, and that serve metrics."""
    return [x for x in scrape_targets(services) if x.kind == "worker" and window(t, x.service) is not None]


def scrape_one(t: Target, target_: ScrapeTarget) -> observe.Parsed | str:
    """One rank's metrics, parsed; or why there are none (one line)."""
    try:
        host = t.fleet.host(target_.service.node.index)
        status, body = host.http("GET", target_.url, timeout=SCRAPE_TIMEOUT, limit=observe.MAX_SCRAPE_BYTES)
        if status != 200:
            return f"HTTP {status}"
        return observe.parse(body if isinstance(body, str) else "")
    except Exception as exc:  # whatever a node sends (or fails to): no data, never the caller's end
        return describe(exc)


def scrape(t: Target, targets: list[ScrapeTarget]) -> dict[str, observe.Parsed | str]:
    """Every target at once (a slow rank costs SCRAPE_TIMEOUT, not the sum): service name -> answer."""
    if not targets:
        return {}
    with ThreadPoolExecutor(max_workers=min(32, len(targets)), thread_name_prefix="scrape") as pool:
        answers = list(pool.map(lambda x: scrape_one(t, x), targets))
    return {x.service.name: a for x, a in zip(targets, answers, strict=True)}


def judge(t: Target, tracker: Tracker, targets: list[ScrapeTarget], at: float):
    """One round: each target scraped and fed to TRACKER at AT -> (verdicts, why not scraped) by service
    name, each judged under its group's own window."""
    verdicts: dict[str, Verdict] = {}
    failed: dict[str, str] = {}
    for name, answer in scrape(t, targets).items():
        target_ = next(x for x in targets if x.service.name == name)
        if isinstance(answer, str):
            failed[name] = answer
        verdicts[name] = tracker.see(
            name, at, None if isinstance(answer, str) else answer, window(t, target_.service) or 0.0
        )
    return verdicts, failed


def stalls_now(t: Target, services: list[Service]) -> dict[str, Verdict]:
    """`status`: the ranks among SERVICES (running ones) seen with requests running and no token progress
    over two scrapes (stalls_over)."""
    return stalls_over(t, judged(t, services))


def stalls_over(t: Target, targets: list[ScrapeTarget]) -> dict[str, Verdict]:
    """Two scrapes of TARGETS STATUS_SPAN apart (or the shortest window, when shorter) -> the ranks with
    requests running and no token progress between them: `hung` where that covers their group's window,
    else `stalled` (a one-shot view cannot wait out a window of minutes; a long step is not a hang)."""
    if not targets:
        return {}
    tracker = Tracker()
    started = time.monotonic()
    judge(t, tracker, targets, started)
    span = min([STATUS_SPAN, *(window(t, x.service) or STATUS_SPAN for x in targets)])
    time.sleep(max(0.0, span - (time.monotonic() - started)))
    verdicts, _ = judge(t, tracker, targets, time.monotonic())
    return {name: v for name, v in verdicts.items() if v.state in ("hung", "stalled")}
