"""launcher: bring up disaggregated wide-EP LLM deployments on bare-metal nodes over SSH."""

import sys

# Bytecode is kept even where PYTHONDONTWRITEBYTECODE is set (CI images and containers set it): without
# it every `launcher` process compiles its own modules again and, in an environment that `uv run`
# created (no `--compile-bytecode`), paramiko, cryptography, pydantic, rich and typer too: about half
# of its start-up. Written to __pycache__ next to the sources (ignored by git); a read-only install
# just keeps none, as before. (`[tool.uv] compile-bytecode = true` would cover uv's environments too,
# but makes every `uv run` re-check all 8000 files of the environment first: 0.7 to 2.4 s, measured.)
sys.dont_write_bytecode = False

__version__ = "0.1.0"
