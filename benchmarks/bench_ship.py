#!/usr/bin/env python3
"""Shipping bits at the speed of one copy: `launcher image push` and `launcher stage` against the copy
to ONE node (the physical floor) and a naive parallel push from the operator to every node.

    sudo uv run benchmarks/bench_ship.py [--sizes 4,13] [--rate 200mbit] [--image-mb 300] [--weights-mb 1024]

On the testbed (scripts/testbed, with the TESTBED_* settings of the environment): max(sizes)+1 nodes;
the last node's Docker engine plays the operator's (DOCKER_HOST at its socket: this machine has no
engine of its own), the first N nodes are the deployment. Every link, this machine's own link to the
nodes included, is shaped to --rate with tc (`scripts/testbed shape`), so the network, not this
machine's two cores, is the bottleneck, as on a real cluster. Per N:

- image, one node: the engine's `docker save` stream (Docker SDK) into `docker load` on node 0, over
  one SSH channel (the launcher's transport), until the load ends;
- image, launcher: `launcher image push` to all N nodes (fresh process, nodes lacking the image);
- image, naive: N `docker save` streams at once, one SSH channel each (`docker save | ssh node docker
  load &`, N times: N copies through the operator's one uplink);
- weights, one node / launcher (`launcher stage --from DIR`) / naive (N tar streams at once): the same
  for a directory of --weights-mb of random data in 4 shards and a config.json.

Prints a markdown table (seconds, and each time over the one-node copy) and the machine's load.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from launcher.config.schema import SSHSettings  # noqa: E402
from launcher.plan.types import Node  # noqa: E402
from launcher.transport.host import Options  # noqa: E402
from launcher.transport.ssh import SSHHost  # noqa: E402

TESTBED = REPO / "scripts" / "testbed"
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
        for i in range(n):
            r = self.hosts[i].run(f"docker image rm -f {TAG} >/dev/null 2>&1; rm -rf {TARGET}; echo ok", timeout=300)
            assert r.ok, r.stderr

    # -- the three ways ------------------------------------------------------------------------------
    def stream_to(self, i: int, command: str, pieces) -> None:
        proc = self.hosts[i].start(command)
        for piece in pieces:
            proc.write(piece)
        proc.close_stdin()
        code = proc.wait(1800)
        assert code == 0, f"{self.nodes[i]['name']}: {command}: exit {code}: {proc.stderr}"

    def save(self):
        import docker

        return docker.APIClient(base_url=self.env["DOCKER_HOST"], timeout=1800).get_image(TAG, chunk_size=1 << 20)

    def tar(self, root: Path):
        """A tar of the weights, streamed piece by piece (as `tar c | ssh node tar x`)."""
        read, write = os.pipe()

        def produce() -> None:
            with os.fdopen(write, "wb") as out, tarfile.open(fileobj=out, mode="w|") as t:
                t.add(root, arcname=".")

        threading.Thread(target=produce, daemon=True).start()
        with os.fdopen(read, "rb") as f:
            while piece := f.read(1 << 20):
                yield piece

    def at_once(self, n: int, fn) -> float:
        start = time.monotonic()
        errors: list[BaseException] = []

        def guarded(i: int) -> None:
            try:
                fn(i)
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=guarded, args=(i,)) for i in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]
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

    def one_size(self, n: int, weights: Path) -> dict:
        row: dict = {"n": n}
        load = "docker load >/dev/null"
        untar = f"mkdir -p {TARGET} && tar -x -C {TARGET}"
        self.clean(n)
        row["image_one"] = self.at_once(1, lambda i: self.stream_to(i, load, self.save()))
        self.clean(n)
        row["image_launcher"] = self.launcher(n, "image", "push")
        self.clean(n)
        if not self.args.no_naive:
            row["image_naive"] = self.at_once(n, lambda i: self.stream_to(i, load, self.save()))
            self.clean(n)
        row["weights_one"] = self.at_once(1, lambda i: self.stream_to(i, untar, self.tar(weights)))
        self.clean(n)
        row["weights_launcher"] = self.launcher(n, "stage", "--from", str(weights))
        self.clean(n)
        if not self.args.no_naive:
            row["weights_naive"] = self.at_once(n, lambda i: self.stream_to(i, untar, self.tar(weights)))
            self.clean(n)
        print(json.dumps(row), file=sys.stderr, flush=True)
        return row


def table(rows: list[dict]) -> str:
    def cell(row: dict, what: str, how: str) -> str:
        took = row.get(f"{what}_{how}")
        if took is None:
            return "-"
        return f"{took:.1f}s" + ("" if how == "one" else f" ({took / row[f'{what}_one']:.2f}x)")

    lines = [
        "| N | image: one node | image: launcher push | image: naive push | "
        "weights: one node | weights: launcher stage | weights: naive |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        cells = [cell(r, w, h) for w in ("image", "weights") for h in ("one", "launcher", "naive")]
        lines.append(f"| {r['n']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="4,13")
    parser.add_argument("--rate", default="200mbit")
    parser.add_argument("--image-mb", type=int, default=300)
    parser.add_argument("--weights-mb", type=int, default=1024)
    parser.add_argument("--no-naive", action="store_true", help="skip the naive pushes (they take N times longer)")
    parser.add_argument("--keep", action="store_true", help="leave the testbed up")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    testbed("up", str(max(sizes) + 1))
    bench = Bench(args)
    try:
        bench.image()
        weights = bench.weights()
        testbed("shape", args.rate)
        rows = [bench.one_size(n, weights) for n in sizes]
    finally:
        testbed("shape", "off")
        bench.clean(max(sizes))
        if not args.keep:
            testbed("down")
    print(
        f"{platform.node()}: {platform.system()} {platform.release()} {platform.machine()}, {os.cpu_count()} cores; "
        f"links shaped to {args.rate} (tc tbf, both ways, and this machine's own link); image {args.image_mb} MB, "
        f"weights {args.weights_mb} MB; load average at the end {os.getloadavg()[0]:.1f}\n"
    )
    print(table(rows))


if __name__ == "__main__":
    main()
