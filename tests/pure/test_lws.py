"""`launcher import` and `launcher export --to lws` on the seeds' LeaderWorkerSet manifests (000-003).

Import: the imported file's plan runs, rank by rank, the seed's argv and env; export of that file gives
LeaderWorkerSets equal to the seed's on containers, args, env, resources and group size. The seed's argv
for a rank is computed here without the launcher: kubelet's `$(VAR)` by a substitution, seed 003's shell
script by bash itself (with `vllm` and `find` replaced by programs that only print their arguments). What
the launcher adds is listed per seed with why; anything else that differs fails."""

from __future__ import annotations

import gzip
import json
import re
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

from launcher.config.load import load
from launcher.plan.build import build
from launcher.plan.engines import args as A
from launcher.plan.engines.dynamo_vllm import canonical
from tests.helpers import REPO, fresh_env, run_cli
from tests.seeds import SEEDS, manifests, seed_003_manifest

CRD = SEEDS.parent / "reference" / "schemas" / "leaderworkerset.x-k8s.io_leaderworkersets.yaml"
SEED_FILES = {
    "000": "000_6e7791af198eea82.txt",
    "001": "001_3bc60c81eb28b8e5.txt",
    "002": "002_5075cd10cd9de433.txt",
}
# What each seed needs declared: 000's mini_lb exists only up to SGLang 0.5.1; 001's router is pinned.
OPTIONS = {
    "000": ["--sglang", "0.5.1"],
    "001": ["--sglang", "0.5.21", "--sglang-router", "0.3.2"],
    "002": [],
    "003": [],
}


def seed_text(seed: str) -> str:
    return seed_003_manifest() if seed == "003" else manifests(SEED_FILES[seed])


def lws_of(text: str) -> list[dict]:
    return [d for d in yaml.safe_load_all(text) if d and d.get("kind") == "LeaderWorkerSet"]


def template(lws: dict, rank: int) -> dict:
    """The container a rank runs: the leader's for rank 0 (the workers' when there is no leaderTemplate)."""
    t = lws["spec"]["leaderWorkerTemplate"]
    chosen = t["leaderTemplate"] if rank == 0 and t.get("leaderTemplate") else t["workerTemplate"]
    return chosen["spec"]["containers"][0]


@pytest.fixture(scope="module")
def printing_bin(tmp_path_factory) -> Path:
    """`vllm` that prints its argv as JSON, and a `find` that does nothing (seed 003's script clears /dev/shm)."""
    bin_dir = tmp_path_factory.mktemp("bin")
    (bin_dir / "vllm").write_text(f"#!{sys.executable}\nimport json, sys\nprint(json.dumps(['vllm', *sys.argv[1:]]))\n")
    (bin_dir / "find").write_text("#!/bin/sh\nexit 0\n")
    for program in ("vllm", "find"):
        (bin_dir / program).chmod(0o755)
    return bin_dir


def seed_argv(container: dict, leader: str, size: int, rank: int, bin_dir: Path) -> list[str]:
    """What the container runs as `rank`: kubelet's $(VAR) for the LWS variables and the container's env,
    then a `sh -c` script run by bash."""
    env = {e["name"]: str(e["value"]) for e in container.get("env") or [] if "value" in e}
    lws = {"LWS_LEADER_ADDRESS": leader, "LWS_GROUP_SIZE": str(size), "LWS_WORKER_INDEX": str(rank)}
    variables = {**env, **lws}
    tokens = [*container.get("command", []), *container.get("args", [])]
    tokens = [re.sub(r"\$\((\w+)\)", lambda m: variables.get(m.group(1), m.group(0)), str(t)) for t in tokens]
    if tokens[0] not in ("/bin/bash", "/bin/sh", "sh", "bash"):
        return tokens
    run = subprocess.run(
        ["bash", "-c", tokens[2]], capture_output=True, text=True, timeout=30,
        env={**variables, "PATH": f"{bin_dir}:/usr/bin:/bin"},
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout.strip().splitlines()[-1])


def seed_env(container: dict) -> dict[str, object]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env") or []}


# What the launcher adds to the seeds' argv, by seed and rank, each for a reason.
def added_flags(seed: str, rank: int) -> dict[str, list[str]]:
    added: dict[str, list[str]] = {}
    if seed in ("000", "001"):
        added["--disaggregation-bootstrap-port"] = ["8998"]  # SGLang's default, made explicit (the router's too)
    if rank >= 1 and seed in ("000", "001", "002"):
        # every rank serves /health on --host 0.0.0.0 --port (rank 0's port), so ranks >= 1 are seen alive
        added.update({"--host": ["0.0.0.0"], "--port": ["40000" if seed == "002" else "30000"]})
    return added


def compare_argv(ours: list[str], theirs: list[str], added: dict[str, list[str]]) -> None:
    """Same program (and vllm's model), same flags with the same values, but the listed additions. vLLM's
    `--snake_case` spelling is compared as the `--dash-case` vLLM reads it as (the launcher writes that)."""
    assert ours[:3] == theirs[:3], (ours[:3], theirs[:3])
    mine, seed = A.flags(canonical(ours[3:])), A.flags(canonical(theirs[3:]))
    for flag, value in added.items():
        assert flag not in seed and mine.pop(flag) == value, flag
    assert mine == seed


def computed_env(s) -> dict[str, str]:
    """Env the launcher sets for every rank where the pods had Kubernetes fill it in or left a default."""
    if s.engine == "sglang":
        return {"SGLANG_HOST_IP": s.node.address}  # SGLang's own-address fallback: the node's address
    return {"VLLM_NIXL_SIDE_CHANNEL_HOST": s.node.address, "VLLM_NIXL_SIDE_CHANNEL_PORT": "5600"}


def imported(tmp_path: Path, capsys, seed: str) -> tuple[Path, object, str]:
    manifest = tmp_path / f"seed-{seed}.yaml"
    manifest.write_text(seed_text(seed))
    out = tmp_path / f"imported-{seed}.yaml"
    code, stdout, stderr = run_cli(["import", str(manifest), "-o", str(out), *OPTIONS[seed]], capsys)
    assert code == 0, stderr
    return out, build(load(out, environ={})), stderr


@pytest.mark.parametrize("seed", ["000", "001", "002", "003"])
def test_import_plans_the_seeds_argv_and_env_rank_by_rank(tmp_path, capsys, printing_bin, seed):
    path, plan, _ = imported(tmp_path, capsys, seed)
    seeds = lws_of(seed_text(seed))
    assert [g.name for g in plan.groups] == {"002": ["serve"], "003": ["decode"]}.get(seed, ["prefill", "decode"])
    for lws, group in zip(seeds, plan.groups, strict=True):
        size = lws["spec"]["leaderWorkerTemplate"]["size"]
        ranks = sorted((s for s in plan.services if s.group == group.name), key=lambda s: s.rank)
        assert len(ranks) == size == len(group.node_indices)
        for s in ranks:
            container = template(lws, s.rank)
            theirs = seed_argv(container, ranks[0].node.address, size, s.rank, printing_bin)
            compare_argv(s.command, theirs, added_flags(seed, s.rank))
            expected = {k: v for k, v in seed_env(container).items() if isinstance(v, str)}
            assert s.env == {**expected, **computed_env(s)}, (s.service, set(s.env) ^ set(expected))
            assert s.image == container["image"]
            gpus = int(container["resources"]["limits"]["nvidia.com/gpu"])
            assert s.container.gpus == "all" and s.node.gpus == gpus


def test_import_keeps_the_pods_mounts_privileges_and_rdma_devices(tmp_path, capsys):
    _, plan, _ = imported(tmp_path, capsys, "001")
    prefill = next(s for s in plan.services if s.group == "prefill")
    c = prefill.container
    assert c.privileged and "IPC_LOCK" in c.cap_add and c.devices == ["/dev/infiniband"]
    assert "/data1/maas_hosted_models/models/DeepSeek-R1-0528/deepseek_r1_0528:/work/models" in c.volumes
    assert "/data1/sgl_cache:/root/.cache" in c.volumes
    decode = next(s for s in plan.services if s.group == "decode")
    assert "/data1/sgl_cache1:/root/.cache" in decode.container.volumes  # decode's own cache, as the seed has
    (router,) = [s for s in plan.services if s.role == "router"]
    # the P/D load balancer Deployment: the router in front of both groups' leaders, on the seed's port
    assert f"http://{prefill.node.address}:30000" in router.command and "--pd-disaggregation" in router.command
    assert f"http://{decode.node.address}:30000" in router.command and plan.endpoint.endswith(":8000")
    _, plan, _ = imported(tmp_path, capsys, "003")
    (s, _) = (s for s in plan.services if s.group)
    assert s.container.shm_size == "2g" and s.container.cap_add[-2:] == ["IPC_LOCK", "SYS_RAWIO"]


def test_import_lists_what_it_dropped_and_why(tmp_path, capsys):
    path, _, _ = imported(tmp_path, capsys, "000")
    text = path.read_text()
    head = text.split("\ndeployment:", 1)[0]
    for what, why in (
        ("nodeSelector", "inventory"),
        ("tolerations", "no taints on bare metal"),
        ("readinessProbe", "the launcher probes each rank itself"),
        ("LWS_WORKER_INDEX", "computed by the launcher"),
        ("NodePort 30800", "the endpoint"),
    ):
        line = next((ln for ln in head.splitlines() if what in ln), None)
        assert line is not None and line.startswith("# - ") and why in line, what
    for body in ("nodeSelector", "tolerations", "readinessProbe", "LWS_"):
        assert body not in text.split("\ndeployment:", 1)[1]


def test_import_reports_stale_flags_for_the_declared_version_with_migrate(tmp_path, capsys):
    path, _, stderr = imported(tmp_path, capsys, "000")
    # 000 wrote --enable-deepep-moe: deprecated in the declared 0.5.1, said as `plan` says it
    code, plan_out, _ = run_cli(["plan", str(path)], capsys)
    warnings = [ln for ln in stderr.splitlines() if ln.startswith("warning:")]
    assert code == 0 and any("--enable-deepep-moe" in w for w in warnings), stderr
    assert warnings == [ln for ln in plan_out.splitlines() if ln.startswith("warning:")]
    assert f"`launcher migrate {path} --sglang 0.5.1` rewrites the flags above" in stderr
    _, _, stderr = imported(tmp_path, capsys, "001")
    assert "--cuda-graph-max-bs was removed by SGLang 0.5.20" in stderr and "launcher migrate" in stderr


# -- export --to lws -------------------------------------------------------------------------------------


def crd_schema() -> dict:
    crd = yaml.load(CRD.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    (v1,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    return v1["schema"]["openAPIV3Schema"]


def exported(tmp_path: Path, capsys, config: Path, *args: str) -> list[dict]:
    out = tmp_path / "manifests"
    code, _, stderr = run_cli(["export", str(config), "--to", "lws", "-o", str(out), *args], capsys)
    assert code == 0, stderr
    return [d for f in sorted(out.iterdir()) for d in yaml.safe_load_all(f.read_text()) if d]


@pytest.mark.parametrize("seed", ["000", "001", "002", "003"])
def test_export_of_the_imported_file_gives_the_seeds_leaderworkersets(tmp_path, capsys, printing_bin, seed):
    path, plan, _ = imported(tmp_path, capsys, seed)
    objects = exported(tmp_path, capsys, path)
    ours = {d["metadata"]["name"]: d for d in objects if d["kind"] == "LeaderWorkerSet"}
    schema = crd_schema()
    for lws, group in zip(lws_of(seed_text(seed)), plan.groups, strict=True):
        mine = ours.pop(f"{plan.deployment}-{group.name}")
        assert list(jsonschema.Draft4Validator(schema).iter_errors(mine)) == []
        size = lws["spec"]["leaderWorkerTemplate"]["size"]
        assert mine["spec"]["leaderWorkerTemplate"]["size"] == size
        assert mine["spec"]["leaderWorkerTemplate"]["restartPolicy"] == "RecreateGroupOnPodRestart"
        for rank in range(min(size, 2)):  # the leader's template, then the workers'
            theirs, c = template(lws, rank), template(mine, rank)
            assert c["image"] == theirs["image"]
            # as the rank it is; the workers' template also as the last worker of a bigger group (one template
            # serves every worker: a per-rank value written as a number would be right for one rank only)
            for group_size, index in [(size, rank)] + ([(size + 2, size + 1)] if rank else []):
                compare_argv(
                    seed_argv(c, "10.0.0.1", group_size, index, printing_bin),
                    seed_argv(theirs, "10.0.0.1", group_size, index, printing_bin),
                    added_flags(seed, rank),
                )
            # the launcher's own-address variable (from status.podIP) and vLLM's default side-channel port; and
            # LWS_WORKER_INDEX from its pod label on every exported pod, as seeds 000-002 map it (003 does not)
            extra = {"SGLANG_HOST_IP"} if group.engine == "sglang" else {"VLLM_NIXL_SIDE_CHANNEL_PORT"}
            extra |= {"LWS_WORKER_INDEX"} - set(seed_env(theirs))
            env = seed_env(c)
            assert {k: v for k, v in env.items() if k not in extra} == seed_env(theirs)
            assert env.get("SGLANG_HOST_IP", env.get("VLLM_NIXL_SIDE_CHANNEL_HOST")) == {
                "fieldRef": {"fieldPath": "status.podIP"}
            }
            assert c["resources"]["limits"]["nvidia.com/gpu"] == theirs["resources"]["limits"]["nvidia.com/gpu"]
            security = theirs.get("securityContext") or {}
            assert bool(c.get("securityContext", {}).get("privileged")) == bool(security.get("privileged"))
            assert set((security.get("capabilities") or {}).get("add") or []) <= set(
                c["securityContext"]["capabilities"]["add"]
            )
            assert host_paths(mine, rank) == host_paths(lws, rank)
    assert ours == {}


def host_paths(lws: dict, rank: int) -> set[tuple[str, str]]:
    t = lws["spec"]["leaderWorkerTemplate"]
    spec = (t["leaderTemplate"] if rank == 0 and t.get("leaderTemplate") else t["workerTemplate"])["spec"]
    volumes = {v["name"]: v for v in spec.get("volumes") or []}
    out = set()
    for mount in spec["containers"][0].get("volumeMounts") or []:
        volume = volumes[mount["name"]]
        source = volume["hostPath"]["path"] if "hostPath" in volume else "emptyDir:" + volume["emptyDir"]["medium"]
        out.add((source, mount["mountPath"]))
    return out


SHIPPED = ["dsr1-104gpu.yaml", "sglang-1p1d-32gpu.yaml", "sglang-tp16-2node.yaml", "vllm-wideep-16gpu.yaml"]


@pytest.mark.parametrize("config", SHIPPED)
def test_every_shipped_config_exports_valid_leaderworkersets(tmp_path, capsys, config):
    objects = exported(tmp_path, capsys, REPO / "configs" / config)
    plan = build(load(REPO / "configs" / config, environ={}))
    lws = [d for d in objects if d["kind"] == "LeaderWorkerSet"]
    assert len(lws) == len(plan.groups)
    validator = jsonschema.Draft4Validator(crd_schema())
    for d in lws:
        assert list(validator.iter_errors(d)) == [], d["metadata"]["name"]
    kinds = sorted((d["kind"], d["metadata"]["name"].removeprefix(plan.deployment + "-")) for d in objects)
    singles = {s.role for s in plan.services if s.group is None}
    assert {name for kind, name in kinds if kind == "Deployment"} == singles
    # every Service a container names exists: etcd, NATS, the frontend, the groups' leaders
    services = {d["metadata"]["name"] for d in objects if d["kind"] == "Service"}
    text = json.dumps(objects)
    for host in re.findall(rf"(?:http|nats)://({re.escape(plan.deployment)}-[a-z0-9-]+):\d+", text):
        assert host in services, host
    assert "launcher-node-" not in text and "192.0.2." not in text  # no address of the file's nodes left


def test_the_schema_export_validates_against_is_the_lws_crd_and_rejects_a_bad_object():
    packaged = REPO / "launcher" / "plan" / "kube" / "leaderworkerset.v1.schema.json.gz"
    schema = json.loads(gzip.decompress(packaged.read_bytes()))
    assert schema == crd_schema()
    from launcher.plan.kube.exporter import validate

    good = lws_of(manifests(SEED_FILES["002"]))[0]
    assert validate(good, schema) == []
    bad = {**good, "spec": {**good["spec"], "replicas": "two"}}
    assert validate(bad, schema) == ["spec.replicas: 'two' is not of type 'integer'"]


# -- bad input: one line, exit 2, the manifest and the field ------------------------------------------


def bad_manifests(tmp_path: Path) -> dict[str, tuple[Path, str, str]]:
    """name -> (manifest, the field the error must name, words it must say)."""
    out = {}
    deployment_only = manifests(SEED_FILES["000"]).split("---\n")[-1]  # lb.yaml: a Deployment and a Service
    (tmp_path / "lb.yaml").write_text(deployment_only)
    out["not an LWS"] = (tmp_path / "lb.yaml", "kind", "expected a LeaderWorkerSet")
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "x"}, "spec": {"containers": []}}
    (tmp_path / "pod.yaml").write_text(manifests(SEED_FILES["002"]) + "---\n" + yaml.safe_dump(pod))
    out["a Pod"] = (tmp_path / "pod.yaml", "kind", "got Pod")
    text = manifests(SEED_FILES["002"]).replace("$(LWS_GROUP_SIZE)", "3", 1)
    (tmp_path / "nnodes.yaml").write_text(text)
    out["size and args disagree"] = (tmp_path / "nnodes.yaml", "spec.leaderWorkerTemplate.size", "--nnodes 3")
    lws = lws_of(manifests(SEED_FILES["002"]))[0]
    spec = lws["spec"]["leaderWorkerTemplate"]["workerTemplate"]["spec"]
    spec["containers"].append({**spec["containers"][0], "name": "second-engine"})
    (tmp_path / "two.yaml").write_text(yaml.safe_dump(lws))
    out["two engines in a pod"] = (tmp_path / "two.yaml", "workerTemplate.spec.containers", "2 containers")
    return out


def test_bad_manifests_are_one_line_naming_the_file_and_field(tmp_path, capsys):
    for name, (path, field, words) in bad_manifests(tmp_path).items():
        code, out, err = run_cli(["import", str(path)], capsys)
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and not out, (name, err)
        assert lines[0].startswith(f"error: {path}:") and field in lines[0] and words in lines[0], (name, lines)


def test_import_and_export_as_a_user_runs_them(tmp_path):
    """Fresh `launcher` processes: import seed 001, plan it, export it; and a bad manifest (exit 2)."""
    manifest = tmp_path / "001.yaml"
    manifest.write_text(seed_text("001"))
    out = tmp_path / "sglang-pd.yaml"

    def launcher(*args: str):
        argv = [sys.executable, "-m", "launcher", *args]
        return subprocess.run(argv, capture_output=True, text=True, timeout=120, env=fresh_env(), cwd=tmp_path)

    run = launcher("import", str(manifest), "-o", str(out), "--sglang", "0.5.21", "--sglang-router", "0.3.2")
    assert run.returncode == 0 and "imported 2 group(s)" in run.stderr, run.stderr
    again = launcher("import", str(manifest), "-o", str(out))
    assert again.returncode == 2 and "pass --force" in again.stderr
    plan = launcher("plan", str(out))
    assert plan.returncode == 0 and "--dist-init-addr 192.0.2.10:20102" in plan.stdout, plan.stderr
    export = launcher("export", str(out), "--to", "lws")
    assert export.returncode == 0 and "each valid against the CRD's schema" in export.stderr, export.stderr
    assert [d["kind"] for d in yaml.safe_load_all(export.stdout)].count("LeaderWorkerSet") == 2
    bad = launcher("import", str(REPO / "configs" / "local.yaml"))
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1 and "kind" in bad.stderr
    assert "Traceback" not in bad.stderr + run.stderr + export.stderr


def test_import_of_an_unpinned_router_names_the_option_that_pins_it(tmp_path):
    """Seed 001's router image carries no version: the fix is the `--sglang-router` option of the command just
    run (not a file key to edit); given it, the same import plans."""
    manifest = tmp_path / "001.yaml"
    manifest.write_text(seed_text("001"))
    argv = [sys.executable, "-m", "launcher", "import", str(manifest), "-o", "pd.yaml", "--sglang", "0.5.21"]
    run = subprocess.run(argv, capture_output=True, text=True, timeout=120, env=fresh_env(), cwd=tmp_path)
    last = run.stderr.strip().splitlines()[-1]
    assert run.returncode == 1 and "Traceback" not in run.stderr, run.stderr
    assert last.startswith("error: pd.yaml does not plan yet:") and "services.router" in last, last
    assert last.endswith("import again with --sglang-router 0.3.2 (it sets versions.sglang_router)"), last
    pinned = subprocess.run([*argv, "--force", "--sglang-router", "0.3.2"], capture_output=True, text=True,
                            timeout=120, env=fresh_env(), cwd=tmp_path)  # fmt: skip
    assert pinned.returncode == 0 and "error" not in pinned.stderr, pinned.stderr


# -- every shipped config there and back ---------------------------------------------------------------

ADDRESS = re.compile(r"\b\d{1,3}(\.\d{1,3}){3}\b")


def erased(text: str) -> str:
    """Node addresses differ (the file's against the import's placeholders): compared as ADDR."""
    return ADDRESS.sub("ADDR", text)


@pytest.mark.parametrize("config", SHIPPED)
def test_export_then_import_plans_every_rank_as_the_shipped_config(tmp_path, capsys, config):
    original = build(load(REPO / "configs" / config, environ={}))
    out = tmp_path / "manifests"
    code, _, err = run_cli(["export", str(REPO / "configs" / config), "--to", "lws", "-o", str(out)], capsys)
    assert code == 0, err
    back = tmp_path / "back.yaml"
    code, _, err = run_cli(["import", *map(str, sorted(out.iterdir())), "-o", str(back)], capsys)
    assert code == 0, err
    again = build(load(back, environ={}))
    assert sorted((g.name, g.engine, len(g.node_indices)) for g in again.groups) == sorted(
        (g.name, g.engine, len(g.node_indices)) for g in original.groups
    )
    for group in original.groups:
        mine = sorted((s for s in original.services if s.group == group.name), key=lambda s: s.rank)
        theirs = sorted((s for s in again.services if s.group == group.name), key=lambda s: s.rank)
        for a, b in zip(mine, theirs, strict=True):
            assert erased(" ".join(b.command)) == erased(" ".join(a.command)), a.service
            assert {k: erased(v) for k, v in b.env.items()} == {k: erased(v) for k, v in a.env.items()}, a.service
            assert b.image == a.image and b.container.volumes == a.container.volumes
            assert (b.container.privileged, b.container.devices) == (a.container.privileged, a.container.devices)
    roles = sorted(s.role for s in original.services if s.group is None)
    assert sorted(s.role for s in again.services if s.group is None) == roles


def test_export_to_lws_of_a_process_runtime_file_without_images_is_refused(tmp_path):
    """configs/local.yaml runs processes, no image: LWS pods need one, so no manifest with `image: ''`."""
    out = tmp_path / "out"
    run = subprocess.run(
        [sys.executable, "-m", "launcher", "export", str(REPO / "configs" / "local.yaml"), "--to", "lws",
         "-o", str(out)],
        capture_output=True, text=True, timeout=120, env=fresh_env(), cwd=tmp_path,
    )  # fmt: skip
    lines = run.stderr.strip().splitlines()
    assert run.returncode == 2 and len(lines) == 1 and "Traceback" not in run.stderr, run.stderr
    assert lines[0].startswith(f"error: {REPO / 'configs' / 'local.yaml'}: image: ") and "container image" in lines[0]
    assert not out.exists()


def test_import_to_stdout_says_to_write_a_file_before_migrate(tmp_path, capsys):
    """Imported to stdout there is no file to migrate: the hint says -o FILE first, never `migrate the file`."""
    manifest = tmp_path / "001.yaml"
    manifest.write_text(seed_text("001"))
    code, out, err = run_cli(["import", str(manifest), *OPTIONS["001"]], capsys)
    assert code == 0 and "\ndeployment:" in out, err
    assert "launcher migrate the file" not in err
    assert "import again with -o FILE, then `launcher migrate FILE --sglang 0.5.21` rewrites the flags above" in err
