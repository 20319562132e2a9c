"""Programs the launcher ships to nodes and runs there, inside the image or the python_env: standard
library and the engine's own packages only (they cannot import the launcher)."""
