"""Offline knowledge of SGLang flags and env vars that were renamed, removed or changed meaning.

Facts from the SGLang wheels of each version (see shared/reference/sglang-and-vllm.md). `check` says
what is stale for a declared version; `migrate_argv` rewrites an argv for it. A flag renamed in a
version that still accepts the old spelling with a warning is reported, not an error: it starts.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from packaging.version import Version

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


def check(argv: list[str], env: dict[str, str], sglang: str) -> list[Finding]:
    v = Version(sglang)
    found: list[Finding] = []
    present = A.flags(argv)
    for rule in FLAGS:
        if rule.old not in present:
            continue
        state = rule.applies(v)
        if state:
            found.append(
                Finding(
                    rule.old,
                    "error" if state == "removed" else "warning",
                    f"{rule.why}: {_replacement(rule, argv)} (declared SGLang {sglang})",
                )
            )
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
    for rule in FLAGS:
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
    for rule in FLAGS:
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
