"""Offline knowledge of SGLang flags and env vars that were renamed, removed or changed meaning.

Two sources: the hand-written rules below (FLAGS, ENVS: facts from the SGLang wheels of each version, see
shared/reference/sglang-and-vllm.md), and the shipped flag table (launcher/plan/flagtables/sglang.json,
written by scripts/flag-drift from the real parsers of consecutive releases), which adds every flag a
release after its baseline renamed or removed, and the flags each release's parser marks deprecated.
A hand rule wins over the table for the same flag. `check` says what is stale for a declared version;
`migrate_argv` rewrites an argv for it. A flag renamed in a version that still accepts the old spelling
with a warning is reported, not an error: it starts.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from packaging.version import Version

from launcher.plan import flagtables
from launcher.plan.engines import args as A


@dataclass(frozen=True)
class Rename:
    old: str
    new: list[str]  # the replacement tokens; "{value}" is the old flag's value(s)
    deprecated: str | None  # first version that warns (still works)
    removed: str  # first version where the old spelling fails
    why: str

    def applies(self, v: Version) -> str | None:
        if v >= Version(self.removed):
            return "removed"
        if self.deprecated and v >= Version(self.deprecated):
            return "deprecated"
        return None


FLAGS = [
    Rename(
        "--enable-deepep-moe",
        ["--moe-a2a-backend", "deepep"],
        "0.4.10.post2",
        "0.5.3",
        "was removed in SGLang 0.5.5 (0.5.3-0.5.4 abort on it)",
    ),
    Rename(
        "--enable-ep-moe",
        ["--ep-size", "{tp}"],
        "0.4.10.post2",
        "0.5.3",
        "was removed in SGLang 0.5.5 (0.5.3-0.5.4 abort on it); expert parallelism is --ep-size",
    ),
    Rename(
        "--cuda-graph-bs",
        ["--cuda-graph-bs-decode", "{value}"],
        "0.5.15",
        "0.5.20",
        "was removed by SGLang 0.5.20, where it is an ambiguous prefix of --cuda-graph-bs-decode/-prefill",
    ),
    Rename(
        "--cuda-graph-max-bs",
        ["--cuda-graph-max-bs-decode", "{value}"],
        "0.5.15",
        "0.5.20",
        "was removed by SGLang 0.5.20, where it is an ambiguous prefix of --cuda-graph-max-bs-decode/-prefill",
    ),
    Rename(
        "--disaggregation-decode-tp", [], None, "0.5.10", "was removed in SGLang 0.5.10 (the decode side is discovered)"
    ),
    Rename(
        "--disaggregation-decode-dp", [], None, "0.5.10", "was removed in SGLang 0.5.10 (the decode side is discovered)"
    ),
    Rename(
        "--disable-cuda-graph",
        ["--cuda-graph-backend-decode", "disabled", "--cuda-graph-backend-prefill", "disabled"],
        "0.5.15",
        "99",
        "is deprecated since SGLang 0.5.15",
    ),
]


@dataclass(frozen=True)
class EnvFact:
    name: str
    since: str
    message: str


ENVS = [
    EnvFact(
        "SGLANG_NUM_RESERVED_DECODE_TOKENS",
        "0.4.8",
        "is no longer read since SGLang 0.4.8 (silently ignored): use --num-reserved-decode-tokens",
    ),
    EnvFact(
        "SGL_DISABLE_TP_MEMORY_INBALANCE_CHECK",
        "0.5.8",
        "is copied verbatim to SGLANG_ENABLE_TP_MEMORY_INBALANCE_CHECK since SGLang 0.5.8, inverting its meaning:"
        " set SGLANG_ENABLE_TP_MEMORY_INBALANCE_CHECK=0 to disable the check",
    ),
]


@dataclass(frozen=True)
class Finding:
    what: str  # the flag or env var
    severity: str  # "error" (start-up fails) | "warning" (starts, but not as meant)
    message: str

    def __str__(self) -> str:
        return f"{self.what} {self.message}"


NAMES = {"sglang": "SGLang", "vllm": "vLLM"}


def _table_rule(change: flagtables.Change, engine: str = "sglang") -> Rename:
    """A table entry as a rule: a valued flag's successor takes its value, a switch's keeps its fixed one."""
    new = list(change.new)
    if change.takes_value and len(new) == 1:
        new.append("{value}")
    what = {"renamed": "was renamed", "removed_with_replacement": "was removed", "removed": "was removed"}
    why = f"{what[change.kind]} in {NAMES[engine]} {change.version} (flag table)"
    if change.prefix_of:
        several = len(change.prefix_of) > 1
        why += ", where it is an ambiguous prefix" if several else f", where argparse takes it as {change.prefix_of[0]}"
    return Rename(change.option, new, None, change.version, why)


def rules(sglang: str | None = None, engine: str = "sglang") -> list[Rename]:
    """The hand-written rules (SGLang's), then the shipped table's changes up to the release `sglang`
    (all when None) that no hand rule covers."""
    hand = FLAGS if engine == "sglang" else []
    table = flagtables.load(engine)
    if table is None:
        return list(hand)
    covered = {rule.old for rule in hand}
    changes = table.changes_up_to(sglang or table.newest)
    return hand + [_table_rule(c, engine) for c in changes if c.option not in covered]


def _deprecated_findings(present: dict, sglang: str, engine: str = "sglang") -> list[Finding]:
    """Flags the declared release's own parser marks deprecated (from the table): they start, with a warning."""
    table = flagtables.load(engine)
    if table is None:
        return []
    covered = {rule.old for rule in FLAGS} if engine == "sglang" else set()
    found = []
    for change in table.deprecated_in(sglang):
        if change.option in present and change.option not in covered:
            said = re.sub(r"^\W*deprecated\W*", "", change.note, flags=re.I).split(")")[0].strip()
            said = said or (f"use {' '.join(change.new)}" if change.new else "")
            found.append(
                Finding(
                    change.option, "warning", f"is deprecated in {NAMES[engine]} {change.version} (its parser: {said})"
                )
            )
    return found


def _replacement(rule: Rename, argv: list[str]) -> str:
    if not rule.new:
        return "remove it"
    values = A.flags(argv).get(rule.old, [])
    tp = A.value(argv, "--tp-size", "--tp", "--tensor-parallel-size") or "TP"
    tokens = []
    for token in rule.new:
        if token == "{value}":
            tokens += values or ["N"]
        else:
            tokens.append(token.replace("{tp}", tp))
    return "use " + " ".join(tokens)


def check(argv: list[str], env: dict[str, str], sglang: str, engine: str = "sglang") -> list[Finding]:
    """What is stale in an argv (and env) for the declared release of `engine` ("sglang" or "vllm")."""
    v = Version(sglang)
    found: list[Finding] = []
    present = A.flags(argv)
    for rule in rules(sglang, engine):
        if rule.old not in present:
            continue
        state = rule.applies(v)
        if state:
            found.append(
                Finding(
                    rule.old,
                    "error" if state == "removed" else "warning",
                    f"{rule.why}: {_replacement(rule, argv)} (declared {NAMES[engine]} {sglang})",
                )
            )
    found += _deprecated_findings(present, sglang, engine)
    if engine != "sglang":
        return found
    for fact in ENVS:
        if fact.name in env and v >= Version(fact.since):
            found.append(Finding(fact.name, "warning", fact.message))
    if v >= Version("0.5.3"):
        for name in env:
            if name.startswith("SGL_") and name not in {f.name for f in ENVS}:
                found.append(
                    Finding(
                        name,
                        "warning",
                        f"is deprecated since SGLang 0.5.3: set SGLANG_{name[4:]} too"
                        " (0.5.3 still reads only some old names; later versions copy and warn)",
                    )
                )
    return found


def migrate_argv(argv: list[str], sglang: str) -> list[str]:
    """argv with every flag that is removed (or deprecated) in `sglang` replaced by its successor."""
    v = Version(sglang)
    out = list(argv)
    for rule in rules(sglang):
        if rule.old not in A.flags(out) or not rule.applies(v):
            continue
        replacement = _replacement(rule, out)
        tokens = [] if replacement == "remove it" else replacement.removeprefix("use ").split()
        # Put the successor where the old flag was, so diffs stay readable.
        position = next(i for i, t in enumerate(out) if t.partition("=")[0] == rule.old)
        rest = A.without(out, rule.old)
        out = rest[:position] + tokens + rest[position:]
    return out


# Text rewrites of a deployment file: mapping keys (`enable-deepep-moe: true`) and list/string tokens.
def migrate_text(text: str, sglang: str) -> str:
    v = Version(sglang)
    for rule in rules(sglang):
        if not rule.applies(v):
            continue
        key = rule.old.removeprefix("--")
        new_key = rule.new[0].removeprefix("--") if rule.new else None
        if rule.new and rule.new[1:] and "{" not in rule.new[1]:
            # flag without value -> flag with a fixed value (enable-deepep-moe: true -> moe-a2a-backend: deepep)
            fixed = " ".join(rule.new[1:])
            text = re.sub(
                rf"^(\s*){re.escape(key)}:\s*(true|yes|on)\s*(#.*)?$",
                rf"\g<1>{new_key}: {fixed}  # was {key}: true ({rule.why})",
                text,
                flags=re.M | re.I,
            )
            text = _replace_token(text, rule.old, rule.new)
        elif new_key:
            text = re.sub(
                rf"^(\s*){re.escape(key)}:(\s*)(.*?)\s*(#.*)?$",
                rf"\g<1>{new_key}:\g<2>\g<3>  # was {key} ({rule.why})",
                text,
                flags=re.M,
            )
            text = _replace_token(text, rule.old, rule.new[:1])
        else:
            # removed without a successor: the key is commented out, with why (the parser would refuse it)
            text = re.sub(
                rf"^(\s*){re.escape(key)}:(.*?)\s*$",
                rf"\g<1># {key}:\g<2>  # {rule.why}",
                text,
                flags=re.M,
            )
    return text


def _replace_token(text: str, old: str, new: list[str]) -> str:
    """Replace an argv token written in a YAML block list, a flow list or a command string (not in comments)."""
    token = re.compile(rf"(?<![\w-]){re.escape(old)}(?![\w-])")
    out = []
    for line in text.splitlines(keepends=True):
        code, hash_, comment = line.partition("#") if not line.lstrip().startswith("#") else ("", "", line)
        if comment and not hash_:
            out.append(line)
            continue
        block = re.match(r"^(\s*)- " + token.pattern + r"\s*$", code)
        if block:
            end = "\n" if line.endswith("\n") else ""
            out.append("\n".join(f"{block.group(1)}- {t}" for t in new) + end)
            continue
        separator = ", " if "[" in code else " "
        out.append(token.sub(separator.join(new), code) + hash_ + comment)
    return "".join(out)


@dataclass(frozen=True)
class TableUse:
    """The shipped flag table a plan's engine flags were checked against, and for which release."""

    engine: str  # "sglang" | "vllm"
    path: str  # relative to the package's parent (launcher/plan/flagtables/sglang.json)
    known: tuple[str, ...]  # the releases it covers, oldest first
    declared: str  # the file's versions.sglang / versions.vllm

    @property
    def newest(self) -> str:
        return self.known[-1]

    @property
    def behind(self) -> bool:
        """The declared release is older than the newest the table knows."""
        return Version(self.declared) < Version(self.newest)

    def line(self) -> str:
        name = NAMES[self.engine]
        text = (
            f"flag table {self.path} ({name} {self.known[0]} .. {self.newest}) for the declared {name} {self.declared}"
        )
        if Version(self.declared) > Version(self.newest):
            text += f": newer than the table's newest, so only changes up to {self.newest} are known"
        return text

    def behind_line(self) -> str:
        line = (
            f"{NAMES[self.engine]} {self.declared} is pinned; the newest release the flag table knows is {self.newest}"
        )
        if self.engine == "sglang":
            return line + f" (`launcher migrate CONFIG --sglang {self.newest} --dry-run` shows what would change)"
        return line + f" (docs/drift/vllm-{self.newest}.md says what changed)"


def table_use(version: str, engine: str = "sglang") -> TableUse | None:
    table = flagtables.load(engine)
    if table is None:
        return None
    where = table.path.relative_to(table.path.parents[3]).as_posix()
    return TableUse(engine, where, tuple(table.known), version)
