"""`launcher migrate`: rewrite the SGLang flags a version renamed or removed, each with a comment, and
print the diff (`--dry-run`: only the diff)."""

from __future__ import annotations

import difflib
import re
import sys
from pathlib import Path

from packaging.version import InvalidVersion, Version

from launcher.config.yamlfile import read_file
from launcher.errors import ConfigError
from launcher.output.console import say
from launcher.plan import flagdrift

VERSION_LINE = re.compile(r'^(\s*sglang:\s*)"?[0-9][0-9a-z.]*"?', flags=re.M)


def run(config: Path, sglang: str, dry_run: bool) -> None:
    try:
        release = Version(sglang).release  # SGLang's releases are MAJOR.MINOR.PATCH[.postN]
    except InvalidVersion:
        release = ()
    if len(release) < 3:
        raise ConfigError(f"--sglang expects a version like 0.5.21, got {sglang!r}", key="--sglang")
    text = read_file(config)
    new = flagdrift.migrate_text(text, sglang)
    new = VERSION_LINE.sub(lambda m: f'{m.group(1)}"{sglang}"', new, count=1)
    diff = "".join(difflib.unified_diff(text.splitlines(True), new.splitlines(True), str(config), str(config)))
    if not diff:
        say(f"{config}: nothing to change for SGLang {sglang}")
        return
    sys.stdout.write(diff)
    if not dry_run:
        try:
            config.write_text(new)
        except OSError as exc:
            raise ConfigError(f"cannot write: {exc.strerror}", file=str(config)) from None
        say(f"rewrote {config}", to_stderr=True)
