"""An engine parser's passing verdict, kept on the node for the next `up` of the same engine and argv.

Why: every `up` runs each role's exact argv through its engine's parser where the role runs, starting
nothing (operations/checks.py). On a real image that is a container start and an SGLang import, about
8 CPU-s and several seconds per role, paid again by every unchanged `up` and every step of a roll. The
verdict depends only on what the check runs: its whole script (image reference or env, mounts, the argv),
the checker program, the files the parser opens (a verdict that opened any is not kept), and the
engine's installed code. That code is named by the image's ID (a digest of its content) on docker, and on
the process runtime by a digest of the names in the python_env's site-packages (installing, upgrading or
removing a package changes them; an edit inside an editable install, or a package rebuilt under the same
version, does not, which is why `doctor` never replays). A verdict that passed is written to
`<state_dir>/verdicts/<key>-<identity>` and replayed while all of them are the same; anything else runs
the parser again, and a verdict is kept only if the identity did not change while it ran.

The state dir is the launcher's own (guard_script: this user's, nobody else may write it), so a replayed
verdict is one this launcher wrote; it is still judged as a fresh one is (checks._verdict)."""

from __future__ import annotations

import hashlib
import posixpath

from launcher.runtime.lock import guard_script
from launcher.runtime.shell import q

KEPT_MARK = "LAUNCHER_VERDICT_KEPT"
KEPT_DAYS = 30  # verdicts older than this are removed when a new one is written: the directory stays small
REPLAY_BYTES = 65536  # engine_check prints one JSON line; a kept file larger than this is cut, then fails


def key(script: str, checker: str) -> str:
    """What the verdict depends on besides the image's content: the check's script and the checker."""
    digest = hashlib.sha256(f"{script}\0{checker}".encode())
    return digest.hexdigest()[:32]


def image_identity(image: str) -> str:
    """A shell command printing the ID of IMAGE on this node's Docker engine (sha256:<hex>)."""
    return f"docker image inspect --format '{{{{.Id}}}}' {q(image)} 2>/dev/null"


def env_identity(python_env: str) -> str:
    """A shell command printing a digest of what the process runtime's check runs with: PYTHON_ENV's
    python3, the names in its site-packages (a package installed, upgraded or removed changes them: a
    distribution's `NAME-VERSION.dist-info`), and the node's own variables that python and the engines read
    (the check's `env K=V` sets only the service's); nothing where the env has no python3 or no
    site-packages. Names, not times: python writes `__pycache__` into a package's directory the first time
    it imports it, which changes the directory's time and nothing installed."""
    env = q(python_env)
    parts = [
        f"ls -lL --full-time {env}/bin/python3",
        f"ls -1 -I __pycache__ {env}/lib/python3*/site-packages",
        "{ env | grep -E '^(PYTHON|SGLANG_|VLLM_|DYN_|LD_LIBRARY_PATH=)' | sort || true; }",
    ]
    return f"l=$({' && '.join(parts)} 2>/dev/null) && printf '%s\\n' \"$l\" | sha256sum | cut -c1-64"


def kept_or_checked(state_dir: str, identity: str, script: str, checker: str) -> str:
    """SCRIPT (a check that prints the checker's JSON verdict last), wrapped so that a passing verdict for
    the same script, checker and IDENTITY (a command printing what the engine's code is) is replayed (after
    KEPT_MARK) instead of run, and a new passing one that read no file is kept. Without a usable state dir
    or identity it just runs SCRIPT."""
    directory = posixpath.join(state_dir, "verdicts")
    # Replayed only from a file and directory this user owns and nobody else may write (the state dir's
    # guard alone allows a 0750 one, and the directory may predate a stricter umask).
    own = '[ -O "$d" ] && [ -O "$f" ] && [ -z "$(find "$d" "$f" -maxdepth 0 -perm /022 2>/dev/null)" ]'
    # Kept: the check passed, its verdict (the last line) read no file whose content the key does not cover
    # (engine_check's "reads": a --config file, a chat template), fits the replay, and the identity held.
    kept = (
        f'[ "$rc" = 0 ] && [ -n "$f" ] && [ "${{#last}}" -le {REPLAY_BYTES} ] && '
        "case $last in *'\"ok\": true'*'\"reads\": []'*) true ;; *) false ;; esac && "
        f'[ "$({identity})" = "$id" ]'
    )
    write = (
        f'umask 077; mkdir -p "$d" && chmod 0700 "$d" && find "$d" -maxdepth 1 -type f -mtime +{KEPT_DAYS} -delete; '
        'set -C; printf \'%s\\n\' "$last" > "$f.$$" && mv -f "$f.$$" "$f"'
    )
    return "\n".join([
        # bash: the guard's own syntax, whatever the login shell is
        f"if bash -c {q(guard_script(state_dir))} >/dev/null 2>&1; then d={q(directory)}; else d=; fi",
        f"id=$({identity}) || id=",
        'h=${id#sha256:}; f=',
        f'case $h in ""|*[!0-9a-f]*) ;; *) [ -n "$d" ] && f="$d/{key(script, checker)}-$h" ;; esac',
        f'if [ -n "$f" ] && [ -f "$f" ] && [ ! -L "$f" ] && {own}; then',
        f"  echo {KEPT_MARK}; head -c {REPLAY_BYTES} \"$f\"; exit 0",
        "fi",
        f"out=$({script}); rc=$?",
        "printf '%s\\n' \"$out\"",
        "last=$(printf '%s\\n' \"$out\" | tail -n 1)",
        f"if {kept}; then ( {write} ) 2>/dev/null; fi",
        'exit "$rc"',
    ])  # fmt: skip
