"""The two streams a person reads: results on stdout, progress and errors on stderr.

Plain lines go straight to the stream; rich (tables, colours, the live view) is loaded only by the
commands that draw one, so `plan` and `--help` start fast. Piped output (logs, CI) keeps whole lines:
tables are not squeezed to 80 columns. Engine text is never parsed as markup.
"""

from __future__ import annotations

import sys
from functools import cache
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.console import Console

PIPED_WIDTH = 200


@cache
def stdout() -> Console:
    from rich.console import Console

    return Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else PIPED_WIDTH)


@cache
def stderr() -> Console:
    from rich.console import Console

    return Console(stderr=True, highlight=False, soft_wrap=True, width=None if sys.stderr.isatty() else PIPED_WIDTH)


def say(text: str, *, to_stderr: bool = False, style: str | None = None) -> None:
    """One line of the launcher's own words or of engine text: never markup, never highlighted."""
    if style is None:
        stream = sys.stderr if to_stderr else sys.stdout
        stream.write(text + "\n")
        stream.flush()
        return
    (stderr() if to_stderr else stdout()).print(text, markup=False, highlight=False, style=style)
