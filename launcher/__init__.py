"""launcher: bring up disaggregated wide-EP LLM deployments on bare-metal nodes over SSH."""

__version__ = "0.1.0"
