"""The engines' option sets per release, as their real parsers declare them, and what changed between
releases: the flag tables the launcher ships.

`scripts/flag-drift` builds each release's parser env, dumps the parser's options
(`engine_check.py --options`) into `options/ENGINE-VERSION.json` and writes the drift of every release
against the one before it into `ENGINE.json` with `diff`. `flagdrift` reads `ENGINE.json` (`load`): the
flags a release removed, renamed or deprecated, with the replacement the parser's own note names.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from pathlib import Path

from packaging.version import Version

HERE = Path(__file__).resolve().parent
FORMAT = 1


def _by_option(options: list[dict]) -> dict[str, dict]:
    return {name: record for record in options for name in record["options"]}


def _primary(record: dict) -> str:
    """The spelling a changelog names: the first long option."""
    return next((o for o in record["options"] if o.startswith("--")), record["options"][0])


def _prefix_of(option: str, names: set[str]) -> list[str]:
    """What argparse's allow_abbrev makes of an option that is gone: one match silently takes its place,
    several make it an 'ambiguous option' error."""
    return sorted(n for n in names if n.startswith(option) and n.startswith("--"))


def _gone(old: dict, new: dict, current: dict[str, dict]) -> tuple[list[dict], list[dict], list[dict]]:
    """Option strings of the old set missing from the new: renamed, removed with replacement, removed."""
    renamed, replaced, removed = [], [], []
    added = {n for n in current if n not in _by_option(old["options"])}
    by_dest: dict[str, list[dict]] = {}
    for record in new["options"]:
        by_dest.setdefault(record["dest"], []).append(record)
    accepted = set(new.get("also_accepts", []))  # not registered, yet the parser takes them (its probe)
    for name, record in _by_option(old["options"]).items():
        if name in current or name in accepted or not name.startswith("--"):
            continue
        entry = {"option": name, "takes_value": record["nargs"] != 0}
        if new.get("allow_abbrev", True) and (prefix := _prefix_of(name, set(current))):
            entry["prefix_of"] = prefix
        # the same field under a new spelling, or the same option without this alias
        successors = [
            r for r in by_dest.get(record["dest"], []) if set(r["options"]) & (added | set(record["options"]))
        ]
        if successors and not record.get("deprecated"):
            renamed.append({**entry, "new": [_primary(successors[0])]})
        elif record.get("replacement") and record["replacement"][0] in current:
            replaced.append({**entry, "new": record["replacement"], "note": record.get("note", "")})
        elif successors:
            renamed.append({**entry, "new": [_primary(successors[0])]})
        else:
            removed.append(entry)
    return renamed, replaced, removed


def _kept(old: dict, new: dict) -> tuple[list[dict], list[dict], list[dict]]:
    """Options in both sets (by their first long spelling): newly deprecated, default changed, choices changed."""
    before = {_primary(r): r for r in old["options"]}
    deprecated, defaults, choices = [], [], []
    for record in new["options"]:
        name = _primary(record)
        previous = before.get(name)
        if record.get("deprecated") and not (previous or {}).get("deprecated"):
            deprecated.append({"option": name, "new": record.get("replacement", []), "note": record.get("note", "")})
        if previous is None:
            continue
        if previous["default"] != record["default"]:
            defaults.append({"option": name, "old": previous["default"], "new": record["default"]})
        if previous["choices"] is not None and record["choices"] is not None:
            gone = [c for c in previous["choices"] if c not in record["choices"]]
            came = [c for c in record["choices"] if c not in previous["choices"]]
            if gone or came:
                choices.append({"option": name, "removed": gone, "added": came})
    return deprecated, defaults, choices


def diff(old: dict, new: dict) -> dict:
    """What changed from one option set (`engine_check.py --options`) to the next."""
    current = _by_option(new["options"])
    renamed, replaced, removed = _gone(old, new, current)
    known = _by_option(old["options"])
    taken = {n for entry in renamed for n in entry["new"]}
    added = [_primary(r) for r in new["options"] if not set(r["options"]) & set(known)]
    deprecated, defaults, choices = _kept(old, new)
    return {
        "version": new["version"],
        "previous": old["version"],
        "renamed": renamed,
        "removed_with_replacement": replaced,
        "removed": removed,
        "deprecated": deprecated,
        "default_changed": defaults,
        "choices_changed": choices,
        "new": [name for name in added if name not in taken],
        "still_accepted": sorted(n for n in new.get("also_accepts", []) if n in known),
    }


def table(engine: str, option_sets: list[dict]) -> dict:
    """The shipped table of an engine: each release's drift against the one before (oldest first)."""
    ordered = sorted(option_sets, key=lambda s: Version(s["version"]))
    return {
        "format": FORMAT,
        "engine": engine,
        "baseline": ordered[0]["version"],
        "releases": [diff(a, b) for a, b in zip(ordered, ordered[1:], strict=False)],
        "deprecated": {s["version"]: _deprecated_in(s) for s in ordered},
    }


def _deprecated_in(option_set: dict) -> list[dict]:
    """Every option a release's parser marks deprecated (still accepted, with a warning)."""
    return [
        {"option": _primary(r), "new": r.get("replacement", []), "note": r.get("note", "")}
        for r in option_set["options"]
        if r.get("deprecated")
    ]


# -- what the launcher reads at plan time ------------------------------------------------------------


@dataclass(frozen=True)
class Change:
    option: str
    kind: str  # "renamed" | "removed_with_replacement" | "removed" | "deprecated"
    version: str  # the release that made the change (for "deprecated": the release whose parser says so)
    new: list[str] = field(default_factory=list)
    note: str = ""
    takes_value: bool = False  # the old option took a value (its successor then takes the same)
    prefix_of: tuple[str, ...] = ()  # options of the new release it abbreviates (argparse's allow_abbrev)


@dataclass(frozen=True)
class Table:
    engine: str
    path: Path
    baseline: str
    releases: list[dict]
    deprecated: dict[str, list[dict]]

    @property
    def known(self) -> list[str]:
        return sorted({self.baseline, *(r["version"] for r in self.releases)}, key=Version)

    @property
    def newest(self) -> str:
        return self.known[-1]

    @classmethod
    def from_data(cls, data: dict, path: Path) -> Table:
        if data.get("format") != FORMAT:
            raise ValueError(f"{path}: flag table format {data.get('format')!r}, expected {FORMAT}")
        return cls(data["engine"], path, data["baseline"], data["releases"], data["deprecated"])

    def changes_up_to(self, version: str) -> list[Change]:
        """Flags removed or renamed by the releases after the baseline up to `version`, latest change last;
        a flag a later release brought back is dropped."""
        v = Version(version)
        found: dict[str, Change] = {}
        for release in self.releases:
            if Version(release["version"]) > v:
                break
            for name in release["new"]:
                found.pop(name, None)
            for kind in ("renamed", "removed_with_replacement", "removed"):
                for entry in release[kind]:
                    found[entry["option"]] = Change(
                        entry["option"],
                        kind,
                        release["version"],
                        list(entry.get("new", [])),
                        entry.get("note", ""),
                        bool(entry.get("takes_value")),
                        tuple(entry.get("prefix_of", [])),
                    )
        return list(found.values())

    def deprecated_in(self, version: str) -> list[Change]:
        """The options the newest known release at or below `version` marks deprecated."""
        at_or_below = [k for k in self.known if Version(k) <= Version(version)]
        if not at_or_below or Version(version) < Version(self.baseline):
            return []
        release = at_or_below[-1]
        return [Change(e["option"], "deprecated", release, list(e["new"]), e["note"]) for e in self.deprecated[release]]


@functools.cache
def load(engine: str = "sglang") -> Table | None:
    """The shipped table for an engine, or None when the launcher ships none."""
    path = HERE / f"{engine}.json"
    if not path.exists():
        return None
    return Table.from_data(json.loads(path.read_text()), path)
