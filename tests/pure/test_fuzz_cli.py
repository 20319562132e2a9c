"""Command lines, fuzzed: every verb (found by walking the typer app) with generated mistakes.

Each generated command line carries at least one defect that must be refused before any node is
contacted: an unknown option, a bad choice, a number out of range or not a number, an option without
its value, a missing or extra argument, an odd path for the deployment file, the inventory or --out,
a --node/--role/--rank that names nothing in the plan, a bad --grep, --since or --sglang. Around it: valid
options in any order. The property: no traceback, exit 2, and exactly one stderr line, starting
`error:`, that names the option (or the file) of one of the defects and says what was expected.

Nothing here may reach a node: every valid deployment file comes with an inventory of loopback
addresses whose SSH port is 1 (nothing listens), never the shipped files' own addresses, and the
in-process runs fail at once if the fleet is asked to reach any node at all (a tripwire on
`Fleet.map`/`Fleet.host`, the only ways to a node). In-process (tests.helpers.run_cli): every verb
with every mistake it can carry, 5 examples each, and every number option with each out-of-range
value alone. As fresh `launcher` processes (the real import order): 2 examples per verb of the same
strategy. Fixed seed (derandomize), bounded examples, no deadline.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import typer.main
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from launcher import cli
from launcher.commands import logs as logs_command
from launcher.operations.context import load_plan
from launcher.transport import fleet as transport
from tests.helpers import CONFIGS, KNOWN_COMMANDS, cli_commands, fresh_env, loopback_inventory, run_cli
from tests.seeds import manifests

COMMANDS = cli_commands()
VERBS = {path: command for path, command in COMMANDS.items() if not getattr(command, "commands", None)}
SHIPPED = sorted(CONFIGS.glob("*.yaml"))
LAUNCHER = str(Path(sys.executable).with_name("launcher"))

# What each shipped file plans to with the loopback inventory: the selectors that are valid there.
with tempfile.TemporaryDirectory() as _tmp:
    _inventory = loopback_inventory(Path(_tmp) / "inventory.yaml")
    PLANS = {c.stem: load_plan(c, _inventory) for c in SHIPPED}
NODE_REFS = {ref for p in PLANS.values() for n in p.nodes for ref in (str(n.index), n.name, n.address)}
ROLES = {stem: sorted({x for s in p.services for x in (s.role, s.group, s.service) if x}) for stem, p in PLANS.items()}
RANKS = {
    stem: {
        role: sorted({s.rank for s in p.services if s.rank is not None and role in (s.role, s.group, s.service)})
        for role in ROLES[stem]
    }
    for stem, p in PLANS.items()
}
ALL_ROLES = {r for roles in ROLES.values() for r in roles}

# Placeholders for the workspace's paths (a NUL never occurs in a real argument).
CONFIG, INVENTORY, OUT_DIR, A_FILE, MANIFEST = "\0config:", "\0inventory", "\0out", "\0file", "\0manifest"
A_DIR = "\0dir"  # a small directory that exists (stage --from)
VERSION = re.compile(r"\d+\.\d+\.\d+(\.post\d+)?")

# What a path that is no deployment file gets told.
UNREADABLE_FILE = r"file not found|not a regular file|cannot read|expected a mapping|YAML syntax"
# What a path that is no LeaderWorkerSet manifest gets told (import).
UNREADABLE_MANIFEST = UNREADABLE_FILE + r"|Kubernetes object|expected a LeaderWorkerSet"


@dataclass(frozen=True)
class Defect:
    """One mistake on the command line: the error must name one of `names` and match `says`."""

    kind: str
    names: tuple[str, ...]
    says: str


@dataclass
class Line:
    path: tuple[str, ...]
    groups: list[list[str]] = field(default_factory=list)  # shuffled
    head: list[str] = field(default_factory=list)  # the verb's own first argument (scale's GROUP=N), valid
    tail: list[str] = field(default_factory=list)  # last: an option without its value, or `-- CMD`
    defects: list[Defect] = field(default_factory=list)

    def argv(self, ws: Path) -> list[str]:
        groups = [resolve(t, ws) for g in self.groups for t in g]
        return [*self.path, *self.head, *groups, *[resolve(t, ws) for t in self.tail]]


def resolve(token: str, ws: Path) -> str:
    """A token with its placeholder (whole, or after `--opt=`) replaced by the workspace's path."""

    def path(m: re.Match) -> str:
        if m.group(0).startswith(CONFIG):
            return str(ws / "configs" / f"{m.group(0)[len(CONFIG) :]}.yaml")
        paths = {INVENTORY: "inventory.yaml", OUT_DIR: "out", A_FILE: "a-file", MANIFEST: "lws.yaml", A_DIR: "configs"}
        return str(ws / paths[m.group(0)])

    return re.sub("\0(config:[\\w.-]+|inventory|out|file|manifest|dir)", path, token)


def shown(path: str) -> set[str]:
    """How an error may name a file given as `path`: as given, as a Path prints it, control characters escaped."""
    forms = {path, str(Path(path))}
    return forms | {repr(f)[1:-1] for f in forms}


# -- the parts of a command line --------------------------------------------------------------


def options(command) -> dict[str, object]:
    return {p.name: p for p in command.params if type(p).__name__ == "TyperOption"}


def long_name(param) -> str:
    return next((o for o in param.opts if o.startswith("--")), param.opts[0])


def kind_of(param) -> str:
    annotation = param.type_descriptor.annotation
    if param.type_descriptor.choices is not None:
        return "choice"
    if getattr(param, "is_flag", False):
        return "flag"
    return {int: "int", float: "float", Path: "path"}.get(annotation, "str")


def with_value(draw, name: str, value: str) -> list[str]:
    """`--opt VALUE` or `--opt=VALUE` (the latter only for long options)."""
    if name.startswith("--") and draw(st.booleans()):
        return [f"{name}={value}"]
    return [name, value]


odd_strings = st.one_of(
    st.sampled_from(
        [
            "",
            " ",
            ".",
            "..",
            "/",
            "-",
            "~",
            "~/x.yaml",
            "$HOME/x.yaml",
            "[bold]x[/]",
            "%s%n",
            "{}",
            "x" * 300,
            "a\nb.yaml",
            "tab\there",
            "cr\rx",
            "ü.yaml",
            "\u2028x",
            "\x1b[31mred",
            "C:\\deploy.yaml",
            "'\"",
            "a b",
        ]
    ),
    st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\0"), min_size=1, max_size=20),
)
# Paths that are no deployment file here: missing (the work directory is empty), a directory, empty,
# not YAML, or a name too long for the file system.
odd_paths = st.one_of(
    odd_strings.filter(lambda s: "/" not in s and s not in ("", ".", "..", "-", "~")).map(lambda s: s + ".yaml"),
    st.sampled_from(["", ".", "/", "/dev/null", "/proc/self/status", "/nonexistent/deploy.yaml", "x" * 300]),
)
not_numbers = st.one_of(
    st.sampled_from(["x", "ten", "1O", "5s", "1,5", "0x10", "½", "五", "--", "", " ", "٣", "1e", "1.2.3", "infinite"]),
    st.text(max_size=8),
).filter(lambda s: not any(c.isdigit() for c in s) and not _parses(s))


def _parses(s: str) -> bool:
    try:
        float(s)
    except ValueError:
        return False
    return True


def below(draw, param) -> str:
    low = param.min if param.min is not None else 0  # a count, a rank, a time: never negative
    if kind_of(param) == "int":
        return str(draw(st.integers(min_value=-(10**30), max_value=int(low) - 1)))
    return draw(
        st.one_of(
            st.floats(max_value=low, allow_nan=False).filter(lambda v: v < low).map(repr),  # not -0.0
            st.sampled_from(["nan", "-inf", "-1e999", "-0.001"]).filter(lambda s: float(s) < low or s == "nan"),
        )
    )


def above(draw, param) -> str | None:
    """Too large: past the option's maximum; seconds are always finite and at most a day."""
    if kind_of(param) == "int":
        if param.max is None:
            return None
        return str(draw(st.one_of(st.just(int(param.max) + 1), st.integers(min_value=int(param.max) + 1))))
    return draw(st.sampled_from(["inf", "1e999", "1e300", "1e12", "31536000"]))


def valid_number(draw, param) -> str:
    low = param.min if param.min is not None else 0
    high = param.max if param.max is not None else low + 100
    if kind_of(param) == "int":
        return str(draw(st.integers(int(low), int(min(high, low + 50)))))
    return repr(draw(st.floats(float(low), float(min(high, low + 100)), allow_nan=False)))


NUMERIC_SEMANTICS = {"rank"}  # checked against the plan (below), not only a range


def kinds_of(path: tuple[str, ...]) -> list[str]:
    """The mistakes a verb's command line can carry, from its options and arguments."""
    command = VERBS[path]
    opts = options(command)
    arguments = {p.name: p for p in command.params if type(p).__name__ == "TyperArgument"}
    kinds = ["unknown option"]
    if any(kind_of(p) != "flag" for p in opts.values()):
        kinds.append("no value")
    if any(kind_of(p) == "choice" for p in opts.values()):
        kinds.append("bad choice")
    if any(kind_of(p) in ("int", "float") for p in opts.values()):
        kinds += ["out of range", "not a number"]
    if "config" in arguments or "config_opt" in opts:
        kinds += ["odd config", "missing config"]
    if "config" in arguments or not arguments:
        kinds.append("extra argument")
    if "inventory" in opts:
        kinds.append("odd inventory")
    if "out_dir" in opts:
        kinds.append("unwritable --out")
    if "node" in opts:
        kinds += ["unknown node", "unknown role", "no selection"]
    if "rank" in opts:
        kinds.append("unknown rank")
    if "grep" in opts:
        kinds.append("bad --grep")
    if "since" in opts:
        kinds.append("bad --since")
    if "sglang" in opts:
        kinds += ["bad --sglang"] + (["missing --sglang"] if opts["sglang"].required else [])
    if "manifests" in arguments:
        kinds.append("odd manifest")
    if "command" in arguments:
        kinds += ["missing command", "two selections"]
    return kinds


# Mistakes that would keep the first one drawn from applying (it needs a valid file, no selection...).
CONFLICTS = {
    "unknown rank": {"odd config", "missing config", "unknown role"},
    "unwritable --out": {"odd config", "missing config", "bad choice"},
    "no selection": {"unknown node", "unknown role", "unknown rank", "two selections"},
    "missing config": {"odd config", "extra argument"},
    "missing --sglang": {"bad --sglang"},
}


@st.composite
def command_lines(draw, path: tuple[str, ...], first: str | None = None) -> Line:
    """A command line of `path` with the mistake `first` (drawn if not given) and up to two more."""
    command = VERBS[path]
    opts = options(command)
    arguments = {p.name: p for p in command.params if type(p).__name__ == "TyperArgument"}
    line = Line(path, head=["prefill=1"] if "request" in arguments else [])
    used: set[str] = set()  # options already on the line (a later valid one would hide a defect)

    def defect(kind: str, names, says: str, tokens: list[str] | None = None, last: bool = False) -> None:
        line.defects.append(Defect(kind, tuple(names), says))
        if tokens is not None:
            line.tail.extend(tokens) if last else line.groups.append(tokens)

    kinds = kinds_of(path)
    numeric = [n for n, p in opts.items() if kind_of(p) in ("int", "float") and n not in NUMERIC_SEMANTICS]
    value_opts = [n for n, p in opts.items() if kind_of(p) != "flag"]
    first = first or draw(st.sampled_from(kinds))
    others = [k for k in kinds if k != first and k not in CONFLICTS.get(first, ())]
    chosen = [first, *draw(st.lists(st.sampled_from(others), max_size=2, unique=True))]

    # The deployment file: a slot filled once (positional or -c), valid, odd, or left out.
    config_state = "odd" if "odd config" in chosen else "missing" if "missing config" in chosen else "valid"
    if not ("config" in arguments or "config_opt" in opts):
        config_state = "none"
    stem = draw(st.sampled_from(sorted(PLANS)))
    positional = "config" in arguments and ("config_opt" not in opts or draw(st.booleans()))
    if "extra argument" in chosen and "config" in arguments:
        positional = True
        if config_state == "missing":
            config_state = "valid"
            chosen.remove("missing config")
    if config_state in ("valid", "odd"):
        # migrate reads any file (it rewrites text): an empty or non-YAML one is not a mistake there
        readable = {"/dev/null", "/proc/self/status"} if path == ("migrate",) else set()
        value = CONFIG + stem if config_state == "valid" else draw(odd_paths.filter(lambda v: v not in readable))
        if positional:
            if value.startswith("-") and value != "-":
                value = "./" + value
            tokens = [value]
        else:
            tokens = with_value(draw, draw(st.sampled_from(opts["config_opt"].opts)), value)
            used.add("config_opt")
        if "extra argument" in chosen and positional:  # the extra one must come after it
            extra = draw(st.from_regex(r"[A-Za-z0-9_.][A-Za-z0-9_.]{0,10}", fullmatch=True))
            defect("extra argument", [extra], r"unexpected extra argument")
            tokens = [*tokens, extra]
        if config_state == "odd":
            defect("odd config", shown(value), UNREADABLE_FILE, tokens)
        else:
            line.groups.append(tokens)
    elif config_state == "missing":
        if arguments.get("config") is not None and arguments["config"].required:
            defect("missing config", ["'config'"], r"Missing argument")
        else:
            defect("missing config", ["CONFIG", "-c"], r"no deployment given")
    valid_config = config_state == "valid"

    # The inventory: with a valid deployment file always the loopback one, unless it is the mistake.
    if "inventory" in opts:
        name = draw(st.sampled_from(opts["inventory"].opts))
        if "odd inventory" in chosen:
            value = draw(odd_paths)
            defect(
                "odd inventory",
                shown(value),
                UNREADABLE_FILE,
                with_value(draw, name, value),
            )
        elif valid_config or draw(st.booleans()):
            line.groups.append(with_value(draw, name, INVENTORY))
        used.add("inventory")

    if "manifests" in arguments:  # import: a valid LeaderWorkerSet manifest, unless it is the mistake
        if "odd manifest" in chosen:
            value = draw(odd_paths)
            value = "./" + value if value.startswith("-") and value != "-" else value
            defect("odd manifest", shown(value), UNREADABLE_MANIFEST, [value])
        else:
            line.groups.append([MANIFEST])

    if "extra argument" in chosen and not arguments:
        extra = draw(st.from_regex(r"[A-Za-z0-9_.][A-Za-z0-9_.]{0,10}", fullmatch=True))
        defect("extra argument", [extra], r"unexpected extra argument", [extra])

    if "unknown option" in chosen:
        known = {o for p in command.params for o in (*p.opts, *getattr(p, "secondary_opts", []))} | {"--help"}
        bogus = draw(
            st.one_of(
                st.from_regex(r"--[a-z][a-z0-9-]{0,14}", fullmatch=True),
                st.from_regex(r"-[a-zA-Z]", fullmatch=True),
            ).filter(lambda o: o not in known)
        )
        tokens = [bogus] if draw(st.booleans()) or not bogus.startswith("--") else [f"{bogus}=1"]
        defect("unknown option", [bogus], r"No such option", tokens)

    if "bad choice" in chosen:
        name = draw(st.sampled_from(sorted(n for n, p in opts.items() if kind_of(p) == "choice")))
        choices = {c.value for c in opts[name].type_descriptor.choices}
        value = draw(
            st.one_of(st.sampled_from(["JSON", "Text", "", "yes", "strict ", "accept_new"]), odd_strings).filter(
                lambda v: v not in choices
            )
        )
        defect("bad choice", [long_name(opts[name])], r"is not one of", with_value(draw, long_name(opts[name]), value))
        used.add(name)

    if "out of range" in chosen or "not a number" in chosen:
        candidates = sorted(n for n in numeric if n not in used) + (["rank"] if "rank" in opts else [])
        for kind in ("out of range", "not a number"):
            if kind in chosen and candidates:
                name = draw(st.sampled_from(candidates))
                candidates.remove(name)
                param = opts[name]
                if kind == "not a number":
                    value, says = draw(not_numbers), r"valid (integer|number)"
                else:
                    high = above(draw, param) if draw(st.booleans()) else None
                    value = high if high is not None else below(draw, param)
                    says = r"(greater|less) than or equal to"
                defect(kind, [long_name(param)], says, with_value(draw, draw(st.sampled_from(param.opts)), value))
                used.add(name)

    # Selectors (--node, --role, --rank, --all): checked against the plan, so only a valid file with
    # loopback nodes gets valid ones.
    if "node" in opts:
        present: set[str] = set()  # selectors on the line
        if "unknown node" in chosen:
            ref = draw(st.one_of(odd_strings, st.integers(13, 10**6).map(str), st.sampled_from(["-1", "+0", "00"])))
            ref = ref if ref not in NODE_REFS else ref + "?"
            defect("unknown node", ["--node"], r"no node .*expected an index", with_value(draw, "--node", ref))
            present.add("node")
        if "unknown role" in chosen:
            role = draw(odd_strings.filter(lambda r: r not in ALL_ROLES))
            defect("unknown role", ["--role"], r"no service has role or group", with_value(draw, "--role", role))
            present.add("role")
        if "unknown rank" in chosen and valid_config and "role" not in present:
            role = draw(st.sampled_from(sorted(r for r, ks in RANKS[stem].items() if ks)))
            rank = draw(st.one_of(st.integers(-(10**6), -1), st.integers(max(RANKS[stem][role]) + 1, 10**30)))
            line.groups.append(with_value(draw, "--role", role))
            defect("unknown rank", ["--rank"], r"no rank|greater than or equal", with_value(draw, "--rank", str(rank)))
            present |= {"role", "rank"}
        if "two selections" in chosen:
            line.groups.append(["--all"])
            if not present:
                line.groups.append(with_value(draw, "--node", "0"))
            present |= {"node", "all_nodes"}
        if "command" in arguments and len(present & {"node", "role", "all_nodes"}) > 1:
            defect("two selections", ["--node", "--role", "--all"], r"choose exactly one of")
        if "no selection" in chosen and not present:
            says = r"choose exactly one of" if "command" in arguments else r"choose what to show"
            defect("no selection", ["--node", "--role"], says)
        elif not present & {"node", "role", "all_nodes"}:
            # A valid selection, so that the mistake is elsewhere.
            choices = [["--node", "0"]] + ([["--all"]] if "all_nodes" in opts else [])
            if valid_config:
                choices.append(["--role", draw(st.sampled_from(ROLES[stem]))])
            line.groups.append(draw(st.sampled_from(choices)))
        used |= {"node", "role", "rank", "all_nodes"}

    if "bad --grep" in chosen:
        pattern = draw(st.sampled_from(["(", "[", "*x", "a{2,1}", "(?P<", "\\", "x)", "[z-a]", "(?<=a+)b"]))
        defect("bad --grep", ["--grep"], r"not a regular expression", with_value(draw, "--grep", pattern))
        used.add("grep")

    if "bad --since" in chosen:
        since = draw(st.one_of(odd_strings, st.sampled_from(["10 minutes", "yesterday", "1d", "10M", "2026-11-24 10"])))
        since = since if not logs_command.SINCE.fullmatch(since) else since + "?"
        defect("bad --since", ["--since"], r"expected a duration", with_value(draw, "--since", since))
        used.add("since")

    if "bad --sglang" in chosen:
        version = draw(
            st.one_of(odd_strings, st.sampled_from(["0.5", "v0.5.21", "0.5.21rc1", "latest", "0.5.21 "])).filter(
                lambda v: not VERSION.fullmatch(v)
            )
        )
        defect("bad --sglang", ["--sglang"], r"expects a version like", with_value(draw, "--sglang", version))
        used.add("sglang")
    elif "missing --sglang" in chosen:
        defect("missing --sglang", ["--sglang"], r"Missing option")
        used.add("sglang")

    if "unwritable --out" in chosen and valid_config and "format" not in used:
        value = draw(st.sampled_from(["/dev/null/x", "/proc/version/scripts", A_FILE, "/proc/self/status"]))
        line.groups.append(["--format", "script"])
        defect("unwritable --out", ["--out"], r"cannot write", with_value(draw, "--out", value))
        used |= {"out_dir", "format"}

    # Valid options around the mistakes.
    for name, param in opts.items():
        if name in used or not (param.required or draw(st.booleans())):
            continue
        kind = kind_of(param)
        opt = draw(st.sampled_from(param.opts))
        if kind == "flag":
            line.groups.append([draw(st.sampled_from([*param.opts, *param.secondary_opts]))])
        elif kind == "choice":
            line.groups.append(with_value(draw, opt, draw(st.sampled_from(param.type_descriptor.choices)).value))
        elif kind in ("int", "float"):
            line.groups.append(with_value(draw, opt, valid_number(draw, param)))
        elif name == "grep":
            line.groups.append(with_value(draw, opt, "x"))
        elif name == "sglang":
            line.groups.append(with_value(draw, opt, "0.5.21"))
        elif name == "out_dir":
            line.groups.append(with_value(draw, opt, OUT_DIR))
        elif name == "source":  # stage --from
            line.groups.append(with_value(draw, opt, A_DIR))
        used.add(name)

    if "no value" in chosen:
        param = opts[draw(st.sampled_from(sorted(value_opts)))]
        opt = draw(st.sampled_from(param.opts))
        defect("no value", [opt], r"requires an argument", [opt], last=True)
        if "command" in arguments:
            defect("missing command", ["'command'"], r"Missing argument")
    elif "command" in arguments:
        if "missing command" in chosen:
            defect("missing command", ["'command'"], r"Missing argument")
        else:
            line.tail += ["--", "true"]
    if not line.defects:  # the mistakes drawn need a valid file, and this one is not: one that always applies
        defect("unknown option", ["--no-such-option"], r"No such option", ["--no-such-option"])
    line.groups = draw(st.permutations(line.groups))
    return line


# -- running them -----------------------------------------------------------------------------


class NodeContacted(BaseException):
    """Raised by the tripwire: a command line with a mistake got as far as reaching for a node."""


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    """Copies of the shipped files (migrate may rewrite nothing of the repository), the loopback
    inventory, a plain file, and an empty working directory (no .launcher/last.json)."""
    ws = tmp_path_factory.mktemp("fuzz-cli")
    shutil.copytree(CONFIGS, ws / "configs")
    loopback_inventory(ws / "inventory.yaml")
    (ws / "a-file").write_text("not a directory\n")
    (ws / "lws.yaml").write_text(manifests("002_5075cd10cd9de433.txt"))
    (ws / "cwd").mkdir()
    return ws


def assert_refused(line: Line, argv: list[str], code: int, out: str, err: str) -> None:
    shown_argv = " ".join(repr(a) if not a or not a.isprintable() or " " in a else a for a in argv)
    context = f"\n  launcher {shown_argv}\n  defects: {[d.kind for d in line.defects]}\n  stderr: {err!r}"
    assert "Traceback" not in err + out, context
    assert code == 2, f"exit {code}" + context
    lines = err.splitlines()
    assert len(lines) == 1, f"{len(lines)} stderr lines" + context
    assert lines[0].startswith("error: "), context
    assert any(any(n in lines[0] for n in d.names) and re.search(d.says, lines[0]) for d in line.defects), (
        "the error names none of the mistakes (or not what was expected)" + context
    )
    assert out == "", context


def run_in_process(line: Line, ws: Path, capsys) -> None:
    argv = line.argv(ws)
    shutil.rmtree(ws / "cwd" / ".launcher", ignore_errors=True)
    here = os.getcwd()
    os.chdir(ws / "cwd")
    try:
        code, out, err = run_cli(argv, capsys)
    except NodeContacted:
        raise AssertionError(f"reached for a node: launcher {' '.join(map(repr, argv))}, {line.defects}") from None
    finally:
        os.chdir(here)
    assert_refused(line, argv, code, out, err)


@pytest.fixture
def tripwire(monkeypatch):
    """No node may be reached: every line here has a mistake that must stop it first."""

    def refuse(*args, **kwargs):
        raise NodeContacted("a command line with a mistake reached for a node")

    monkeypatch.setattr(transport.Fleet, "map", refuse)
    monkeypatch.setattr(transport.Fleet, "host", refuse)
    # Typer builds the same click command from the app on every call (~50 ms, most of a run here):
    # build it once. The fresh-process test below runs the real, uncached path.
    built, build = typer.main.get_command(cli.app), typer.main.get_command
    monkeypatch.setattr(typer.main, "get_command", lambda app: built if app is cli.app else build(app))
    for name in ("LAUNCHER_CONFIG", "LAUNCHER_INVENTORY"):
        monkeypatch.delenv(name, raising=False)


def test_the_fuzz_covers_every_known_verb() -> None:
    groups = {p for p, command in COMMANDS.items() if getattr(command, "commands", None)}
    assert set(VERBS) >= KNOWN_COMMANDS - groups, sorted(VERBS)
    assert {"etcd", "nats", "frontend", "prefill", "decode"} <= ALL_ROLES
    assert any(RANKS[stem].get("decode") for stem in RANKS)


# Every verb with every mistake it can carry first (and up to two more drawn around it).
CASES = [(path, kind) for path in sorted(VERBS) for kind in kinds_of(path)]


@pytest.mark.parametrize(("path", "kind"), CASES, ids=[f"{' '.join(p)}: {k}" for p, k in CASES])
@settings(
    max_examples=5,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.filter_too_much],
)
@given(data=st.data())
def test_a_command_line_with_a_mistake_is_refused_in_one_line(path, kind, data, workspace, tripwire, capsys) -> None:
    line = data.draw(command_lines(path, kind), label="line")
    assert kind in {d.kind for d in line.defects}, "the strategy did not apply the mistake it was asked for"
    run_in_process(line, workspace, capsys)


NUMBER_OPTIONS = [
    (path, name)
    for path, command in sorted(VERBS.items())
    for name, p in options(command).items()
    if kind_of(p) in ("int", "float")
]


def out_of_range(param) -> list[str]:
    """What no number option takes: negatives, past its bounds; for seconds also nan, inf and 1e300."""
    low = param.min if param.min is not None else 0
    values = ["-1", "x"]
    if kind_of(param) == "int":
        values += [str(int(low) - 1)] + ([str(int(param.max) + 1), str(10**30)] if param.max is not None else [])
    else:
        values += [repr(low - 0.25), "nan", "inf", "1e300"]
    return values


@pytest.mark.parametrize(("path", "name"), NUMBER_OPTIONS, ids=[f"{' '.join(p)} {n}" for p, n in NUMBER_OPTIONS])
def test_every_number_option_refuses_what_is_out_of_range(path, name, workspace, tripwire, capsys) -> None:
    # Systematic, beside the fuzz: each value alone on an otherwise valid line, so nothing else stops it.
    param = options(VERBS[path])[name]
    selection = {"logs": ["--node", "0"], "exec": ["--node", "0"]}.get(path[0], [])
    for value in out_of_range(param):
        says = r"valid (integer|number)" if value == "x" else r"(greater|less) than or equal to"
        line = Line(path, [["-c", CONFIG + "dsr1-104gpu", "-i", INVENTORY, *selection, long_name(param), value]])
        line.tail = ["--", "true"] if path == ("exec",) else []
        line.head = ["prefill=1"] if path == ("scale",) else []
        line.defects = [Defect("out of range", (long_name(param),), says)]
        run_in_process(line, workspace, capsys)


@functools.cache
def generated(path: tuple[str, ...], count: int) -> tuple[Line, ...]:
    """The first `count` examples of the strategy for one verb, with the same fixed seed."""
    lines: list[Line] = []

    @settings(max_examples=count, derandomize=True, database=None, phases=[Phase.generate], deadline=None)
    @given(command_lines(path))
    def collect(line: Line) -> None:
        lines.append(line)

    collect()
    return tuple(lines)


def sample(per_verb: int, pool: int = 40) -> list[Line]:
    """`per_verb` examples of each verb, each chosen among the first `pool` to bring mistakes the
    ones before it did not (the very first example is always the simplest one)."""
    lines: list[Line] = []
    for path in sorted(VERBS):
        candidates, seen = list(generated(path, pool)), set()
        for _ in range(per_verb):
            best = max(candidates, key=lambda line: len({d.kind for d in line.defects} - seen))
            candidates.remove(best)
            seen |= {d.kind for d in best.defects}
            lines.append(best)
    return lines


def test_the_same_mistakes_as_fresh_processes(workspace) -> None:
    """One line of each verb (the one with the most kinds of mistake) in a fresh `launcher`: the verb's own
    module loaded first, as a user's run loads it (the in-process tests above cover the rest)."""
    lines = sample(per_verb=1)
    assert len(lines) >= len(VERBS)
    env = fresh_env()

    def run(line: Line) -> subprocess.CompletedProcess:
        argv = line.argv(workspace)
        return subprocess.run(
            [LAUNCHER, *argv], capture_output=True, text=True, timeout=120, cwd=workspace / "cwd", env=env
        )

    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(run, lines))
    for line, proc in zip(lines, results, strict=True):
        assert_refused(line, line.argv(workspace), proc.returncode, proc.stdout, proc.stderr)


def test_every_kind_of_mistake_is_fuzzed() -> None:
    # Each kind is fuzzed on every verb that can carry it (CASES): none may drop out of the table.
    kinds = {kind for _, kind in CASES}
    assert kinds >= {
        "unknown option",
        "no value",
        "bad choice",
        "out of range",
        "not a number",
        "odd config",
        "missing config",
        "extra argument",
        "odd inventory",
        "unwritable --out",
        "unknown node",
        "unknown role",
        "unknown rank",
        "no selection",
        "two selections",
        "bad --grep",
        "bad --since",
        "bad --sglang",
        "missing --sglang",
        "missing command",
        "odd manifest",
    }, kinds
