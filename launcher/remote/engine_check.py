#!/usr/bin/env python3
"""Parse an engine's launch argv with the engine's own argument parser, starting nothing.

Usage (ARGV is what follows `python3 -m <module>`):

    python engine_check.py --engine ENGINE [--env KEY=VALUE ...] -- ARGV...
    python engine_check.py --batch < requests.jsonl

ENGINE is one of:

* ``sglang``: SGLang's ``ServerArgs.add_cli_args`` on ``argparse.ArgumentParser(prog="sglang serve")``,
  as ``sglang.launch_server`` builds it (``--config`` files are merged the same way). Where constructing
  ``ServerArgs`` is free of side effects (0.5.21: ``__post_init__`` does nothing and resolution is a
  separate ``resolve_once`` step), ``ServerArgs.from_cli_args`` runs too. Older releases resolve in
  ``__post_init__`` (GPU probing, model config download), so for them only the parser runs.
  ``resolve_once`` is never called: it reads the model config and the hardware.
* ``dynamo-sglang``: ``dynamo.sglang.args.parse_args``, the function ``python3 -m dynamo.sglang`` calls
  first. It builds the Dynamo runtime + Dynamo SGLang groups and SGLang's ``ServerArgs`` parser and
  runs Dynamo's own post-parse checks; it creates no runtime and no engine. Its model prefetch
  (``fetch_model``) is replaced by a no-op so that nothing is downloaded.
* ``vllm``: ``vllm serve``'s parser (ARGV is what follows ``vllm serve``): vLLM's CLI parser with its
  ``serve`` subcommand (``ServeSubcommand.subparser_init``, as ``vllm.entrypoints.cli.main`` builds it),
  then ``ServeSubcommand.validate`` and ``AsyncEngineArgs.from_cli_args``, which is how ``vllm serve``
  builds its engine arguments. ``create_engine_config`` is never called: it reads the model and the GPUs.
* ``dynamo-vllm``: ``dynamo.vllm.args.parse_args_with_model_fetch``, what ``python3 -m dynamo.vllm``
  calls first. It builds Dynamo's runtime and vLLM groups around vLLM's own ``AsyncEngineArgs.add_cli_args``
  parser, builds ``AsyncEngineArgs`` and runs Dynamo's post-parse checks (e.g. a prefill worker needs
  ``--kv-transfer-config``); no runtime, no engine. Its model fetch (``fetch_model``, used for ``ngc://``
  models) is replaced by a no-op, and environment variables it sets (it fills in
  ``VLLM_NIXL_SIDE_CHANNEL_HOST`` when a NIXL connector is configured and the variable is unset) are
  put back after each check.
  For both: vLLM picks its platform (CUDA, ROCm, CPU, ...) from what it finds. Where it finds none (a
  CPU-only parser env, or a container started without GPUs), its parser cannot build its defaults
  ("Failed to infer device type"), so vLLM's own CUDA platform class stands in (what the image resolves
  on a GPU node); the CUDA kernel library that class imports for op registration cannot load without
  the NVIDIA driver, and is replaced by an empty module. "notes" says when that happened.
* ``dynamo-mocker``: ``dynamo.mocker.args.parse_args``.
* ``dynamo-frontend``: ``dynamo.frontend.main.parse_args`` (reads ``sys.argv``, which is set for the call).

Output: one JSON object on stdout, ``{"ok", "engine", "version", "errors", "warnings", ...}``; exit
status 0 if ok, 1 if the argv was rejected, 2 if the parser itself could not be loaded. Argparse
errors (unrecognized arguments, ambiguous option prefixes, invalid choices, retired flags) and
exceptions raised while parsing are errors. argparse stops at its first error, so the checker drops the
option an error names and parses the rest again (bounded), to list every bad option in one go.
Deprecation messages (logged at WARNING or ``warnings.warn``) are warnings, and so are options accepted
only as unique prefixes (every parser here keeps argparse's allow_abbrev=True). "notes" says what ran.
Whatever the engines print goes to stderr, so stdout holds only the JSON.

``--batch`` reads JSON lines ``{"engine": ..., "argv": [...], "env": {...}}`` from stdin and writes one
result line per request (flushed), so one process (whose imports take tens of seconds for
dynamo-sglang) can check many argvs. Environment variables (``--env`` / ``"env"``) are set before the
engine modules are imported (Dynamo reads defaults such as ``DYN_NAMESPACE`` from the environment);
in batch mode they stay set for later requests.

Dependencies: the standard library and the engine packages only, so that the file can be copied into
an engine container and run with its python.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import importlib.metadata
import json
import logging
import os
import re
import sys
import traceback
import types
import warnings
from collections.abc import Callable, Iterator
from typing import Any

ENGINES = ("sglang", "dynamo-sglang", "vllm", "dynamo-vllm", "dynamo-mocker", "dynamo-frontend")

_ANSI = re.compile(r"\x1b\[[0-9;]*m")


class ParserRejected(Exception):
    """Raised instead of argparse's print-usage-and-exit."""


class LoadFailed(Exception):
    """The engine's parser could not be imported or built."""


def _clean(text: str) -> str:
    return _ANSI.sub("", str(text)).strip()


def _dist_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


@contextlib.contextmanager
def _argparse_raises() -> Iterator[None]:
    """Make every ArgumentParser raise ParserRejected where it would print usage and exit(2)."""

    original = argparse.ArgumentParser.error

    def error(self: argparse.ArgumentParser, message: str) -> None:
        raise ParserRejected(f"{self.prog}: error: {message}")

    argparse.ArgumentParser.error = error  # type: ignore[method-assign]
    try:
        yield
    finally:
        argparse.ArgumentParser.error = original  # type: ignore[method-assign]


@contextlib.contextmanager
def _record_option_strings(known: set[str]) -> Iterator[None]:
    """Collect the option strings of every parser that parses during the check."""

    original = argparse.ArgumentParser.parse_known_args

    def parse_known_args(self: argparse.ArgumentParser, *args: Any, **kwargs: Any) -> Any:
        known.update(self._option_string_actions)
        return original(self, *args, **kwargs)

    argparse.ArgumentParser.parse_known_args = parse_known_args  # type: ignore[method-assign]
    try:
        yield
    finally:
        argparse.ArgumentParser.parse_known_args = original  # type: ignore[method-assign]


def _abbreviations(argv: list[str], known: set[str]) -> list[str]:
    """Warnings for options argparse accepted only as unique prefixes (allow_abbrev): spell them out."""

    found = []
    for token in argv:
        option = token.split("=", 1)[0]
        if not option.startswith("--") or option == "--" or option in known:
            continue
        matches = sorted(name for name in known if name.startswith(option))
        if len(matches) == 1:
            found.append(f"abbreviated option {option} was taken as {matches[0]}; write it out in full")
    return found


@contextlib.contextmanager
def _capture_diagnostics(records: list[logging.LogRecord], caught: list[warnings.WarningMessage]) -> Iterator[None]:
    """Collect log records at WARNING and above (whatever handlers the engines installed) and warnings."""

    previous = logging.getLogRecordFactory()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        if record.levelno >= logging.WARNING:
            records.append(record)
        return record

    logging.setLogRecordFactory(factory)
    try:
        with warnings.catch_warnings(record=True) as got:
            warnings.simplefilter("always")
            try:
                yield
            finally:
                caught.extend(got)
    finally:
        logging.setLogRecordFactory(previous)


# --- engines -----------------------------------------------------------------------------------------
# Each loader imports the engine (outside the capture window: import-time noise is not about the argv)
# and returns (versions, check) where check(argv) parses and returns a list of notes.


def _load_sglang() -> tuple[dict[str, str | None], Callable[[list[str]], list[str]]]:
    try:
        from sglang.srt.server_args import ServerArgs
    except Exception as exc:  # noqa: BLE001 - any import failure means "cannot check here"
        raise LoadFailed(f"cannot import sglang.srt.server_args: {type(exc).__name__}: {exc}") from exc

    construct = hasattr(ServerArgs, "resolve_once")

    def check(argv: list[str]) -> list[str]:
        parser = argparse.ArgumentParser(prog="sglang serve")
        ServerArgs.add_cli_args(parser)
        if "--config" in argv:
            from sglang.srt.utils.server_args_config_parser import ConfigArgumentMerger

            argv = ConfigArgumentMerger(parser).merge_config_with_args(argv)
        namespace = parser.parse_args(argv)
        if construct:
            ServerArgs.from_cli_args(namespace)
            return ["parsed and constructed ServerArgs (not resolved: resolution reads the model and hardware)"]
        return ["parsed only: this SGLang resolves in ServerArgs.__post_init__, which needs the model and a GPU"]

    return {"sglang": _dist_version("sglang")}, check


def _load_dynamo_sglang() -> tuple[dict[str, str | None], Callable[[list[str]], list[str]]]:
    try:
        dynamo_args = importlib.import_module("dynamo.sglang.args")
    except Exception as exc:  # noqa: BLE001
        raise LoadFailed(f"cannot import dynamo.sglang.args: {type(exc).__name__}: {exc}") from exc

    skipped: list[str] = []

    async def no_fetch(model: str, *args: Any, **kwargs: Any) -> str:
        skipped.append(model)
        return model

    # parse_args prefetches models that are not on local disk; the check must not download anything.
    dynamo_args.fetch_model = no_fetch

    def check(argv: list[str]) -> list[str]:
        skipped.clear()
        asyncio.run(dynamo_args.parse_args(list(argv)))
        notes = ["dynamo.sglang.args.parse_args completed (ServerArgs built, not resolved)"]
        notes += [f"model prefetch skipped for {model!r}" for model in skipped]
        return notes

    return {"ai-dynamo": _dist_version("ai-dynamo"), "sglang": _dist_version("sglang")}, check


_vllm_platform_notes: list[str] | None = None


def _settle_vllm_platform() -> list[str]:
    """Resolve vLLM's platform as vLLM does; stand in its CUDA platform where none is found (see above).

    Must run before vllm.engine.arg_utils is imported: that module binds `current_platform` at import.
    Returns notes for the verdicts (the same for every vLLM engine of this process).
    """

    global _vllm_platform_notes
    if _vllm_platform_notes is None:
        _vllm_platform_notes = _resolve_vllm_platform()
    return _vllm_platform_notes


def _resolve_vllm_platform() -> list[str]:
    from vllm import platforms

    current = platforms.current_platform
    if getattr(current, "device_type", ""):
        return []
    stubbed: list[str] = []
    for _ in range(8):
        try:
            from vllm.platforms.cuda import CudaPlatform
        except ImportError as exc:
            name = exc.name or ""
            # only vLLM's own compiled kernel libraries (vllm._C_stable_libtorch, vllm._C, ...)
            if not re.fullmatch(r"vllm\._[\w]*C[\w]*", name) or name in stubbed:
                raise
            sys.modules[name] = types.ModuleType(name)
            stubbed.append(name)
            continue
        break
    else:
        raise ImportError("vllm.platforms.cuda keeps failing to import")
    platforms.current_platform = CudaPlatform()
    note = f"no accelerator platform found: vLLM's {type(platforms.current_platform).__name__} stands in"
    if stubbed:
        note += f" ({', '.join(stubbed)} not loaded: needs the NVIDIA driver)"
    return [note]


def _reset_vllm_once_logs() -> None:
    """vLLM logs some warnings once per process (lru_cache); each check must see its own."""

    vllm_logger = sys.modules.get("vllm.logger")
    for name in ("_print_debug_once", "_print_info_once", "_print_warning_once", "_print_error_once"):
        cache_clear = getattr(getattr(vllm_logger, name, None), "cache_clear", None)
        if cache_clear is not None:
            cache_clear()


@contextlib.contextmanager
def _environ_restored() -> Iterator[None]:
    saved = dict(os.environ)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def _load_vllm() -> tuple[dict[str, str | None], Callable[[list[str]], list[str]]]:
    try:
        platform_notes = _settle_vllm_platform()
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.entrypoints.cli.serve import ServeSubcommand

        try:
            from vllm.utils.argparse_utils import FlexibleArgumentParser
        except ImportError:  # older vLLM
            from vllm.utils import FlexibleArgumentParser  # type: ignore[no-redef]
    except Exception as exc:  # noqa: BLE001
        raise LoadFailed(f"cannot import vLLM's serve parser: {type(exc).__name__}: {exc}") from exc

    def check(argv: list[str]) -> list[str]:
        _reset_vllm_once_logs()
        parser = FlexibleArgumentParser(description="vLLM CLI")
        subparsers = parser.add_subparsers(required=False, dest="subparser")
        serve = ServeSubcommand()
        serve.subparser_init(subparsers).set_defaults(dispatch_function=serve.cmd)
        args = parser.parse_args(["serve", *argv])
        serve.validate(args)
        if getattr(args, "model_tag", None) is not None:  # ServeSubcommand.cmd's first step
            args.model = args.model_tag
        AsyncEngineArgs.from_cli_args(args)
        return [
            *platform_notes,
            "vllm serve: parsed, validated and AsyncEngineArgs built (create_engine_config not run: "
            "it reads the model and the GPUs)",
        ]

    return {"vllm": _dist_version("vllm")}, check


def _load_dynamo_vllm() -> tuple[dict[str, str | None], Callable[[list[str]], list[str]]]:
    try:
        platform_notes = _settle_vllm_platform()
        dynamo_args = importlib.import_module("dynamo.vllm.args")
    except Exception as exc:  # noqa: BLE001
        raise LoadFailed(f"cannot import dynamo.vllm.args: {type(exc).__name__}: {exc}") from exc

    skipped: list[str] = []

    async def no_fetch(model: str, *args: Any, **kwargs: Any) -> str:
        skipped.append(model)
        return model

    # ngc:// models are fetched (metadata) during parsing; the check must not download anything.
    dynamo_args.fetch_model = no_fetch
    parse = getattr(dynamo_args, "parse_args_with_model_fetch", None)

    def check(argv: list[str]) -> list[str]:
        skipped.clear()
        _reset_vllm_once_logs()
        with _environ_restored():
            if parse is not None:
                asyncio.run(parse(list(argv)))
            else:  # a Dynamo without the fetching variant
                dynamo_args.parse_args(list(argv))
        notes = [*platform_notes, "dynamo.vllm.args parsed and validated (AsyncEngineArgs built, no engine config)"]
        notes += [f"model fetch skipped for {model!r}" for model in skipped]
        return notes

    return {"ai-dynamo": _dist_version("ai-dynamo"), "vllm": _dist_version("vllm")}, check


def _load_dynamo_mocker() -> tuple[dict[str, str | None], Callable[[list[str]], list[str]]]:
    try:
        mocker_args = importlib.import_module("dynamo.mocker.args")
    except Exception as exc:  # noqa: BLE001
        raise LoadFailed(f"cannot import dynamo.mocker.args: {type(exc).__name__}: {exc}") from exc

    def check(argv: list[str]) -> list[str]:
        mocker_args.parse_args(list(argv))
        return ["dynamo.mocker.args.parse_args completed"]

    return {"ai-dynamo": _dist_version("ai-dynamo")}, check


def _load_dynamo_frontend() -> tuple[dict[str, str | None], Callable[[list[str]], list[str]]]:
    try:
        frontend_main = importlib.import_module("dynamo.frontend.main")
    except Exception as exc:  # noqa: BLE001
        raise LoadFailed(f"cannot import dynamo.frontend.main: {type(exc).__name__}: {exc}") from exc

    def check(argv: list[str]) -> list[str]:
        saved = sys.argv
        sys.argv = [saved[0], *argv]
        try:
            frontend_main.parse_args()
        finally:
            sys.argv = saved
        return ["dynamo.frontend.main.parse_args completed"]

    return {"ai-dynamo": _dist_version("ai-dynamo")}, check


_LOADERS = {
    "sglang": _load_sglang,
    "dynamo-sglang": _load_dynamo_sglang,
    "vllm": _load_vllm,
    "dynamo-vllm": _load_dynamo_vllm,
    "dynamo-mocker": _load_dynamo_mocker,
    "dynamo-frontend": _load_dynamo_frontend,
}
_loaded: dict[str, tuple[dict[str, str | None], Callable[[list[str]], list[str]]]] = {}

_PROGRAM = {
    "sglang": "sglang serve",
    "dynamo-sglang": "python3 -m dynamo.sglang",
    "vllm": "vllm",
    "dynamo-vllm": "python3 -m dynamo.vllm",
    "dynamo-mocker": "python3 -m dynamo.mocker",
    "dynamo-frontend": "python3 -m dynamo.frontend",
}
_MAX_ROUNDS = 12
_AMBIGUOUS = re.compile(r"ambiguous option: (-[^\s=]+)")
_ARGUMENT = re.compile(r"error: argument (\S+?): ")


@contextlib.contextmanager
def _program_name(engine: str) -> Iterator[None]:
    """Parsers built with the default prog name themselves after sys.argv[0]; name the real program."""

    saved = sys.argv
    sys.argv = [_PROGRAM[engine], *saved[1:]]
    try:
        yield
    finally:
        sys.argv = saved


def _drop_offender(message: str, argv: list[str]) -> list[str] | None:
    """Remove the option an argparse error names (with its values); None when that cannot be done.

    "unrecognized arguments" already lists every leftover, so it ends the search.
    """

    if (match := _AMBIGUOUS.search(message)) is not None:
        names = {match.group(1)}
    elif (match := _ARGUMENT.search(message)) is not None:
        names = set(match.group(1).split("/"))
    else:
        return None
    for index, token in enumerate(argv):
        option = token.split("=", 1)[0]
        if not option.startswith("-"):
            continue
        # exact spelling, or an abbreviation argparse expanded to one of the names
        if option in names or any(name.startswith(option) and option.startswith("--") for name in names):
            end = index + 1
            if "=" not in token:
                while end < len(argv) and not _looks_like_option(argv[end]):
                    end += 1
            return argv[:index] + argv[end:]
    return None


def _looks_like_option(token: str) -> bool:
    return token.startswith("-") and not re.fullmatch(r"-\d+(\.\d*)?([eE][-+]?\d+)?", token)


# Files the parser opened while it parsed (an audit hook: it cannot be removed, so it records only while
# _reads is a list). `up` keeps a passing verdict for the next `up` only when this is empty: a verdict that
# read a --config file, a chat template or a plugin depends on their content, which its key does not cover.
_reads: list[str] | None = None
_MAX_READS = 20
_NOT_READ = ("/proc/", "/sys/", "/dev/")


def _audit(event: str, args: tuple) -> None:
    if _reads is None or event != "open" or not args or len(_reads) >= _MAX_READS:
        return
    path = args[0]
    if isinstance(path, bytes):
        path = os.fsdecode(path)
    if not isinstance(path, str):
        return  # a file descriptor
    full = os.path.abspath(path)
    # where code, package data and compiled code live; not "" (the working directory, where a --config
    # file may be); a .pyc anywhere is compiled code (PYTHONPYCACHEPREFIX puts it outside the packages)
    places = (*sys.path, sys.prefix, sys.base_prefix, getattr(sys, "pycache_prefix", None) or "")
    code = {p.rstrip(os.sep) + os.sep for p in places if os.path.isabs(p)}
    if full.endswith(".pyc"):
        return
    if not full.startswith(_NOT_READ) and not any(full.startswith(c) for c in code) and full not in _reads:
        _reads.append(full)


sys.addaudithook(_audit)


@contextlib.contextmanager
def _recording_reads(into: list[str]) -> Iterator[None]:
    global _reads
    _reads = into
    try:
        yield
    finally:
        _reads = None


def check_argv(engine: str, argv: list[str], env: dict[str, str] | None = None) -> tuple[dict[str, Any], int]:
    """Check one argv; returns (result, exit status)."""

    result: dict[str, Any] = {"ok": False, "engine": engine, "version": None, "errors": [], "warnings": []}
    if engine not in _LOADERS:
        result["errors"].append(f"unknown engine {engine!r}; expected one of {', '.join(ENGINES)}")
        return result, 2
    for key, value in (env or {}).items():
        os.environ[key] = value
    try:
        if engine not in _loaded:
            _loaded[engine] = _LOADERS[engine]()
    except LoadFailed as exc:
        result["errors"].append(str(exc))
        return result, 2
    versions, check = _loaded[engine]
    result["version"] = versions.get("ai-dynamo" if engine.startswith("dynamo-") else engine)
    result["versions"] = versions

    records: list[logging.LogRecord] = []
    caught: list[warnings.WarningMessage] = []
    errors: list[str] = []
    notes: list[str] = []
    remaining = list(argv)
    known: set[str] = set()
    reads: list[str] = []
    with (
        _recording_reads(reads),
        _argparse_raises(),
        _record_option_strings(known),
        _capture_diagnostics(records, caught),
        _program_name(engine),
    ):
        try:
            # argparse stops at the first error. To report every bad option at once, drop the option an
            # error names and parse again (a bounded number of times); the verdict stays "rejected".
            for _ in range(_MAX_ROUNDS):
                try:
                    notes = check(list(remaining))
                    if errors:
                        notes.append("the argv parsed once the rejected options were removed")
                    break
                except ParserRejected as exc:
                    errors.append(_clean(exc))
                    rest = _drop_offender(str(exc), remaining)
                    if rest is None:
                        break
                    remaining = rest
        except SystemExit as exc:
            # Engines that log the problem and sys.exit() themselves (the frontend's "Unknown arguments").
            if exc.code not in (0, None):
                errors.append(f"exited with status {exc.code}")
            else:
                errors.append("the parser exited with status 0 (--help or --version in the argv?)")
        except Exception as exc:  # noqa: BLE001 - e.g. a retired flag's ValueError, Dynamo's own checks
            errors.append(_clean(f"{type(exc).__name__}: {exc}"))
            frame = traceback.extract_tb(exc.__traceback__)[-1]
            notes.append(f"raised at {frame.filename}:{frame.lineno}")

    failed = bool(errors)
    logged_errors, result["warnings"] = _diagnostics(records, caught, failed)
    result["warnings"] += _abbreviations(remaining, known)
    result["errors"] = logged_errors + errors
    result["ok"] = not failed
    result["notes"] = notes
    result["reads"] = reads
    return result, 0 if result["ok"] else 1


def _diagnostics(
    records: list[logging.LogRecord], caught: list[warnings.WarningMessage], failed: bool
) -> tuple[list[str], list[str]]:
    """(errors, warnings) from what the parser logged and warned: a logged error is an error of a parse
    that failed (the frontend logs "Unknown arguments" and then exits), a warning of one that passed."""
    logged_errors: list[str] = []
    said: list[str] = []
    for record in records:
        try:
            message = _clean(record.getMessage())
        except Exception:  # noqa: BLE001 - a malformed log call must not hide the verdict
            message = _clean(str(record.msg))
        if not message:
            continue
        if record.levelno < logging.ERROR:
            said.append(message)
        elif failed:
            logged_errors.append(message)
        else:
            said.append(f"logged error: {message}")
    said += [f"{item.category.__name__}: {_clean(item.message)}" for item in caught]
    return logged_errors, said


# --- the whole option set, as data (scripts/flag-drift diffs two releases' sets) -----------------------


def _sglang_parser() -> argparse.ArgumentParser:
    from sglang.srt.server_args import ServerArgs

    parser = argparse.ArgumentParser(prog="sglang serve")
    ServerArgs.add_cli_args(parser)
    return parser


def _vllm_parser() -> argparse.ArgumentParser:
    _settle_vllm_platform()
    from vllm.entrypoints.cli.serve import ServeSubcommand

    try:
        from vllm.utils.argparse_utils import FlexibleArgumentParser
    except ImportError:  # older vLLM
        from vllm.utils import FlexibleArgumentParser  # type: ignore[no-redef]
    parser = FlexibleArgumentParser(description="vLLM CLI")
    subparsers = parser.add_subparsers(required=False, dest="subparser")
    return ServeSubcommand().subparser_init(subparsers)


_OPTION_PARSERS = {"sglang": _sglang_parser, "vllm": _vllm_parser}
# The option itself is deprecated ("Deprecated. Use ...", "(Deprecated: ...)", "is deprecated"), not a
# successor that mentions the flag it replaces ("Replaces the deprecated --grpc-mode").
_DEPRECATION = re.compile(r"^\W*deprecated\b|\b(flag|option|argument) is (now )?deprecated\b", re.I)
# "use --x", "Use '--x=v' instead", "replaced by --x": the successor a note names, with a value after "="
_SUCCESSOR = re.compile(
    r"(?:\buse|replaced by|switch to|in favou?r of)\s+[`'\"]?(--[a-z0-9][\w-]*(?:\{[\w,-]+\}[\w-]*)?)(?:=([\w.:/-]+))?",
    re.I,
)


def _successor(text: str) -> list[str]:
    """The argv a deprecation note says to write instead: `--a-{x,y}=v` -> --a-x v --a-y v."""
    found = _SUCCESSOR.search(text)
    if found is None:
        return []
    flag, value = found.group(1), found.group(2)
    brace = re.search(r"\{([\w,-]+)\}", flag)
    flags = (
        [flag[: brace.start()] + part + flag[brace.end() :] for part in brace.group(1).split(",")] if brace else [flag]
    )
    tokens: list[str] = []
    for name in flags:
        tokens += [name, value.rstrip(".")] if value else [name]
    return tokens


def _plain(value: Any) -> Any:
    """A default or choice as JSON data: scalars as they are, sequences item by item, others by repr."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    if isinstance(value, (set, frozenset)):
        return sorted(str(item) for item in value)
    return getattr(value, "value", None) if hasattr(value, "value") else repr(value)[:200]


def _choices(choices: Any) -> list[str]:
    """Choices as strings, in the parser's order (a set's order varies between runs: sorted)."""
    listed = [str(_plain(c)) for c in choices]
    return sorted(listed) if isinstance(choices, (set, frozenset)) else listed


def _option_record(action: argparse.Action) -> dict[str, Any]:
    help_text = action.help if isinstance(action.help, str) and action.help != argparse.SUPPRESS else ""
    notes = [str(getattr(action, a)) for a in ("error_message", "new_flag") if getattr(action, a, None)]
    deprecated = (
        "deprecat" in type(action).__name__.lower()
        or bool(getattr(action, "deprecated", False))
        or bool(getattr(action, "new_flag", None))  # an action that names its successor
        or bool(_DEPRECATION.search(help_text))
    )
    record: dict[str, Any] = {
        "options": list(action.option_strings),
        "dest": action.dest,
        "action": type(action).__name__,
        "type": getattr(action.type, "__name__", None) if action.type is not None else None,
        "nargs": action.nargs if action.nargs is None or isinstance(action.nargs, (int, str)) else str(action.nargs),
        "choices": None if action.choices is None else _choices(action.choices),
        "default": None if action.default is argparse.SUPPRESS else _plain(action.default),
        "deprecated": deprecated,
    }
    if deprecated:
        record["note"] = (help_text or " ".join(notes)).strip()[:400]
        new_flag = str(getattr(action, "new_flag", None) or "")
        record["replacement"] = _successor("use " + new_flag) if new_flag else _successor(" ".join([*notes, help_text]))
        const_value = getattr(action, "const_value", None)
        if const_value is not None and not isinstance(const_value, bool) and len(record["replacement"]) == 1:
            record["replacement"].append(str(action.const_value))
    return record


def option_set(engine: str) -> dict[str, Any]:
    """Every option of the engine's parser (argparse's own --help excepted), in the parser's order."""
    if engine not in _OPTION_PARSERS:
        raise SystemExit(f"--options supports {', '.join(_OPTION_PARSERS)}, not {engine!r}")
    with _program_name(engine):  # a parser built with the default prog names itself after sys.argv[0]
        parser = _OPTION_PARSERS[engine]()
    return options_of(parser, engine, _dist_version(engine))


def options_of(parser: argparse.ArgumentParser, engine: str, version: str | None) -> dict[str, Any]:
    """Any argparse parser's option set, as `--options` prints it."""
    options = [
        _option_record(action)
        for action in parser._actions
        if action.option_strings and not isinstance(action, argparse._HelpAction)
    ]
    return {
        "engine": engine,
        "version": version,
        "prog": parser.prog,
        "allow_abbrev": parser.allow_abbrev,
        "options": options,
    }


@contextlib.contextmanager
def _stdout_to_stderr() -> Iterator[Any]:
    """Send everything written to fd 1 (Python or native code) to stderr; yield a stream to the real stdout."""

    sys.stdout.flush()
    saved_fd = os.dup(1)
    os.dup2(2, 1)
    real_stdout = os.fdopen(saved_fd, "w", buffering=1)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield real_stdout
    finally:
        sys.stdout.flush()
        os.dup2(saved_fd, 1)
        real_stdout.flush()


def _batch_request(line: str) -> tuple[dict[str, Any], int]:
    request: Any = None
    try:
        request = json.loads(line)
        result, status = check_argv(
            str(request["engine"]), [str(a) for a in request["argv"]], dict(request.get("env") or {})
        )
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        result, status = {"ok": False, "engine": None, "version": None, "errors": [f"bad request: {exc!r}"]}, 2
    except Exception as exc:  # noqa: BLE001 - a bug here must not end a batch silently
        error = f"checker failed: {type(exc).__name__}: {exc}"
        result, status = {"ok": False, "engine": None, "version": None, "errors": [error]}, 2
    result.setdefault("warnings", [])
    if isinstance(request, dict) and "id" in request:
        result["id"] = request["id"]
    return result, status


def _parse_env(items: list[str]) -> dict[str, str]:
    env = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"--env expects KEY=VALUE, got {item!r}")
        env[key] = value
    return env


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    engine_argv: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, engine_argv = argv[:cut], argv[cut + 1 :]

    cli = argparse.ArgumentParser(
        prog="engine_check.py",
        description="Parse an engine launch argv with the engine's real argument parser.",
        epilog="Put the engine argv after `--`.",
        allow_abbrev=False,
    )
    mode = cli.add_mutually_exclusive_group(required=True)
    mode.add_argument("--engine", choices=ENGINES)
    mode.add_argument("--batch", action="store_true", help="read JSON requests from stdin, one per line")
    mode.add_argument("--options", choices=sorted(_OPTION_PARSERS), help="print the parser's whole option set as JSON")
    cli.add_argument("--env", action="append", default=[], metavar="KEY=VALUE", help="set before importing")
    options = cli.parse_args(argv)
    if options.batch and engine_argv:
        cli.error("--batch takes its argvs from stdin, not after `--`")
    env = _parse_env(options.env)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)

    with _stdout_to_stderr() as out:
        if options.options:
            out.write(json.dumps(option_set(options.options), indent=1) + "\n")
            return 0
        if not options.batch:
            result, status = check_argv(options.engine, engine_argv, env)
            out.write(json.dumps(result) + "\n")
            return status
        worst = 0
        os.environ.update(env)
        for line in sys.stdin:
            if not line.strip():
                continue
            result, status = _batch_request(line)
            out.write(json.dumps(result) + "\n")
            out.flush()
            worst = max(worst, status)
        return worst


if __name__ == "__main__":
    sys.exit(main())
