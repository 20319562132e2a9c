"""The README and the documentation site (docs/, mkdocs.yml): what a newcomer reads first stays short, every
page is reachable, and the command reference, rendered from the typer app at build time, lists every command.
Pure: no mkdocs build here (`.ci/run` builds the site with --strict, which fails on a broken link or anchor)."""

from __future__ import annotations

import importlib.util
import re

import yaml

from tests.helpers import REPO, cli_commands

README = REPO / "README.md"
DOCS = REPO / "docs"
# The set-up the README promises, command for command as it was before the docs moved out: the main job on
# the embedded default, and the tests.
SETUP = ("pip install uv && uv run launcher up configs/local.yaml", "uv run pytest")


def reference_hook():
    path = REPO / "scripts" / "mkdocs_cli_reference.py"
    spec = importlib.util.spec_from_file_location("mkdocs_cli_reference", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def nav_pages(nav) -> list[str]:
    """Every page the mkdocs.yml nav names, sections walked."""
    pages: list[str] = []
    for entry in nav:
        value = next(iter(entry.values())) if isinstance(entry, dict) else entry
        pages += nav_pages(value) if isinstance(value, list) else [value]
    return pages


def test_the_readme_is_short_and_narrow():
    lines = README.read_text().splitlines()
    assert len(lines) <= 250, len(lines)
    wide = [(n, len(line)) for n, line in enumerate(lines, 1) if len(line) >= 120]
    assert not wide, wide


def test_the_readme_keeps_the_two_setup_commands():
    blocks = re.findall(r"^## Set-up.*?\n```bash\n(.*?)```", README.read_text(), re.S | re.M)
    assert len(blocks) == 1, "one Set-up section with a bash block"
    commands = tuple(line.split("#")[0].strip() for line in blocks[0].splitlines())
    assert commands == SETUP, commands


def test_every_readme_link_into_the_repository_exists():
    targets = re.findall(r"\]\(((?!https?://)[^)#]+)(?:#[^)]*)?\)", README.read_text())
    assert "docs/getting-started.md" in targets and "benchmarks/RESULTS.md" in targets
    missing = [t for t in targets if not (REPO / t).is_file()]
    assert not missing, missing


def test_every_docs_page_is_in_the_nav_and_every_nav_page_exists():
    config = yaml.safe_load((REPO / "mkdocs.yml").read_text())
    assert config["docs_dir"] == "docs" and "scripts/mkdocs_cli_reference.py" in config["hooks"]
    pages = nav_pages(config["nav"])
    on_disk = sorted(p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md"))
    assert sorted(pages) == on_disk, set(on_disk) ^ set(pages)
    assert len(pages) == len(set(pages))
    for topic in ("deployment-file", "commands", "fabric-check", "shipping", "benchmarking", "observability",
                  "kubernetes-slurm", "security", "architecture", "development"):  # fmt: skip
        assert f"{topic}.md" in pages, topic


def test_the_command_reference_lists_every_command_and_option():
    """The hook's page against the app's own command list: a verb added to launcher/cli.py appears by itself."""
    hook = reference_hook()
    assert hook.MARKER in (DOCS / "reference.md").read_text()
    page = hook.on_page_markdown((DOCS / "reference.md").read_text(), page=None, config=None, files=None)
    assert hook.MARKER not in page
    sections = dict(re.findall(r"^## `(launcher[^`]*)`\n(.*?)(?=^## `|\Z)", page, re.S | re.M))
    commands = cli_commands()
    assert set(sections) == {" ".join(("launcher", *path)) for path in commands}, set(sections)
    for path, command in commands.items():
        text = sections[" ".join(("launcher", *path))]
        assert f"\n{' '.join(('launcher', *path))} [OPTIONS]" in text  # the usage line
        for param in command.params:
            for name in (*param.opts, *param.secondary_opts):
                if name.startswith("-"):
                    assert f"`{name}`" in text, (path, name)
    top = sections["launcher top"]
    assert "`--once`" in top and "One table" in top  # the help text itself, not only the name


def test_the_docs_speak_to_users_not_to_the_project_history():
    """No "seed 004": say what it is (DeepSeek-R1 on 104 H100s, LMSYS recipe). A random seed is fine."""
    texts = {README.name: README.read_text()} | {p.name: p.read_text() for p in DOCS.rglob("*.md")}
    for name, text in texts.items():
        found = re.findall(r".{0,30}\b[Ss]eeds?\b(?! \(100\)).{0,30}", text)
        assert not found, (name, found)
    assert "DeepSeek-R1 on 104 H100s (LMSYS recipe" in texts["README.md"]


def test_the_pictures_in_docs_are_shown_by_a_page():
    shown = " ".join(p.read_text() for p in DOCS.glob("*.md"))
    pictures = sorted(p.name for p in DOCS.glob("*.png"))
    assert pictures and not [name for name in pictures if f"]({name})" not in shown]
