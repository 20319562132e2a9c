"""One run of the fabric check on the nodes, watched as it goes: every node's script is started at once
(its stdin: the run's token, then the program), each job's live lines are read as they come, and

* a rank whose rendezvous failed (`@@fabric-fatal`), or a job that ended without an answer (its python
  missing, its container refused), stops its group at once: the group's other containers are removed
  rather than left to wait out `fabric.timeout` for a rank that will never come; and the first such
  failure stops every other group still running too (the check has its verdict: it says so and ends);
* Ctrl-C (or the budget running out) removes every container of the run (they carry the label
  `launcher.fabric=<deployment>/<run id>`) on every node before the interrupt goes on;
* a killed earlier run's leftovers (`launcher.fabric.deployment=<deployment>`) are removed first.
"""

from __future__ import annotations

import json
import queue
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from launcher.operations.context import Target
from launcher.plan import fabric
from launcher.plan.types import FABRIC_LABEL
from launcher.runtime.fabric import BOOT, END_MARK, LIVE_MARK, jobs_script, parse_jobs, program_stdin
from launcher.transport.errors import describe

STOP_GRACE = 1.0  # seconds a failing group's other ranks get to say their own failure before they are removed
CLEANUP_TIMEOUT = 4.0  # seconds the removal of a run's containers may take on a node (Ctrl-C: within 5 s)


@dataclass
class Live:
    """What came from the nodes as it happened."""

    reach: dict[tuple[int, int], dict[str, Any]] = field(default_factory=dict)
    fatal: dict[tuple[int, int], dict[str, Any]] = field(default_factory=dict)
    ended: dict[tuple[int, int], int] = field(default_factory=dict)
    stopped: dict[str | None, str] = field(default_factory=dict)  # group (None: peer ports only) -> why stopped
    cut_short: set[str | None] = field(default_factory=set)  # groups stopped for another group's failure
    stdout: dict[int, list[str]] = field(default_factory=dict)
    failed: dict[int, Exception] = field(default_factory=dict)  # nodes whose script could not start


class FabricRun:
    def __init__(self, t: Target, jobs: dict[int, list[fabric.Job]], program: str):
        self.t, self.jobs, self.program = t, jobs, program
        plan = t.plan
        self.run_id = f"{time.strftime('%Y%m%d%H%M%S')}-{secrets.token_hex(3)}"
        self.token = secrets.token_hex(32)  # carried over SSH on stdin only
        self.label = f"{FABRIC_LABEL}={plan.deployment}/{self.run_id}"
        self.names = {(i, k): f"{plan.deployment}-fabric-{i}-{k}" for i, js in jobs.items() for k in range(len(js))}
        self.live = Live()
        self.events: queue.Queue[tuple[int, str | None]] = queue.Queue()
        self.running: dict[int, Any] = {}
        self.pending_stop: dict[str | None, float] = {}  # group -> when to remove its containers
        self.removed: set[tuple[int, int]] = set()  # jobs removed by the launcher while they still ran
        self.arrived: dict[tuple[int, int], float] = {}  # when each job's first failure or end line came
        self.cut_at: dict[str | None, float] = {}  # when each cut-short group was stopped

    # -- the scripts -------------------------------------------------------------------------------
    def script(self, i: int) -> str:
        plan, runtime = self.t.plan, self.t.runtime
        start_at = time.time() + fabric.ALIGN  # every node's peer window starts then: containers start unevenly
        labels = {FABRIC_LABEL: f"{plan.deployment}/{self.run_id}", f"{FABRIC_LABEL}.deployment": plan.deployment}
        commands = []
        for k, job in enumerate(self.jobs[i]):
            spec = {**job.spec, "node": i, "start_at": round(start_at, 3), "margin": fabric.ALIGN}
            argv = [job.python, "-c", BOOT, json.dumps(spec)]
            commands.append(runtime.one_off_script(plan, job.service, argv, self.names[(i, k)], labels))
        leftovers = runtime.remove_labelled_script(plan, f"{FABRIC_LABEL}.deployment={plan.deployment}")
        return jobs_script(commands, cleanup=f"( {leftovers} ) >/dev/null 2>&1")

    # -- running -----------------------------------------------------------------------------------
    def start(self) -> None:
        scripts = {i: self.script(i) for i in self.jobs}
        started = self.t.fleet.map(lambda h: h.start(scripts[h.node.index]), list(scripts), together=True)
        stdin = program_stdin(self.token, self.program).encode()
        for i, r in started.items():
            if isinstance(r, Exception):
                self.live.failed[i] = r
                continue
            self.running[i] = r
            self.live.stdout[i] = []
            threading.Thread(target=self._feed_and_read, args=(i, r, stdin), daemon=True).start()

    def _feed_and_read(self, i: int, running: Any, stdin: bytes) -> None:
        try:
            running.write(stdin)
            running.close_stdin()
            while True:
                line = running.readline(None)
                if not line:
                    break
                self.live.stdout[i].append(line.rstrip("\n"))
                if line.startswith(LIVE_MARK + " "):
                    self.events.put((i, line.rstrip("\n")))
        except Exception as exc:  # the node's channel went away: what it said so far is kept
            self.live.failed.setdefault(i, exc)
        self.events.put((i, None))

    def watch(self, budget: float) -> None:
        """Until every node's script ended (or `budget` seconds): read the live lines, stop failing groups.
        Ctrl-C removes the run's containers everywhere, then goes on."""
        deadline = time.monotonic() + budget
        left = set(self.running)
        try:
            while left and time.monotonic() < deadline:
                self._due_stops()
                try:
                    i, line = self.events.get(timeout=0.2)
                except queue.Empty:
                    continue
                if line is None:
                    left.discard(i)
                else:
                    self._event(i, line)
            if left:
                self.remove_all()
        except KeyboardInterrupt:
            self.remove_all()
            raise

    def _event(self, i: int, line: str) -> None:
        parts = line.split(" ", 3)
        if len(parts) < 4 or not parts[1].isdigit():
            return
        k, mark, rest = int(parts[1]), parts[2], parts[3]
        if (i, k) not in self.names:
            return
        self.arrived.setdefault((i, k), time.monotonic())  # (a cut group's rank failing after the cut: cut)
        if mark == END_MARK:
            code = int(rest) if rest.strip().lstrip("-").isdigit() else 255
            self.live.ended[(i, k)] = code
            if code not in (0, 1):  # no answer of its own (python missing, container refused, killed)
                self._fail(i, k)
            return
        try:
            data = json.loads(rest)
        except ValueError:
            return
        if not isinstance(data, dict):
            return
        if mark == "@@fabric-reach":
            self.live.reach[(i, k)] = data
        elif mark == "@@fabric-fatal":
            self.live.fatal[(i, k)] = data
            self._fail(i, k)

    def _fail(self, i: int, k: int) -> None:
        group = self.jobs[i][k].group
        if group is None or group in self.live.stopped:
            return
        rank, node = self.jobs[i][k].rank, self.t.plan.nodes[i].label
        self.live.stopped[group] = f"stopped once rank {rank} on {node} had failed"
        self.pending_stop[group] = time.monotonic() + STOP_GRACE
        self._cut_short(f"ended once rank {rank} of {group} on {node} had failed (the check stops at the first)")

    def _cut_short(self, why: str) -> None:
        """Every other group still running (and the nodes that only try peer ports) is stopped with the first
        failing one: the verdict is made, and their ranks would only go on importing torch and meeting. (After
        the first failure every unfinished group is stopped already: a later one finds none left.)"""
        for i, k in self.names:
            job = self.jobs[i][k]
            if job.group not in self.live.stopped and (i, k) not in self.live.ended:
                self.live.stopped[job.group] = why
                self.live.cut_short.add(job.group)
                self.cut_at[job.group] = time.monotonic()
                self.pending_stop[job.group] = time.monotonic() + STOP_GRACE

    def _due_stops(self) -> None:
        now = time.monotonic()
        for group, when in list(self.pending_stop.items()):
            if now >= when:
                del self.pending_stop[group]
                threading.Thread(target=self._remove_group, args=(group,), daemon=True).start()

    def _remove_group(self, group: str | None) -> None:
        plan, runtime = self.t.plan, self.t.runtime
        names: dict[int, list[str]] = {}
        for (i, k), name in self.names.items():
            if self.jobs[i][k].group == group and (i, k) not in self.live.ended:
                names.setdefault(i, []).append(name)
                self.removed.add((i, k))
        if names:
            script = {i: runtime.remove_script(plan, ns) + " 2>/dev/null || true" for i, ns in names.items()}
            self.t.fleet.run(lambda h: script[h.node.index], list(names), together=True, timeout=30)

    def remove_all(self) -> None:
        """Every container of this run, on every node, at once; then the scripts' channels."""
        plan = self.t.plan
        script = self.t.runtime.remove_labelled_script(plan, self.label)
        self.removed |= set(self.names) - set(self.live.ended)
        try:
            self.t.fleet.run(script, list(self.jobs), together=True, timeout=CLEANUP_TIMEOUT)
        finally:
            for running in self.running.values():
                running.kill()

    # -- the answers ---------------------------------------------------------------------------------
    def outcomes(self) -> dict[tuple[int, int], Any]:
        out: dict[tuple[int, int], Any] = {}
        for i, node_jobs in self.jobs.items():
            if i in self.live.failed and i not in self.running:
                out.update({(i, k): describe(self.live.failed[i]) for k in range(len(node_jobs))})
                continue
            parsed = parse_jobs("\n".join(self.live.stdout.get(i, [])))
            for k, job in enumerate(node_jobs):
                out[(i, k)] = self._outcome(i, k, job, parsed.get(k))
        return out

    def _outcome(self, i: int, k: int, job: fabric.Job, parsed: tuple[int, str, str] | None) -> Any:
        answer = answer_of(job, *parsed) if parsed is not None else None
        if self._failed_after_cut(i, k, job, answer):  # its leader removed under it: the cut, not its fault
            return {"stopped": self.live.stopped[job.group], "cut_short": True, **self.live.reach.get((i, k), {})}
        if isinstance(answer, dict):
            return answer
        if (i, k) in self.live.fatal:
            return self.live.fatal[(i, k)]
        if (i, k) in self.removed and job.group in self.live.stopped:
            cut = {"cut_short": True} if job.group in self.live.cut_short else {}
            return {"stopped": self.live.stopped[job.group], **cut, **self.live.reach.get((i, k), {})}
        if answer is None:
            why = self.live.failed.get(i)
            return describe(why) if why is not None else "no answer within the check's budget"
        return answer

    def _failed_after_cut(self, i: int, k: int, job: fabric.Job, answer: Any) -> bool:
        """A rank of a cut-short group that failed once the cut had begun: the group's other containers are
        removed in parallel, and a member whose leader went first fails its own way (store or Gloo reset)."""
        if job.group is None or job.group not in self.live.cut_short:
            return False
        rendezvous = answer.get("rendezvous") if isinstance(answer, dict) else None
        if isinstance(rendezvous, dict) and rendezvous.get("ok"):
            return False  # it met before the cut: its answer stands
        return self.arrived.get((i, k), float("inf")) >= self.cut_at[job.group]


def answer_of(job: fabric.Job, code: int, out: str, err: str) -> Any:
    """The program's JSON line, or why there is none: its last words, or the container engine's (a
    python that is not in the image named as such)."""
    for line in reversed(out.splitlines()):
        if line.startswith("{"):
            try:
                return json.loads(line)
            except ValueError:
                break
    said = [x for x in err.strip().splitlines() if x.strip() and "docker run --help" not in x]
    last = (said or out.strip().splitlines() or [f"exit {code}"])[-1][:300]
    if code in (126, 127):
        return f"exit {code}: fabric.python {job.python} cannot be run there: {last}"
    return f"exit {code}: {last}"
