"""Is a rank making progress? Pure: fed each rank's scrapes of `/metrics` (observe.Parsed) over time.

A rank is `hung` when it has work in flight (requests running) and none of its progress counters has
moved for `window` seconds: tokens generated or prefilled (SGLang's, vLLM's), the mocker's per-token
TTFT/ITL observations, or the bytes a Dynamo worker has streamed back on its `generate` endpoint (every
token it sends adds to it; a prefill mocker exports nothing else). A rank with nothing in flight is
idle, never hung, however long nothing moves; a scrape that failed or made no sense is no data: it
neither proves progress nor starts a stall (a rank that stops answering
is the health probe's to judge, not this rule's).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from launcher.plan.observe import GENERATE, GENERATION_TOKENS, PROMPT_TOKENS, RUNNING, TOKEN_OBSERVATIONS, Parsed

# Every counter that moves when a rank does work: the first found of each family is summed.
PROGRESS = (GENERATION_TOKENS, PROMPT_TOKENS, TOKEN_OBSERVATIONS[:1], TOKEN_OBSERVATIONS[1:])


def in_flight(p: Parsed) -> float | None:
    """Requests running on the rank: the engine's own gauge or Dynamo's in-flight count on `generate`,
    the higher (an engine may update its gauge only between steps: a stuck step would read 0); None if
    it exports neither."""
    values = [p.first(RUNNING), p.total("dynamo_component_inflight_requests", GENERATE)]
    found = [v for v in values if v is not None]
    return max(found) if found else None


def progress_count(p: Parsed) -> float | None:
    """The sum of the rank's progress counters (None: it exports none, so progress cannot be told)."""
    values = [p.first(names) for names in PROGRESS]
    values.append(p.total("dynamo_component_response_bytes_total", GENERATE))
    found = [v for v in values if v is not None]
    return sum(found) if found else None


@dataclass
class Verdict:
    state: str  # hung | stalled | progressing | idle | no data
    line: str  # what was seen, for a person

    @property
    def hung(self) -> bool:
        return self.state == "hung"


@dataclass
class _Rank:
    since: float  # when it last made progress or had nothing in flight
    count: float | None = None


@dataclass
class Tracker:
    """Each rank's last progress, by its service name."""

    ranks: dict[str, _Rank] = field(default_factory=dict)

    def see(self, name: str, at: float, scrape: Parsed | None, window: float) -> Verdict:
        """One scrape of rank NAME at time AT (None: it failed) -> its verdict under WINDOW seconds."""
        rank = self.ranks.setdefault(name, _Rank(at))
        if scrape is None:
            return Verdict("no data", "no metrics this round")
        running, count = in_flight(scrape), progress_count(scrape)
        if count is None:
            rank.since = at
            return Verdict("no data", "exports no token counters")
        moved = rank.count is None or count != rank.count  # lower: the engine restarted, counting from 0
        rank.count = count
        if not running or moved:
            rank.since = at
            return Verdict("idle" if not running else "progressing", f"{running or 0:g} running")
        stalled = at - rank.since
        line = f"{running:g} request(s) running, no token progress for {stalled:.1f}s"
        return Verdict("hung" if stalled >= window else "stalled", line)

    def forget(self, names: list[str]) -> None:
        """Ranks restarted: their counters start again, and so does their clock."""
        for name in names:
            self.ranks.pop(name, None)
