"""What only the nodes know about their network, read by a few lines of shell: which interface the
kernel routes an address through (`ip route get`). `up` and `doctor` prepend this to their first
script on each node; the plan takes the answers as input (`network.interface: auto`)."""

from __future__ import annotations

import re

from launcher.plan.fabric import Route
from launcher.runtime.shell import q

MARK = "@@route"

# launcher_route ADDRESS: one line `@@route ADDRESS <ip route get output>`; for an address of this
# very node (the route is `local ... dev lo`), ` owner IFACE` names the interface that holds it: the one
# its peers reach it through.
ROUTE_FN = r"""
launcher_route() {
  a=$(getent ahostsv4 "$1" 2>/dev/null | awk 'NR==1{print $1}'); [ -n "$a" ] || a=$1
  r=$(ip -o route get "$a" 2>&1 | head -n 1 | tr -s ' \\' ' ')
  case " $r " in
    *" dev lo "*)
      o=$(ip -o -4 addr show 2>/dev/null | awk -v a="$a" '{split($4, p, "/"); if (p[1] == a) {print $2; exit}}')
      r="$r owner ${o:-lo}";;
  esac
  echo "@@route $1 $r"
}
"""


def route_script(addresses: list[str]) -> str:
    """Shell that prints one `@@route` line per address (nothing when there is none to read)."""
    if not addresses:
        return ""
    return ROUTE_FN + "\n".join(f"launcher_route {q(a)}" for a in addresses) + "\n"


def parse_routes(stdout: str) -> dict[str, Route]:
    """`@@route` lines -> address -> the interface the route leaves by (and its source address), or why not."""
    out: dict[str, Route] = {}
    for line in stdout.splitlines():
        if not line.startswith(MARK + " "):
            continue
        _, address, *rest = line.split(" ", 2)
        text = rest[0].strip() if rest else ""
        dev = re.search(r"\bdev (\S+)", text)
        owner = re.search(r"\bowner (\S+)", text)
        src = re.search(r"\bsrc (\S+)", text)
        name = owner.group(1) if owner and dev and dev.group(1) == "lo" else (dev.group(1) if dev else None)
        error = "" if name else (text or "no answer from `ip route get`")
        out[address] = Route(name, src.group(1) if src else None, error[:200])
    return out
