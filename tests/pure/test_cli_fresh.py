"""Every verb as a user runs it: `launcher ...` in a fresh interpreter, never inside pytest's process.

Import order inside one pytest process hides real breakage (an import cycle that only bites when a
verb's own module is the first one loaded), so these run the installed console script: every verb's help,
every shipped config's plan (text, the default) and migration, every bad command line of the table. The
same plan in its other formats, and the help of the subcommands, run the same entry point in this process
(each fresh process costs 0.3-0.5 CPU-s; these add no import order of their own).
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import io
import json
import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

from tests.helpers import KNOWN_COMMANDS, cli_commands, cli_main, fresh_env, loopback_inventory, run_cli

REPO = Path(__file__).resolve().parents[2]
CONFIGS = sorted((REPO / "configs").glob("*.yaml"))
LAUNCHER = str(Path(sys.executable).with_name("launcher"))
ENV = fresh_env()


def launcher(*args: str, timeout: float = 120, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run([LAUNCHER, *args], capture_output=True, text=True, timeout=timeout, cwd=cwd, env=ENV)


def launch_all(argvs: list[tuple[str, ...]]) -> dict[tuple[str, ...], subprocess.CompletedProcess]:
    """Many fresh `launcher` runs, two at a time (each costs ~0.3-0.5 s of CPU)."""
    with ThreadPoolExecutor(max_workers=2) as pool:
        return dict(zip(argvs, pool.map(lambda argv: launcher(*argv), argvs), strict=True))


def in_process(*args: str) -> subprocess.CompletedProcess:
    """The CLI's entry point run in this process, in the repository, its output captured: what a fresh
    run would print, for a verb that already has its fresh run here."""
    out, err, cwd = io.StringIO(), io.StringIO(), Path.cwd()
    try:
        os.chdir(REPO)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = cli_main(list(args))
    finally:
        os.chdir(cwd)
    return subprocess.CompletedProcess(["launcher", *args], code, out.getvalue(), err.getvalue())


def assert_no_traceback(proc: subprocess.CompletedProcess) -> None:
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr[-2000:]


def migrate_argv(config: Path) -> tuple[str, ...]:
    return ("migrate", str(config), "--sglang", "0.5.21", "--dry-run")


@pytest.fixture(scope="module")
def migrate_runs() -> dict[tuple[str, ...], subprocess.CompletedProcess]:
    return launch_all([migrate_argv(c) for c in CONFIGS])


@pytest.mark.parametrize("config", CONFIGS, ids=[c.stem for c in CONFIGS])
def test_migrate_dry_run_on_every_shipped_config(config: Path, migrate_runs) -> None:
    proc = migrate_runs[migrate_argv(config)]
    assert_no_traceback(proc)
    assert proc.returncode == 0, proc.stderr
    # Either a diff of this file or the one line saying there is nothing to change.
    assert proc.stdout.startswith(f"--- {config}") or proc.stdout.strip() == (
        f"{config}: nothing to change for SGLang 0.5.21"
    ), proc.stdout[:500]


BAD_COMMAND_LINES = [
    (["plan", "configs/dsr1-104gpu.yaml", "--format", "nope"], "--format", "'nope' is not one of"),
    (["doctor", "--host-key-policy", "maybe"], "--host-key-policy", "'maybe' is not one of"),
    (["up", "--parallel", "0"], "--parallel", "got '0'"),
    (["logs", "--rank", "x"], "--rank", "got 'x'"),
    (["plan", "configs/local.yaml", "--bogus"], "--bogus", "No such option"),
    (["migrate", "configs/local.yaml"], "--sglang", "Missing option"),
    # Seconds are finite and at most a day (inf overflowed sleeps and socket timeouts mid-run).
    (["watch", "-c", "/nonexistent.yaml", "--interval", "inf"], "--interval", "less than or equal to 86400"),
    (["status", "-c", "/nonexistent.yaml", "--connect-timeout", "1e300"], "--connect-timeout", "got '1e300'"),
    # Scripts that cannot be written: the option and why, no traceback.
    (["plan", "configs/local.yaml", "-f", "script", "--out", "/dev/null/x"], "--out", "cannot write /dev/null/x"),
    # A file name with a newline is still one line, the newline shown as \n.
    (["status", "-c", "a\nb.yaml"], "a\\nb.yaml", "file not found"),
    (["stage", "configs/local.yaml"], "--from", "Missing option"),
    (["stage", "configs/local.yaml", "--from", "/tmp", "--to", "rel"], "--to", "expected an absolute path"),
    (["stage", "configs/local.yaml", "--from", "/no/such/dir"], "--from", "no such directory here"),
    (["image", "push", "--fanout", "0"], "--fanout", "got '0'"),
    (["image", "push", "configs/local.yaml"], "runtime", "needs `runtime: docker`"),
    (["image", "build", "-f", "/no/Dockerfile", "--tag", "x:1"], "-f", "no such file"),
]


@pytest.fixture(scope="module")
def bad_runs() -> dict[tuple[str, ...], subprocess.CompletedProcess]:
    return launch_all([tuple(args) for args, _, _ in BAD_COMMAND_LINES])


@pytest.mark.parametrize(
    ("args", "option", "says"), BAD_COMMAND_LINES, ids=[" ".join(a) for a, _, _ in BAD_COMMAND_LINES]
)
def test_a_bad_command_line_is_one_line_and_exit_2(args: list[str], option: str, says: str, bad_runs) -> None:
    proc = bad_runs[tuple(args)]
    assert_no_traceback(proc)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ") and option in lines[0] and says in lines[0], lines[0]
    assert proc.stdout == ""


# -- --help of every command, found by walking the typer app ------------------------------------

COMMANDS = cli_commands()
GROUPS = sorted(path for path, command in COMMANDS.items() if getattr(command, "commands", None))


def test_the_walk_finds_every_known_command() -> None:
    # The tests below are driven by the walk: one that found nothing would pass vacuously.
    assert set(COMMANDS) >= KNOWN_COMMANDS, KNOWN_COMMANDS - set(COMMANDS)
    assert set(GROUPS) >= {(), ("lock",), ("image",)}


def screen_text(text: str) -> str:
    """What a person reads in rich's help: no colours, no box lines, wrapped lines joined."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", text)
    return " ".join(re.sub(r"[│╭╮╰╯─]", " ", text).split())


def assert_shows_help(proc: subprocess.CompletedProcess, path: tuple[str, ...]) -> None:
    assert_no_traceback(proc)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    shown = screen_text(proc.stdout)
    assert f"Usage: {' '.join(('launcher', *path))} " in shown, proc.stdout[:1000]
    first_line = COMMANDS[path].help.strip().splitlines()[0]
    assert " ".join(first_line.split()) in shown, (first_line, proc.stdout[:2000])


@pytest.fixture(scope="module")
def help_runs() -> dict[tuple[str, ...], subprocess.CompletedProcess]:
    """Fresh: each verb's help (a subcommand's in this process: its verb's module has its fresh run), the
    bare groups, `version`."""
    fresh = [(*path, "--help") for path in sorted(COMMANDS) if len(path) < 2] + GROUPS + [("version",)]
    runs = launch_all(fresh)
    runs.update({(*path, "--help"): in_process(*path, "--help") for path in sorted(COMMANDS) if len(path) >= 2})
    return runs


@pytest.mark.parametrize("path", sorted(COMMANDS), ids=lambda p: " ".join(("launcher", *p)))
def test_help_of_every_command(path: tuple[str, ...], help_runs) -> None:
    assert_shows_help(help_runs[(*path, "--help")], path)


@pytest.mark.parametrize("path", GROUPS, ids=lambda p: " ".join(("launcher", *p)))
def test_a_bare_group_shows_its_help(path: tuple[str, ...], help_runs) -> None:
    # `launcher` alone, `launcher lock` alone: asking what there is, not a mistake.
    assert_shows_help(help_runs[path], path)


def test_version_is_the_installed_package_version(help_runs) -> None:
    proc = help_runs[("version",)]
    assert_no_traceback(proc)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == importlib.metadata.version("launcher")


def help_words(text: str) -> set[str]:
    """The words of a help screen, box lines and colours left out."""
    return set(re.sub(r"[│╭╮╰╯─]", " ", re.sub(r"\x1b\[[0-9;]*m", "", text)).split())


def assert_no_word_cut(narrow: str, wide: str) -> None:
    """Every word of the 80-column screen is a word of the wide one: a word split across two lines
    (`decod` / `e`) or cut short (`DEPL…`) is not."""
    assert "…" not in narrow, narrow
    assert help_words(narrow) <= help_words(wide), (sorted(help_words(narrow) - help_words(wide)), narrow)


def test_bench_help_at_80_columns_splits_no_word() -> None:
    """`COLUMNS=80 launcher bench --help`, as a user's terminal runs it: every option panel's words whole."""
    narrow, wide = (
        subprocess.run(
            [LAUNCHER, "bench", "--help"],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=REPO,
            env={**ENV, "COLUMNS": str(columns)},
        )  # fmt: skip
        for columns in (80, 400)
    )
    assert narrow.returncode == wide.returncode == 0, narrow.stderr + wide.stderr
    assert max(len(line) for line in narrow.stdout.splitlines()) <= 80 < max(map(len, wide.stdout.splitlines()))
    assert "--workload" in narrow.stdout and "prefill" in narrow.stdout  # the choices are still told
    assert_no_word_cut(narrow.stdout, wide.stdout)


@pytest.mark.parametrize("path", sorted(p for p in COMMANDS if p not in GROUPS), ids=lambda p: " ".join(p))
def test_every_help_at_80_columns_splits_no_word(path: tuple[str, ...], monkeypatch, capsys) -> None:
    """The same for every command, in this process (rich reads COLUMNS when typer makes its console)."""
    screens = []
    for columns in ("80", "400"):
        monkeypatch.setenv("COLUMNS", columns)
        code, out, err = run_cli([*path, "--help"], capsys)
        assert code == 0, err
        screens.append(out)
    assert_no_word_cut(*screens)


# -- plan, every format, every shipped config --------------------------------------------------

FORMATS = ["text", "json", "script", "script --out"]
# The testbed configs name no nodes and take ${TESTBED_*} from the inventory's `vars`.
NEEDS_INVENTORY = {c for c in CONFIGS if "nodes" not in yaml.safe_load(c.read_text())}


@pytest.fixture(scope="module")
def inventory(tmp_path_factory) -> Path:
    return loopback_inventory(tmp_path_factory.mktemp("inventory") / "inventory.yaml")


def expected_nodes(config: Path, inventory: Path) -> tuple[str, list[dict]]:
    """(deployment name, nodes in order) as the files say, read without the launcher."""
    data = yaml.safe_load(config.read_text())
    nodes = yaml.safe_load(inventory.read_text())["nodes"] if config in NEEDS_INVENTORY else data["nodes"]
    return data["deployment"], nodes


def assert_script(script: str, index: int, node: dict, what: str) -> None:
    assert script.startswith("#!/usr/bin/env bash\n"), what
    assert f"node {index} ({node['name']} {node['address']})" in script, what
    check = subprocess.run(["bash", "-n"], input=script, capture_output=True, text=True, timeout=30)
    assert check.returncode == 0, f"{what}: bash -n: {check.stderr}"


def test_some_shipped_configs_need_the_inventory() -> None:
    assert {c.name for c in NEEDS_INVENTORY} == {"testbed-104.yaml", "testbed-dsr1.yaml", "testbed-small.yaml"}


def plan_argv(config: Path, fmt: str, inventory: Path, out_root: Path) -> tuple[str, ...]:
    argv = ["plan", str(config), "--format", fmt.split()[0]]
    if config in NEEDS_INVENTORY:
        argv += ["-i", str(inventory)]
    if fmt == "script --out":
        argv += ["--out", str(out_root / config.stem)]
    return tuple(argv)


@pytest.fixture(scope="module")
def plan_runs(inventory: Path, tmp_path_factory) -> tuple[Path, dict[tuple[str, ...], subprocess.CompletedProcess]]:
    """Every config's plan: text (the default) in a fresh process, the other formats in this one."""
    out_root = tmp_path_factory.mktemp("scripts")
    runs = launch_all([plan_argv(c, "text", inventory, out_root) for c in CONFIGS])
    for argv in (plan_argv(c, fmt, inventory, out_root) for c in CONFIGS for fmt in FORMATS if fmt != "text"):
        runs[argv] = in_process(*argv)
    return out_root, runs


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("config", CONFIGS, ids=[c.stem for c in CONFIGS])
def test_plan_of_every_shipped_config(config: Path, fmt: str, inventory: Path, plan_runs) -> None:
    out_root, runs = plan_runs
    proc = runs[plan_argv(config, fmt, inventory, out_root)]
    out_dir = out_root / config.stem
    assert_no_traceback(proc)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    name, nodes = expected_nodes(config, inventory)
    assert nodes
    if fmt == "text":
        lines = proc.stdout.splitlines()
        assert lines[0].startswith(f"deployment {name}: {len(nodes)} nodes, "), lines[0]
        for i, node in enumerate(nodes):
            assert any(
                re.match(rf"node {i}  {re.escape(node['name'])}  {re.escape(node['address'])}\b", line)
                for line in lines
            ), f"node {i} missing:\n{proc.stdout[:3000]}"
    elif fmt == "json":
        data = json.loads(proc.stdout)
        assert {"deployment", "endpoint", "model", "nodes", "groups", "services"} <= set(data), sorted(data)
        assert data["deployment"] == name
        assert [(n["index"], n["name"], n["address"]) for n in data["nodes"]] == [
            (i, n["name"], n["address"]) for i, n in enumerate(nodes)
        ]
        assert data["services"] and data["groups"]
        for s in data["services"]:
            assert 0 <= s["node_index"] < len(nodes) and s["command"] and s["docker_run"], s["name"]
    elif fmt == "script":
        scripts = re.split(r"(?m)^(?=#!/usr/bin/env bash$)", proc.stdout)[1:]
        assert len(scripts) == len(nodes), proc.stdout[:2000]
        for i, (script, node) in enumerate(zip(scripts, nodes, strict=True)):
            assert_script(script, i, node, f"script {i}")
    else:
        assert proc.stdout.strip() == f"wrote {len(nodes)} scripts to {out_dir}"
        files = sorted(out_dir.iterdir(), key=lambda p: int(re.search(r"-node(\d+)-", p.name).group(1)))
        assert [f.name for f in files] == [f"{name}-node{i}-{n['name']}.sh" for i, n in enumerate(nodes)]
        for i, (path, node) in enumerate(zip(files, nodes, strict=True)):
            assert os.access(path, os.X_OK), path
            assert_script(path.read_text(), i, node, path.name)


def test_a_config_that_is_not_a_regular_file_is_refused_at_once(tmp_path: Path) -> None:
    fifo = tmp_path / "deploy.yaml"
    os.mkfifo(fifo)  # reading it would block forever
    for args in (["plan", str(fifo)], ["plan", "/dev/zero"], ["migrate", str(tmp_path), "--sglang", "0.5.21"]):
        proc = launcher(*args, timeout=60)
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.strip().splitlines() == [f"error: {args[1]}: not a regular file"], proc.stderr


def test_an_unreachable_docker_engine_is_one_line_and_exit_1() -> None:
    env = dict(os.environ, DOCKER_HOST="unix:///nonexistent/docker.sock")
    proc = subprocess.run(
        [LAUNCHER, "image", "build", "-f", "Dockerfile.wideep", "--tag", "x:1"],
        capture_output=True, text=True, timeout=120, cwd=REPO, env=env,
    )  # fmt: skip
    assert_no_traceback(proc)
    assert proc.returncode == 1, proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("error: cannot reach the local Docker engine (unix:///nonexistent/docker.sock): ")
