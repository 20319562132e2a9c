"""The fabric check's script on one node: its jobs (launcher/remote/fabric_check.py, fed on stdin, in
containers or in python_env) all at once, each job's exit code, output and last error lines after a mark."""

from __future__ import annotations

JOB_MARK = "@@fabric-job"
ERR_MARK = "@@fabric-stderr"
ERR_TAIL = 3000  # bytes of each job's stderr kept (torch and NCCL say why there)


LIVE_MARK = "@@fabric-live"  # a line the launcher reads as it comes: `@@fabric-live K LINE`
END_MARK = "@@fabric-end"  # `@@fabric-live K @@fabric-end CODE`: job K ended


def jobs_script(commands: list[str], cleanup: str = "") -> str:
    """Run each command at once with the program (this script's stdin: the run's token, then the
    program) as its stdin; pass on at once each job's `@@fabric-...` lines and its end (LIVE_MARK); then
    print each one's `@@fabric-job K CODE`, its stdout, `@@fabric-stderr K` and the tail of its stderr.
    `cleanup` first: what a killed earlier run left."""
    lines = [cleanup or "true", "d=$(mktemp -d) || exit 1", "trap 'rm -rf \"$d\"' EXIT", 'cat > "$d/program"']
    for k, command in enumerate(commands):
        live = f'printf \'%s\\n\' "$l" >> "$d/{k}.out"; '
        live += f"case $l in @@fabric-*) printf '{LIVE_MARK} {k} %s\\n' \"$l\";; esac"
        lines.append(
            f'( ( ( {command} ) < "$d/program" 2> "$d/{k}.err"; echo $? > "$d/{k}.rc" ) | '
            f'while IFS= read -r l || [ -n "$l" ]; do {live}; done; '
            f'echo "{LIVE_MARK} {k} {END_MARK} $(cat "$d/{k}.rc" 2>/dev/null || echo 255)" ) &'
        )
    lines.append("wait")
    for k in range(len(commands)):
        lines += [
            f'echo "{JOB_MARK} {k} $(cat "$d/{k}.rc" 2>/dev/null || echo 255)"',
            f'cat "$d/{k}.out"; echo',
            f'echo "{ERR_MARK} {k}"; tail -c {ERR_TAIL} "$d/{k}.err"; echo',
        ]
    return "\n".join(lines)


def parse_jobs(stdout: str) -> dict[int, tuple[int, str, str]]:
    """A jobs script's output -> job index -> (exit code, stdout, stderr tail)."""
    out: dict[int, tuple[int, str, str]] = {}
    current: int | None = None
    code, body, err, in_err = 255, [], [], False
    for line in stdout.splitlines():
        if line.startswith(JOB_MARK + " "):
            if current is not None:
                out[current] = (code, "\n".join(body).strip(), "\n".join(err).strip())
            _, k, rc = (line.split() + ["255"])[:3]
            current, code, body, err, in_err = int(k), int(rc) if rc.lstrip("-").isdigit() else 255, [], [], False
        elif line.startswith(ERR_MARK + " "):
            in_err = True
        elif current is not None:
            (err if in_err else body).append(line)
    if current is not None:
        out[current] = (code, "\n".join(body).strip(), "\n".join(err).strip())
    return out


# How the program starts on a node: `python -c BOOT JOB_JSON`, stdin the run's token on one line and then
# the program. The token is never in argv (`ps`, `docker inspect`); BOOT itself holds nothing secret.
BOOT = (
    "import sys;t=sys.stdin.readline().strip();s=sys.stdin.read();"
    "exec(compile(s,'fabric_check.py','exec'),{'__name__':'__main__','FABRIC_TOKEN':t})"
)


def program_stdin(token: str, program: str) -> str:
    return token + "\n" + program
