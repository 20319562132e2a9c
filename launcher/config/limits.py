"""What the launcher reads at most, from any file (deployment file, inventory, .env, manifests, bench
results). A real deployment is far below each bound (10,000 nodes: an inventory of about 0.5 MiB and
70,000 values); what is above one is refused in one line, before it costs a second or 200 MB."""

from __future__ import annotations

MAX_FILE_BYTES = 4 * 1024 * 1024  # also what bounds a JSON file's memory (json reads it all at once)
MAX_DEPTH = 100  # lists and mappings inside each other
MAX_VALUES = 100_000  # values of a file, keys included, each alias counted as often as it is used
# characters of a plain number or timestamp: PyYAML's constructors raise past Python's 4,300-digit
# int limit, and a base-60 number (1:2:3...) costs time quadratic in its length
MAX_NUMBER_CHARS = 100
MAX_TEXT = 4 * 1024 * 1024  # characters one value may grow to by `${VAR}` interpolation (.env included)
MAX_NODES = 10_000  # nodes of an inventory or deployment file; ranks of a group or LeaderWorkerSet
MAX_GPUS = 1024  # GPUs of one node
MAX_GROUPS = 1000  # groups of a deployment file
MAX_REPLICAS = 1000  # replicas of one group (LeaderWorkerSet `replicas`); their nodes stay within MAX_NODES
