"""The process runtime: services as plain processes, for Docker-less nodes and the local default.

Each service runs in its own session (`setsid`), so its whole process tree can be ended by session
id: no orphaned workers left holding GPU memory after a stop (SGLang's schedulers outlive their
parent otherwise). A per-deployment run directory on the node holds, per service: pid, its start
time (so a reused pid is never mistaken for ours), labels.json, the env file (0600), the log and the
exit code. `list_script` prints the same JSON shape as `docker inspect`, so everything above the
runtime is shared.
"""

from __future__ import annotations

import json
import posixpath

from launcher.plan.types import Plan, Service
from launcher.runtime.base import ENGINE_UNAVAILABLE, LIST_MARK, POLL_MARK, held_name
from launcher.runtime.lock import guard_script
from launcher.runtime.shell import q, write_from_stdin

# proc_start PID: set $pst to PID's start time (field 22 of /proc/PID/stat, counted after the command name,
# which may hold spaces and parentheses) and $pstate to its state (field 3: Z for a zombie), both empty when
# there is no such process. Builtins only, no fork: the listing runs it for every service at every poll
# (forked `cat`s and `awk`s here were a third of the test suite's CPU time).
PROC_START_FN = r"""
proc_start() {
  pst=; pstate=; line=; read -r line 2>/dev/null < "/proc/$1/stat" || [ -n "$line" ] || return 0
  set -f; set -- ${line##*") "}; set +f; pstate=${1:-}; pst=${20:-}
}
"""

# Stop one service directory's session: TERM, up to 10 s, then KILL. Only a pid whose start time
# matches the one recorded is signalled as a leader; survivors are found by session id.
STOP_FN = (
    PROC_START_FN
    + r"""
# recorded DIR: set $pid to the service's recorded pid (empty unless a number over 1: a file a crash or a
# hand left odd signals nothing, and 0 would be `pkill -s 0`, this script's own session) and $live to
# `yes` (that process runs, with the recorded start time), `no` (the pid now belongs to another process:
# reused, which the kernel only does once no process is left in our session) or `gone` (no process has it;
# a leader that is gone leaves its id to its session's survivors).
recorded() {
  pid=; st=; live=; read -r pid 2>/dev/null < "$1/pid" || :
  case $pid in ''|0*|*[!0-9]*) pid=; return 0 ;; esac  # digits only, no sign or leading 0 (`+5`, `05`)
  [ "$pid" -gt 1 ] 2>/dev/null || { pid=; return 0; }
  read -r st 2>/dev/null < "$1/starttime" || :
  live=gone; [ -r "/proc/$pid/stat" ] || return 0
  proc_start "$pid"; if [ "$pst" = "$st" ]; then live=yes; else live=no; fi
}
# term_svc DIR: SIGTERM the service's session (only if the recorded pid is still ours), then SIGCONT: a
# stopped process (a rank frozen with SIGSTOP, which watch restarts) only sees the TERM once it runs again,
# and would otherwise hold the stop for reap_svcs' 10 s until the KILL.
term_svc() {
  recorded "$1"; [ -n "$pid" ] && [ "$live" != no ] || return 0
  if [ "$live" = yes ]; then kill -TERM -- "-$pid" 2>/dev/null || true; kill -CONT -- "-$pid" 2>/dev/null || true; fi
  pkill -TERM -s "$pid" 2>/dev/null || true; pkill -CONT -s "$pid" 2>/dev/null || true
}
# our_sid DIR: set $sid to the service's session id if that session can still be ours (else empty).
our_sid() {
  recorded "$1"; sid=; [ -n "$pid" ] && [ "$live" != no ] || return 0
  sid=$pid
}
# in_session SID: a process of the session runs. Its leader's process group is asked first, with the
# builtin `kill -0`; only once that group is gone does `pgrep` (a scan of /proc, some 7 ms) look for the
# session's other groups: polled every 0.1 s while services drain, pgrep alone was 2,300 processes a suite.
in_session() { kill -0 -- "-$1" 2>/dev/null || pgrep -s "$1" >/dev/null 2>&1; }
# reap_svcs DIR...: wait (10 s at most, all together) for the sessions to end, then SIGKILL survivors.
reap_svcs() {
  i=0
  while [ $i -lt 100 ]; do
    alive=0
    for d in "$@"; do
      our_sid "$d"; [ -n "$sid" ] && in_session "$sid" && alive=1
    done
    [ $alive = 0 ] && return 0
    sleep 0.1; i=$((i+1))
  done
  kill_svcs "$@"
}
# kill_svcs DIR...: SIGKILL what is left of the services' sessions.
kill_svcs() {
  for d in "$@"; do
    our_sid "$d"; [ -n "$sid" ] || continue
    pkill -KILL -s "$sid" 2>/dev/null || true; kill -KILL -- "-$sid" 2>/dev/null || true
  done
}
stop_svc() { term_svc "$1"; reap_svcs "$1"; }
# term_engine DIR: SIGTERM the service's engine only (the wrapper's child), as `docker stop` signals a
# container's main process: the wrapper stays to record the engine's exit code once it has finished.
term_engine() {
  recorded "$1"; [ "$live" = yes ] || return 0
  pkill -TERM -P "$pid" 2>/dev/null || true
}
"""
)

LIST_FN = (
    PROC_START_FN
    + r"""
list_svcs() {
  run=$1; first=1; printf '['
  for d in "$run"/*/; do
    # read once: a directory removed by a concurrent `down` is skipped, never half-printed
    d=${d%/}; labels=; read -r labels 2>/dev/null < "$d/labels.json" || [ -n "$labels" ] || continue
    [ -n "$labels" ] || continue
    name=${d##*/}; pid=0; read -r pid 2>/dev/null < "$d/pid" || :
    st=; read -r st 2>/dev/null < "$d/starttime" || :; started=; read -r started 2>/dev/null < "$d/started" || :
    state=exited; code=137; read -r code 2>/dev/null < "$d/exit" || :
    # what is printed into the JSON below is what these files should hold, or nothing: a file left odd
    # (a crash, a hand) is one service listed as exited, never a node whose whole listing is unreadable
    case $pid in ''|*[!0-9]*) pid=0;; esac; case $code in ''|*[!0-9]*) code=137;; esac
    case $started in *[!0-9TZ:-]*) started=;; esac
    # A zombie has exited: where the init process reaps orphans late (some container inits, a loaded
    # machine) its stat stays readable, with its start time, for many seconds.
    if [ -r "/proc/$pid/stat" ]; then
      proc_start "$pid"; if [ "$pst" = "$st" ] && [ "$pstate" != Z ]; then state=running; code=0; fi
    fi
    [ $first = 1 ] || printf ','; first=0
    printf '{"Id":"%s","Name":"/%s","State":{"Status":"%s","ExitCode":%s,"StartedAt":"%s"},"Config":{"Labels":' \
      "$pid" "$name" "$state" "${code:-137}" "$started"
    # LauncherCmd: the command it started with is recorded (a roll's rollback can start it again)
    cmd=false; [ -f "$d/cmd" ] && cmd=true
    printf '%s},"LauncherCmd":%s}' "$labels" "$cmd"
  done
  printf ']\n'
}
"""
)


class Process:
    name = "process"

    def base_dir(self, plan: Plan) -> str:
        return posixpath.join(plan.state_dir, plan.deployment, "run")

    def _run(self, plan: Plan) -> str:
        """Shell prelude setting $RUN, the run directory, keyed by the node's own hostname.

        A state_dir shared between nodes (NFS home directories, or the testbed, whose nodes share
        one filesystem and one PID namespace) must not let one node's `down` see another's services.
        """
        # Each node's own state_dir checked first (not only the head's): another user who made it could
        # plant a run directory whose pid file names one of this user's processes, for `down` to signal.
        return guard_script(plan.state_dir, create=False) + f'; RUN={q(self.base_dir(plan))}/"$(uname -n)"; '

    def check_script(self, plan: Plan) -> str:
        env = plan.python_env
        if not env:
            return "command -v python3"
        return (
            f"test -x {q(env + '/bin/python3')} && {q(env + '/bin/python3')} --version || "
            f"{{ echo python environment {q(env)} not found '(python_env)' >&2; exit 1; }}"
        )

    def list_script(self, plan: Plan) -> str:
        # Listing creates nothing: a node that never ran a service keeps no run directory.
        return LIST_FN + self._run(plan) + 'list_svcs "$RUN"'

    def check_and_list_script(self, plan: Plan) -> str:
        return f"{{ {self.check_script(plan)} ; }} >/dev/null || exit {ENGINE_UNAVAILABLE}; {self.list_script(plan)}"

    def start_script(self, plan: Plan, services: list[Service], existing: set[str] | None = None) -> tuple[str, str]:
        lines = [guard_script(plan.state_dir), "set -e", STOP_FN, self._run(plan)]
        stdin = ""
        path_prefix = f"{plan.python_env}/bin:" if plan.python_env else ""
        for s in services:
            d = f'"$RUN"/{q(s.name)}'
            env = {**s.env, **s.secret_env}
            if path_prefix:
                env["PATH"] = path_prefix + env.get("PATH", "/usr/local/bin:/usr/bin:/bin")
            body = "".join(f"export {k}={q(v)}\n" for k, v in env.items())
            lines += [
                f"stop_svc {d}",
                f"rm -rf {d}",
                f"install -d -m 0700 {d} {d}/scratch",
                write_from_stdin(f"{d}/env", body, quoted=True),
                f"printf '%s' {q(json.dumps(plan.labels(s)))} > {d}/labels.json",
                # the command as it started, for a rollback to start it again (restore_script)
                f"printf '%s' {q(self._argv(s))} > {d}/cmd",
                *self._launch(d, s),
            ]
            stdin += body
        lines += [f"echo {q(LIST_MARK)}", self.list_script(plan)]
        return "\n".join(lines), stdin

    def restart_script(self, plan: Plan, services: list[Service]) -> str:
        """Start the services again in their run directories, env and scratch data kept."""
        lines = ["set -e", STOP_FN, self._run(plan)]
        for s in services:
            d = f'"$RUN"/{q(s.name)}'
            lines += [f"stop_svc {d}", f"rm -f {d}/exit", *self._launch(d, s)]
        lines += [f"echo {q(LIST_MARK)}", self.list_script(plan)]
        return "\n".join(lines)

    @staticmethod
    def _argv(s: Service) -> str:
        return " ".join(q(a) for a in s.command)

    @classmethod
    def _launch(cls, d: str, s: Service) -> list[str]:
        body = q('. ../env; "$@"; echo $? > ../exit') + f" {q(s.name)} {cls._argv(s)} > {d}/log"
        return cls._wrapped(d, body)

    @staticmethod
    def _wrapped(d: str, body: str) -> list[str]:
        """Start `bash -c BODY` as the session's leader in the service's scratch directory; record its pid."""
        return [
            f"date -u +%Y-%m-%dT%H:%M:%SZ > {d}/started",
            # The wrapper is the session leader; it records the service's exit code.
            f"(cd {d}/scratch && exec setsid bash -c {body} 2>&1 < /dev/null) &",
            f"echo $! > {d}/pid",
            # A service that failed at once is gone already: no start time, listed as exited
            # with its code; the other services of this script still start.
            f'proc_start $!; echo "$pst" > {d}/starttime',
        ]

    def remove_script(self, plan: Plan, names: list[str]) -> str:
        dirs = " ".join(f'"$RUN"/{q(name)}' for name in names)
        return (
            self._run(plan)
            + STOP_FN
            + f'set -- {dirs}; for d in "$@"; do term_svc "$d"; done; reap_svcs "$@"; rm -rf "$@"'
        )

    def term_script(self, plan: Plan, names: list[str]) -> str:
        dirs = " ".join(f'"$RUN"/{q(name)}' for name in names)
        return self._run(plan) + STOP_FN + f'for d in {dirs}; do term_engine "$d"; done' if names else "true"

    def hold_script(self, plan: Plan, names: list[str]) -> str:
        """Stopped (its drain came before), then its run directory renamed: env, command and log kept."""
        lines = [self._run(plan) + STOP_FN]
        for n in names:
            d, h = f'"$RUN"/{q(n)}', f'"$RUN"/{q(held_name(n))}'
            lines.append(f"if [ ! -d {h} ] && [ -d {d} ]; then stop_svc {d}; mv {d} {h}; fi")
        return "\n".join(lines)

    def restore_script(self, plan: Plan, names: list[str]) -> str:
        """The held run directory back in place, its recorded command started again (its log appended to)."""
        lines = [self._run(plan), "set -e", STOP_FN]
        for n in names:
            d, h = f'"$RUN"/{q(n)}', f'"$RUN"/{q(held_name(n))}'
            body = q('. ../env; eval "$(cat ../cmd)"; echo $? > ../exit') + f" {q(n)} >> {d}/log"
            lines += [
                f"if [ -d {h} ]; then if [ -d {d} ]; then stop_svc {d}; rm -rf {d}; fi; mv {h} {d}; fi",
                f"[ -f {d}/cmd ] || {{ echo {q(f'{n}: no previous run to start again')} >&2; exit 1; }}",
                f"stop_svc {d}",
                f"rm -f {d}/exit",
                *self._wrapped(d, body),
            ]
        lines += [f"echo {q(LIST_MARK)}", self.list_script(plan)]
        return "\n".join(lines)

    def discard_held_script(self, plan: Plan, names: list[str]) -> str:
        return self.remove_script(plan, [held_name(n) for n in names])

    def remove_all_script(self, plan: Plan, now: bool = False) -> str:
        # TERM every session first, then wait for all of them together: one slow exit, not the sum.
        # `now` (`down --now`): KILL at once, as `docker rm -f` does; nothing is let finish.
        stop = "kill_svcs" if now else "term_svc"
        return (
            self._run(plan)
            + STOP_FN
            + (
                f'set --; for d in "$RUN"/*/; do [ -d "$d" ] || continue; d=${{d%/}}; {stop} "$d"; '
                'set -- "$@" "$d"; done; reap_svcs "$@"; n=$#; for d in "$@"; do rm -rf "$d"; done; '
                f"rm -rf {q(posixpath.join(plan.state_dir, plan.deployment, 'secrets'))}; echo $n"
            )
        )

    def logs_script(
        self, plan: Plan, name: str, tail: int | None = None, follow: bool = False, since: str | None = None
    ) -> str:
        argv = "tail " + (f"-n {int(tail)}" if tail is not None else "-n +1") + (" -F" if follow else "")
        return self._run(plan) + f'{argv} "$RUN"/{q(name)}/log 2>&1'

    def one_off_script(
        self, plan: Plan, service: Service, argv: list[str], name: str, labels: dict[str, str] | None = None
    ) -> str:
        """A plain process with the service's env (python_env's bin/ first on PATH); it ends with the
        script that runs it (`name` and `labels` are only for the docker runtime's containers)."""
        env = dict(service.env)
        if plan.python_env:
            env["PATH"] = f"{plan.python_env}/bin:" + env.get("PATH", "/usr/local/bin:/usr/bin:/bin")
        return "env " + " ".join(q(f"{k}={v}") for k, v in env.items()) + " " + " ".join(q(a) for a in argv)

    def remove_labelled_script(self, plan: Plan, label: str) -> str:
        """Nothing to remove: a one-off process ends with the script (or channel) that runs it."""
        return "echo 0"

    def poll_script(self, plan: Plan, names: list[str]) -> str:
        script = self.list_script(plan)
        for name in names:
            script += f'; echo {q(POLL_MARK + name)}; tail -n 1 "$RUN"/{q(name)}/log 2>/dev/null | cut -c1-200'
        return script
