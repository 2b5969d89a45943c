"""Composition root and command line: settings -> logging -> asyncio.run(command)."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

import orjson

from worker.cli import (
    SettingsError,
    build_parser,
    command_settings,
    load_settings,
    parse_args,
    settings_report,
)
from worker.logs import configure_logging
from worker.settings import LogFormat, Settings


def _run_async(main: Callable[[], Coroutine[Any, Any, int]]) -> int:
    try:
        import uvloop  # noqa: PLC0415  # optional speed-up; absent on some platforms

        return uvloop.run(main())
    except ImportError:
        return asyncio.run(main())


def tool_command(
    args: argparse.Namespace, settings: Settings
) -> Callable[[], Coroutine[Any, Any, int]]:
    """The coroutine of an operator tool (tail, topics, dlq)."""
    from worker import dlq, tools  # noqa: PLC0415

    if args.command == "tail":
        options = tools.TailOptions(
            sessions=frozenset(args.session),
            unhealthy=args.unhealthy,
            json=args.json,
            from_beginning=args.from_beginning,
            max_messages=args.max_messages,
            timeout_s=args.timeout,
        )
        return lambda: tools.tail_snapshots(settings, options)
    if args.command == "topics":
        return lambda: tools.create_worker_topics(settings, dry_run=args.dry_run)
    selection = dlq.Selection(
        frozenset(args.reason), tuple(args.offset), getattr(args, "all", False)
    )
    if args.dlq_command == "inspect":
        return lambda: dlq.inspect_dead_letters(settings, selection, args.limit, args.json)
    return lambda: dlq.replay_dead_letters(settings, selection, args.to, dry_run=args.dry_run)


def configure_for_a_person(settings: Settings, level: str = "WARNING") -> None:
    """Tools, replay and demo talk to a person: text logs at `level` unless set explicitly."""
    explicit = settings.model_fields_set
    configure_logging(
        settings.log_level if "log_level" in explicit else level,
        settings.log_format if "log_format" in explicit else LogFormat.TEXT,
    )


def interactive(command: Callable[[], int]) -> int:
    """Ctrl-C and a reader that left (`... | head`) end a command quietly, not in a traceback."""
    try:
        return command()
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # keep interpreter shutdown quiet too
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def run_tool(args: argparse.Namespace, settings: Settings) -> int:
    from worker.kafka.clients import StartupError  # noqa: PLC0415

    replaying = args.command_path == "dlq replay"
    if replaying and not (args.all or args.reason or args.offset):
        args.command_parser.error("select dead letters with --reason, --offset or --all")
    try:
        return interactive(lambda: _run_async(tool_command(args, settings)))
    except StartupError as error:
        sys.stderr.write(f"session-worker {args.command_path}: {error}\n")
        return 2


def main(argv: Sequence[str] | None = None) -> int:
    """Exit codes: 0 done, 1 done but something needs attention, 2 could not run."""
    args = parse_args(build_parser(), argv)
    command = args.command_path
    try:
        settings = load_settings(args)
    except SettingsError as error:
        sys.stderr.write(f"session-worker {command}: invalid {error}\n")
        return 2
    if args.check_config:
        report = settings_report(settings, command_settings()[command])
        sys.stdout.write(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode() + "\n")
        return 0
    if command == "run":
        from worker.app import run_worker  # noqa: PLC0415
        from worker.tuning import tune_runtime  # noqa: PLC0415

        configure_logging(settings.log_level, settings.log_format)
        tune_runtime()
        return _run_async(lambda: run_worker(settings))
    if command == "replay":
        from worker.replay import replay_file  # noqa: PLC0415  # keeps `run` start-up lean

        configure_for_a_person(settings)
        return interactive(lambda: replay_file(args.file, settings.rules()))
    if command == "demo":
        from worker.demo import run_demo  # noqa: PLC0415

        configure_for_a_person(settings, level="INFO")
        return _run_async(
            lambda: run_demo(settings, sessions=args.sessions, duration_s=args.duration)
        )
    configure_for_a_person(settings)
    return run_tool(args, settings)


if __name__ == "__main__":
    sys.exit(main())
