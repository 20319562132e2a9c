"""Talking to nodes: `ssh` (one SSH connection per node), `local` (this machine, no SSH), `host` (what
both offer), `fleet` (many nodes at once, per-node results), `http` (HTTP over a channel), `errors`."""
