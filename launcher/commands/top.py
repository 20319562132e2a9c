"""`launcher top`: a live view of every rank, the frontend or router, and totals per role, read from
each service's Prometheus `/metrics` through the nodes' connections (and `nvidia-smi` on GPU nodes).

Every interval each node is asked once (its services' state, its GPUs, then each metrics endpoint on it),
all nodes at once. A node that has not answered by the end of the interval keeps its last figures and
says for how long it has been silent; a node is never asked again while its last round is still out, so
one slow or cut node never holds up the view of the others. Where the plan gives a node GPUs, their health
verdict (launcher.operations.gpu_health, without moving the kernel log's place) is looked at every
HEALTH_EVERY seconds beside the rounds, so that a sick GPU's slow nvidia-smi never holds up its figures.
"""

from __future__ import annotations

import time
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import UTC, datetime

from launcher.errors import Exit
from launcher.operations import gpu_health, rank_progress
from launcher.operations.context import Connection, Target, connected, target
from launcher.output import console
from launcher.output.tables import print_json
from launcher.output.top_view import table, to_json
from launcher.plan import observe
from launcher.plan.metrics import ScrapeTarget, scrape_targets
from launcher.plan.stall import Tracker, Verdict
from launcher.plan.state import Container
from launcher.plan.types import Service
from launcher.runtime.base import LIST_MARK, parse_after_mark
from launcher.runtime.shell import join
from launcher.transport.errors import describe
from launcher.transport.host import Host

GPU_MARK = "@@launcher-gpus@@"
SCRAPE_TIMEOUT = 5.0
JSON_ROUND_LIMIT = 60.0
# How long one node's round may take before it counts as failed; a round of the view does not wait for
# it (that is the interval): the node's rows say how long it has been silent meanwhile.
NODE_TIMEOUT = 30.0
HEALTH_EVERY = 30.0  # seconds between two GPU health looks at a node (a look runs a program there)
HEALTH_TIMEOUT = 20.0


@dataclass
class Reading:
    """What one node said in one round: its services, its GPUs, each metrics endpoint's answer."""

    at: float
    containers: dict[str, Container] = field(default_factory=dict)
    gpus: list[observe.Gpu] | None = None
    scrapes: dict[str, observe.Parsed | str] = field(default_factory=dict)  # service name -> parsed, or why not


def node_script(t: Target, gpus: bool) -> str:
    script = f"echo {LIST_MARK}; {t.runtime.list_script(t.plan)}"
    if gpus:
        script += f"; echo {GPU_MARK}; {join(observe.NVIDIA_SMI_QUERY)} 2>&1 || true"
    return script


def read_node(t: Target, host: Host, targets: list[ScrapeTarget], timeout: float) -> Reading:
    """One node, one round: listing (+ GPUs) in one script, then every metrics endpoint on it."""
    index = host.node.index
    result = host.run(node_script(t, host.node.gpus > 0), timeout=timeout)
    listing, _, gpus = result.stdout.partition(GPU_MARK)
    reading = Reading(time.monotonic())
    reading.containers = {c.name: c for c in parse_after_mark(index, listing)}
    reading.gpus = observe.parse_nvidia_smi(gpus) if GPU_MARK in result.stdout else None
    for target_ in targets:
        try:
            status, body = host.http(
                "GET", target_.url, timeout=min(timeout, SCRAPE_TIMEOUT), limit=observe.MAX_SCRAPE_BYTES
            )
            if status != 200:
                raise ConnectionError(f"HTTP {status}")
            reading.scrapes[target_.service.name] = observe.parse(body if isinstance(body, str) else "")
        except (OSError, ConnectionError, ValueError) as exc:
            reading.scrapes[target_.service.name] = describe(exc)
    return reading


class Sampler:
    """Asks every node once per round, keeps each node's last two good readings per endpoint."""

    def __init__(self, t: Target):
        self.t = t
        plan = t.plan
        self.targets = {
            x.service.name: x for x in scrape_targets(plan.services) if x.kind in ("worker", "frontend", "router")
        }
        self.shown = [s for s in plan.services if s.group is not None or s.role in ("frontend", "router")]
        self.pool = ThreadPoolExecutor(max_workers=max(1, min(32, 2 * len(plan.nodes))), thread_name_prefix="top")
        self.pending: dict[int, Future] = {}
        self.gpu_nodes = set(gpu_health.gpu_nodes(plan))  # empty: no `gpu` column
        # the GPU looks in a pool of their own: a slow nvidia-smi (up to HEALTH_TIMEOUT) never holds a node's
        # figures up, however many nodes there are
        self.looks = ThreadPoolExecutor(max_workers=max(1, min(32, len(self.gpu_nodes))), thread_name_prefix="gpu")
        self.health: dict[int, gpu_health.NodeGpus | str] = {}  # node -> its last GPU health look
        self.looking: dict[int, Future] = {}
        self.health_next: dict[int, float] = {}
        self.latest: dict[int, Reading | str] = {}  # node -> last reading, or why the node failed
        self.good: dict[str, list[tuple[float, observe.Parsed]]] = {}  # service -> last two good scrapes
        self.heard: dict[int, float] = {}  # node -> when it last answered (or was first asked)
        self.patience = 0.0  # a node whose answer is later than this counts as not answering
        self.progress = Tracker()  # the progress rule (watch.hung_after): which ranks are hung
        self.verdicts: dict[str, Verdict] = {}
        self.one_shot = False  # --once/--json: a stall shorter than the window is shown as `stalled`

    def round(self, deadline: float, patience: float | None = None) -> list[observe.TopRow]:
        """Ask every node not still busy with the last round; wait until `deadline` seconds have passed.
        A node silent for longer than `patience` (two intervals) is shown as not answering; before that its
        rows keep what it last said."""
        self.patience = 2 * deadline if patience is None else patience
        nodes = sorted({s.node.index for s in self.shown})
        started = time.monotonic()
        for i in nodes:
            self.heard.setdefault(i, started)
            if i not in self.pending:
                on_node = [x for x in self.targets.values() if x.service.node.index == i]
                self.pending[i] = self.pool.submit(read_node, self.t, self.t.fleet.host(i), on_node, NODE_TIMEOUT)
        self.look_at_gpus(started)
        futures = [*self.pending.values(), *self.looking.values()]
        wait(futures, timeout=max(0.0, deadline - (time.monotonic() - started)))
        self.take_looks()
        for i, future in list(self.pending.items()):
            if not future.done():
                continue
            del self.pending[i]
            try:
                reading = future.result()
            except Exception as exc:  # one node's error is that node's row, never the view's end
                self.latest[i] = describe(exc)
                continue
            self.heard[i] = time.monotonic()
            self.latest[i] = reading
            for name, scrape in reading.scrapes.items():
                if isinstance(scrape, observe.Parsed):
                    self.good[name] = [*self.good.get(name, [])[-1:], (reading.at, scrape)]
            self.judge(reading)
        return [self.row(s) for s in self.shown]

    def look_at_gpus(self, now: float) -> None:
        """A GPU health look at each GPU node due for one and not still being looked at."""
        for i in sorted(self.gpu_nodes - set(self.looking)):
            if now >= self.health_next.get(i, 0.0):
                self.health_next[i] = now + HEALTH_EVERY
                host = self.t.fleet.host(i)
                self.looking[i] = self.looks.submit(gpu_health.look_host, self.t, host, HEALTH_TIMEOUT)

    def take_looks(self) -> None:
        for i, future in list(self.looking.items()):
            if future.done():
                del self.looking[i]
                try:
                    self.health[i] = future.result()
                except Exception as exc:  # look_host says its own failures; anything else is the node's line too
                    self.health[i] = describe(exc)

    def judge(self, reading: Reading) -> None:
        """Each rank of the reading whose group has a window: hung or not (launcher.plan.stall)."""
        for name, scrape in reading.scrapes.items():
            service = self.targets[name].service
            window = rank_progress.window(self.t, service)
            if window is None or service.group is None:
                continue
            parsed = scrape if isinstance(scrape, observe.Parsed) else None
            self.verdicts[name] = self.progress.see(name, reading.at, parsed, window)

    def row(self, s: Service) -> observe.TopRow:
        target_ = self.targets.get(s.name)
        kind = "worker" if s.group is not None else s.role
        row = observe.TopRow(
            s.node.index, s.node.name, s.service, s.role, s.group, s.rank, kind, "waiting for the first answer",
            url=target_.url if target_ else None,
        )  # fmt: skip
        if s.node.index in self.gpu_nodes:
            row.gpu_health = gpu_health.marker(self.health.get(s.node.index))
        reading = self.latest.get(s.node.index)
        good = self.good.get(s.name, [])
        if good:
            row.age = time.monotonic() - good[-1][0]
            row.figures = self.figures(kind, good)
        silent = time.monotonic() - self.heard.get(s.node.index, time.monotonic())
        if s.node.index in self.pending and silent > self.patience:
            row.state = f"node not answering for {silent:.0f}s"
        elif isinstance(reading, str):
            row.state = f"node unreachable: {reading}"
        elif reading is not None:
            row.state = self.named(s, self.state(s, reading, target_))
            row.gpus = self.gpus(s, reading)
        return row

    @staticmethod
    def figures(kind: str, good: list[tuple[float, observe.Parsed]]) -> observe.Figures:
        (t0, before), (t1, after) = good[0], good[-1]
        if kind == "worker":
            return observe.worker_figures(before, after, t1 - t0)
        return observe.entry_figures(before, after, t1 - t0)

    @staticmethod
    def state(s: Service, reading: Reading, target_: ScrapeTarget | None) -> str:
        c = reading.containers.get(s.name)
        if c is None:
            return "missing"
        if not c.running:
            return f"{c.state} (exit code {c.exit_code})"
        if target_ is None:
            return "running (no metrics endpoint)"
        scrape = reading.scrapes.get(s.name)
        return "up" if isinstance(scrape, observe.Parsed) else f"metrics not answering: {scrape}"

    def named(self, s: Service, state: str) -> str:
        """`hung (...)` for a rank up whose progress the rule judges hung over its group's window; in a
        one-shot view, `stalled (...)` for one with no progress between its two reads, a shorter time."""
        verdict = self.verdicts.get(s.name)
        if state != "up" or verdict is None:
            return state
        if verdict.hung:
            return f"hung ({verdict.line})"
        if verdict.state == "stalled" and self.one_shot:
            return f"stalled ({verdict.line}; hung after {rank_progress.window(self.t, s):g}s)"
        return state

    def gpus(self, s: Service, reading: Reading) -> list[observe.Gpu] | None:
        if reading.gpus is None:
            return None
        group = next((g for g in self.t.plan.groups if g.name == s.group), None)
        wanted = set(group.gpus) if group else set()
        return [g for g in reading.gpus if not wanted or g.index in wanted]

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.looks.shutdown(wait=False, cancel_futures=True)


def run(
    config, config_opt, inventory, connection: Connection, *, interval: float, as_json: bool, once: bool = False
) -> None:
    t = target(config, config_opt, inventory)
    with connected(t, connection):
        sampler = Sampler(t)
        try:
            if as_json:
                snapshot(t, sampler, interval)
            elif once:
                one_table(t, sampler, interval)
            else:
                live(t, sampler, interval)
        except KeyboardInterrupt:
            console.say("interrupted: top stopped (it only reads: nothing changed on the nodes)", to_stderr=True)
            raise Exit(130) from None
        finally:
            sampler.close()


def two_rounds(sampler: Sampler, interval: float) -> list[observe.TopRow]:
    """Two rounds an interval apart (rates need two scrapes). Each round waits for every node up to a
    minute (connecting to many nodes of a busy machine takes seconds); a node still silent then is
    reported as such."""
    deadline = max(interval, JSON_ROUND_LIMIT)
    sampler.one_shot = True  # two scrapes an interval apart: hung only where that covers the window
    sampler.round(deadline, patience=deadline)
    time.sleep(interval)
    return sampler.round(deadline, patience=deadline)


def snapshot(t: Target, sampler: Sampler, interval: float) -> None:
    """`--json`: one snapshot as a JSON document."""
    rows = two_rounds(sampler, interval)
    print_json(to_json(t.plan.deployment, interval, datetime.now(UTC).isoformat(timespec="seconds"), rows))


def one_table(t: Target, sampler: Sampler, interval: float) -> None:
    """`--once`: the table a person types `top` for first, printed once (terminal or not), then exit 0."""
    rows = two_rounds(sampler, interval)
    console.stdout().print(table(rows, f"top {t.plan.deployment} at {_now()} (rates over {interval:g}s)"))


def live(t: Target, sampler: Sampler, interval: float) -> None:
    """A live table on a terminal; piped, one table per round (each headed by its time)."""
    out = console.stdout()
    if not out.is_terminal:
        n = 0
        while True:
            n += 1
            started = time.monotonic()
            rows = sampler.round(interval)
            out.print(table(rows, f"top {t.plan.deployment} round {n} at {_now()} (every {interval:g}s)"))
            console.stdout().file.flush()
            time.sleep(max(0.0, interval - (time.monotonic() - started)))
    from rich.live import Live

    with Live(console=out, refresh_per_second=4, screen=False) as view:
        while True:
            started = time.monotonic()
            rows = sampler.round(interval)
            view.update(table(rows, f"top {t.plan.deployment} at {_now()} (every {interval:g}s; Ctrl-C to quit)"))
            time.sleep(max(0.0, interval - (time.monotonic() - started)))


def _now() -> str:
    return datetime.now().strftime("%H:%M:%S")
