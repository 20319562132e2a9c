"""Does a rank still answer its health probe? Pure: fed each round's probe of each running rank.

A rank is `unhealthy` once its probe has failed MIN_FAILED times in a row over at least the window
(`watch.unhealthy_after`): one slow answer from a loaded rank is not a fault, while a rank frozen outright
(SIGSTOP, a wedged process) answers nothing round after round, and its `/metrics` neither, so the
progress rule (launcher.plan.stall) never sees it. A rank is judged only once its container has passed
its probe in this watch, or has run past its ready timeout (`grace`) since this watch first saw it: a
rank loading its weights fails its probe for minutes, and that is `up`'s wait, not a fault. A new
container (a restart, by watch or by anyone) is judged afresh.
"""

from __future__ import annotations

from dataclasses import dataclass, field

MIN_FAILED = 3  # probes failed in a row, at the least, before a rank is unhealthy


@dataclass
class _Rank:
    container: str  # the id of the container these counts are about
    seen: float  # when this watch first saw that container
    passed: bool = False  # has it passed its probe since
    failing_since: float | None = None  # the first of the failed probes in a row
    failed: int = 0  # how many in a row


@dataclass
class Liveness:
    """Each rank's failed probes in a row, by service name."""

    ranks: dict[str, _Rank] = field(default_factory=dict)

    def see(self, name: str, container: str, at: float, failure: str | None, window: float, grace: float) -> str | None:
        """One probe of rank NAME, running as CONTAINER, at time AT: FAILURE says why it failed (None: it
        passed) -> the line saying the rank is unhealthy (`unhealthy for Ns: FAILURE`), or None while it is
        not (yet)."""
        rank = self.ranks.get(name)
        if rank is None or rank.container != container:
            rank = self.ranks[name] = _Rank(container, at)
        if failure is None:
            rank.passed, rank.failing_since, rank.failed = True, None, 0
            return None
        if rank.failing_since is None:
            rank.failing_since = at
        rank.failed += 1
        failing = at - rank.failing_since
        judged = rank.passed or at - rank.seen >= grace
        if judged and rank.failed >= MIN_FAILED and failing >= window:
            return f"unhealthy for {failing:.0f}s: {failure}"
        return None
