#!/usr/bin/env python3
"""Shipping bits at the speed of one copy: `launcher image push` and `launcher stage` against the copy
to ONE node (the physical floor) and a naive parallel push from the operator to every node.

    sudo uv run benchmarks/bench_ship.py [--sizes 4,13] [--image-rates 200mbit,40mbit] [--weights-rates 200mbit]

On the testbed (scripts/testbed, with the TESTBED_* settings of the environment): max(sizes)+1 nodes;
the last node's Docker engine plays the operator's (DOCKER_HOST at its socket: this machine has no
engine of its own), the first N nodes are the deployment. Every link, this machine's own link to the
nodes included, is shaped with tc (`scripts/testbed shape`), so the network, not this machine's two
cores, is the bottleneck, as on a real cluster (at a rate where N `docker load`s of the image fit in
this machine's CPU: the last column measures that limit). Per N and rate:

- image, one node: `docker save IMAGE | ssh node0 docker load` (OpenSSH, as typed by hand), until the
  load ends: the physical floor;
- image, launcher: `launcher image push` to all N nodes (a fresh process; no node holds the image);
- image, naive: the same pipe to every node at once (N copies through the operator's one uplink);
- weights, one node (`tar c DIR | ssh node0 tar x`) / launcher (`launcher stage --from DIR`) / naive
  (N tar pipes at once): the same for a directory of --weights-mb of random data in 4 shards and a
  config.json.

Prints a markdown table (seconds, and each time over the one-node copy) and the machine's load.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from launcher.config.schema import SSHSettings  # noqa: E402
from launcher.plan.types import Node  # noqa: E402
from launcher.transport.host import Options  # noqa: E402
from launcher.transport.ssh import SSHHost  # noqa: E402 (only to clean the nodes between runs)

TESTBED = REPO / "scripts" / "testbed"
q = shlex.quote
STATE = Path(os.environ.get("TESTBED_DIR") or REPO / ".testbed")
WORK = STATE / "bench-ship"
LAUNCHER = str(Path(sys.executable).with_name("launcher"))
TAG = "launcher-bench-ship:1"
TARGET = "/srv/testbed-node/models/w"


def sh(argv: list[str], check: bool = True, **kw) -> subprocess.CompletedProcess:
    r = subprocess.run(argv, capture_output=True, text=True, **kw)
    if check and r.returncode != 0:
        raise SystemExit(f"failed ({r.returncode}): {' '.join(argv)[:300]}\n{r.stdout}{r.stderr}")
    return r


def testbed(*args: str) -> None:
    sh([sys.executable, str(TESTBED), *args], timeout=900)


class Bench:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        WORK.mkdir(parents=True, exist_ok=True)
        inv = yaml.safe_load((STATE / "inventory.yaml").read_text())
        self.inv = inv
        self.nodes = inv["nodes"]
        engine = self.nodes[-1]["name"]
        self.env = dict(os.environ, DOCKER_HOST=f"unix://{STATE}/nodes/{engine}/docker.sock")
        ssh = SSHSettings(**{k: inv["ssh"][k] for k in ("user", "key", "known_hosts", "connect_timeout")})
        self.hosts = [SSHHost(Node(i, n["name"], n["address"], ssh, 0), Options()) for i, n in enumerate(self.nodes)]

    # -- set-up ------------------------------------------------------------------------------------
    def image(self) -> None:
        context = WORK / "context"
        context.mkdir(exist_ok=True)
        blob = context / "blob"
        if not blob.exists() or blob.stat().st_size != self.args.image_mb << 20:
            blob.write_bytes(os.urandom(self.args.image_mb << 20))
        (context / "Dockerfile").write_text(f"FROM {self.inv['vars']['TESTBED_IMAGE']}\nCOPY blob /blob\n")
        sh([LAUNCHER, "image", "build", "-f", str(context / "Dockerfile"), "--tag", TAG], env=self.env, timeout=900)

    def weights(self) -> Path:
        root = WORK / "weights"
        shard = (self.args.weights_mb << 20) // 4
        if not root.exists() or sum(f.stat().st_size for f in root.iterdir()) < 4 * shard:
            root.mkdir(exist_ok=True)
            for k in range(4):
                with open(root / f"model-0000{k + 1}-of-00004.safetensors", "wb") as f:
                    for _ in range(shard >> 20):
                        f.write(os.urandom(1 << 20))
            (root / "config.json").write_text('{"architectures": ["Bench"]}\n')
        return root

    def deployment(self, n: int) -> tuple[Path, Path]:
        inv = dict(self.inv, nodes=self.nodes[:n])
        inventory = WORK / f"inventory-{n}.yaml"
        inventory.write_text(yaml.safe_dump(inv))
        data = yaml.safe_load((REPO / "configs" / "testbed-small.yaml").read_text())
        data.update(image=TAG, state_dir=os.environ.get("TESTBED_STATE_DIR") or "/var/tmp/launcher")
        data["groups"]["prefill"]["nodes"] = max(1, n // 2)
        data["groups"]["decode"]["nodes"] = n - max(1, n // 2)
        data["container"]["volumes"] = [
            v.replace("${TESTBED_REPO}/models/tiny", TARGET) for v in data["container"]["volumes"]
        ]
        config = WORK / f"deploy-{n}.yaml"
        config.write_text(yaml.safe_dump(data, sort_keys=False))
        return config, inventory

    def clean(self, n: int) -> None:
        self.at_once(n, f"docker image rm -f {TAG} >/dev/null 2>&1; rm -rf {TARGET}; echo ok")

    # -- the three ways ------------------------------------------------------------------------------
    def by_hand(self, indices: list[int], produce: str, consume: str) -> float:
        """`PRODUCE | ssh node CONSUME` for each node, all at once, as an operator types it (OpenSSH)."""
        s = self.inv["ssh"]
        ssh = (
            f"ssh -F /dev/null -i {s['key']} -o IdentitiesOnly=yes -o UserKnownHostsFile={s['known_hosts']} "
            "-o StrictHostKeyChecking=yes -o BatchMode=yes"
        )
        start = time.monotonic()
        procs = [
            subprocess.Popen(
                [
                    "bash",
                    "-o",
                    "pipefail",
                    "-c",
                    f"{produce} | {ssh} {s['user']}@{self.nodes[i]['address']} {q(consume)}",
                ],
                env=self.env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )  # fmt: skip
            for i in indices
        ]
        for i, proc in zip(indices, procs, strict=True):
            _, err = proc.communicate(timeout=3600)
            assert proc.returncode == 0, f"{self.nodes[i]['name']}: exit {proc.returncode}: {err}"
        return time.monotonic() - start

    def launcher(self, n: int, *args: str) -> float:
        config, inventory = self.deployment(n)
        start = time.monotonic()
        r = sh(
            [LAUNCHER, *args, "--json", "-c", str(config), "-i", str(inventory)], check=False, env=self.env, cwd=WORK
        )
        took = time.monotonic() - start
        nodes = json.loads(r.stdout)["nodes"] if r.stdout.strip() else []
        if r.returncode != 0 or len(nodes) != n:
            raise SystemExit(f"launcher {' '.join(args)} on {n} nodes failed:\n{r.stdout}{r.stderr}")
        return took

    def measure(self, n: int, what: str, rate: str, weights: Path) -> dict:
        """One row: `what` (image or weights) to n nodes with every link at `rate`: one node, the
        launcher, the naive push; for the image also n loads from this machine's disk, no network."""
        row: dict = {"n": n, "what": what, "rate": rate, "load": []}
        if what == "image":
            by_hand = (f"docker save {TAG}", "docker load >/dev/null")
            verb = ["image", "push"]
        else:
            by_hand = (f"tar -C {weights} -cf - .", f"mkdir -p {TARGET} && tar -x -C {TARGET}")
            verb = ["stage", "--from", str(weights)]
        testbed("shape", rate)
        try:
            self.clean(n)
            for _ in range(self.args.repeat):  # alternating, so that both see the same moods of the machine
                row.setdefault("ones", []).append(self.timed(row, lambda: self.by_hand([0], *by_hand)))
                row.setdefault("launchers", []).append(self.timed(row, lambda: self.launcher(n, *verb)))
            row["one"], row["launcher"] = statistics.median(row["ones"]), statistics.median(row["launchers"])
            if not self.args.no_naive:
                row["naive"] = self.timed(row, lambda: self.by_hand(list(range(n)), *by_hand))
        finally:
            testbed("shape", "off")
        if what == "image":  # this machine's own limit: n docker loads at once, the bytes already on disk
            tar = WORK / "image.tar"
            sh(["docker", "save", "-o", str(tar), TAG], env=self.env, timeout=900)
            row["disk"] = self.timed(row, lambda: self.at_once(n, f"docker load -i {tar} >/dev/null"))
        print(json.dumps(row), file=sys.stderr, flush=True)
        return row

    def timed(self, row: dict, fn) -> float:
        took = fn()
        row["load"].append(round(os.getloadavg()[0], 1))
        self.clean(row["n"])
        return took

    def at_once(self, n: int, command: str) -> float:
        start = time.monotonic()
        results = [None] * n

        def one(i: int) -> None:
            results[i] = self.hosts[i].run(command, timeout=3600)

        threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert all(r is not None and r.ok for r in results), results
        return time.monotonic() - start


def table(rows: list[dict]) -> str:
    lines = [
        "| N | what | links | one node (floor) | launcher | naive parallel push | N loads, no network |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        cells = [f"{r['one']:.1f}s"]
        for how in ("launcher", "naive", "disk"):
            took = r.get(how)
            cells.append("-" if took is None else f"{took:.1f}s ({took / r['one']:.2f}x)")
        lines.append(f"| {r['n']} | {r['what']} | {r['rate']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="4,13")
    parser.add_argument("--image-rates", default="200mbit", help="comma-separated: the image part at each rate")
    parser.add_argument("--weights-rates", default="200mbit", help="comma-separated: the weights part at each")
    parser.add_argument("--image-mb", type=int, default=300)
    parser.add_argument("--weights-mb", type=int, default=1024)
    parser.add_argument("--no-naive", action="store_true", help="skip the naive pushes (they take N times longer)")
    parser.add_argument("--only", choices=("image", "weights"), help="measure only this part (a loaded machine)")
    parser.add_argument("--keep", action="store_true", help="leave the testbed up")
    parser.add_argument("--repeat", type=int, default=1, help="one-node copy and launcher runs each (medians)")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    testbed("up", str(max(sizes) + 1))
    bench = Bench(args)
    rows = []
    try:
        if args.only != "weights":
            bench.image()
        weights = bench.weights()
        for n in sizes:
            for rate in args.image_rates.split(",") if args.only != "weights" else []:
                rows.append(bench.measure(n, "image", rate, weights))
            for rate in args.weights_rates.split(",") if args.only != "image" else []:
                rows.append(bench.measure(n, "weights", rate, weights))
    finally:
        testbed("shape", "off")
        bench.clean(max(sizes))
        if not args.keep:
            testbed("down")
    print(
        f"{platform.node()}: {platform.system()} {platform.release()} {platform.machine()}, {os.cpu_count()} cores; "
        f"every link shaped (tc tbf, both ways, and this machine's own link to the nodes); image {args.image_mb} MB, "
        f"weights {args.weights_mb} MB; load average after each measurement: "
        + "; ".join(f"{r['n']} {r['what']} {r['rate']}: {r['load']}" for r in rows)
        + "\n"
    )
    print(table(rows))


if __name__ == "__main__":
    main()
