"""Composition root and command line: settings -> logging -> asyncio.run(command)."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any, TypeAlias

from pydantic import SecretStr, ValidationError

from worker.logs import configure_logging
from worker.settings import LogFormat, Settings


def flag_name(field: str) -> str:
    """`publish_interval_s` -> `--publish-interval`: the unit lives in the docs, not the flag."""
    return "--" + field.removesuffix("_s").replace("_", "-")


def add_settings_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("settings (each also WORKER_<NAME> in the environment)")
    for name, field in Settings.model_fields.items():
        default = "secret" if field.annotation in (SecretStr, SecretStr | None) else field.default
        help_text = f"env WORKER_{name.upper()} (default: {default})"
        if field.annotation is bool:
            group.add_argument(
                flag_name(name),
                dest=name,
                action=argparse.BooleanOptionalAction,
                default=argparse.SUPPRESS,
                help=help_text,
            )
        else:
            group.add_argument(
                flag_name(name), dest=name, default=argparse.SUPPRESS, help=help_text
            )


def load_settings(args: argparse.Namespace) -> Settings:
    """Flags win over the environment; a bad value exits with one readable line."""
    overrides = {k: v for k, v in vars(args).items() if k in Settings.model_fields}
    try:
        return Settings(**overrides)
    except ValidationError as error:
        problems = "; ".join(
            ": ".join(filter(None, (".".join(str(p) for p in e["loc"]), e["msg"])))
            for e in error.errors()
        )
        sys.exit(f"session-worker: invalid settings: {problems}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="session-worker",
        description="Fold live-video segment events from Kafka into Session snapshots and metrics.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = commands.add_parser("run", help="the daemon: consume, fold, publish, serve HTTP")
    add_settings_flags(run)
    demo = commands.add_parser("demo", help="local broker + synthetic traffic + worker + live view")
    add_settings_flags(demo)
    demo.add_argument("--sessions", type=int, default=30, help="synthetic sessions (default 30)")
    demo.add_argument(
        "--duration", type=float, default=0, help="stop after N seconds (0: until Ctrl-C)"
    )
    replay = commands.add_parser("replay", help="fold an NDJSON file; print final snapshots")
    replay.add_argument("file", type=Path, help="NDJSON events, one per line ('-' for stdin)")
    replay.add_argument("--rate-window", type=float, default=10.0, help="seconds (default 10)")
    replay.add_argument("--log-level", default="WARNING", help="DEBUG, INFO, WARNING, ERROR")
    add_tail_parser(commands)
    add_topics_parser(commands)
    add_dlq_parser(commands)
    return parser


Commands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"
"""What `add_subparsers` returns (argparse has no public name for it)."""


def add_tail_parser(commands: Commands) -> None:
    tail = commands.add_parser(
        "tail", help="follow the snapshot topic: what downstream consumers see"
    )
    tail.add_argument(
        "--session", action="append", default=[], metavar="ID", help="only this session (repeat)"
    )
    tail.add_argument(
        "--unhealthy", action="store_true", help="only unhealthy snapshots (and recoveries)"
    )
    tail.add_argument("--json", action="store_true", help="print the snapshots as NDJSON")
    tail.add_argument(
        "--from-beginning", action="store_true", help="start at the oldest retained snapshot"
    )
    tail.add_argument(
        "--max-messages", type=positive_int, metavar="N", help="stop after N printed snapshots"
    )
    tail.add_argument(
        "--timeout",
        type=float,
        metavar="SECONDS",
        help="stop after this long (exit 1 if --max-messages was not reached)",
    )
    add_settings_flags(tail)


def add_topics_parser(commands: Commands) -> None:
    topics = commands.add_parser("topics", help="set up the worker's topics on a cluster")
    actions = topics.add_subparsers(dest="topics_command", required=True, metavar="ACTION")
    create = actions.add_parser(
        "create",
        help="create missing input, snapshot, changelog and DLQ topics; check existing ones",
        description="Idempotent. Partitions: the input's if it exists, else --topic-partitions; "
        "replication: --replication-factor. Existing topics are checked, never altered.",
    )
    create.add_argument("--dry-run", action="store_true", help="only show what would be created")
    add_settings_flags(create)


def add_dlq_parser(commands: Commands) -> None:
    dlq = commands.add_parser("dlq", help="inspect and replay dead letters")
    actions = dlq.add_subparsers(dest="dlq_command", required=True, metavar="ACTION")
    inspect = actions.add_parser("inspect", help="list dead letters with their reasons")
    add_selection_flags(inspect)
    inspect.add_argument(
        "--limit", type=positive_int, default=20, help="newest N shown (default 20)"
    )
    inspect.add_argument("--json", action="store_true", help="every selected record as NDJSON")
    add_settings_flags(inspect)
    replay = actions.add_parser(
        "replay",
        help="re-inject selected dead letters into the input topic",
        description="Keeps key, value and original headers; strips the dlq.* headers. "
        "Select with --reason and/or --offset (both must match), or --all.",
    )
    add_selection_flags(replay)
    replay.add_argument("--all", action="store_true", help="every dead letter")
    replay.add_argument("--dry-run", action="store_true", help="list, do not produce")
    replay.add_argument("--to", metavar="TOPIC", help="target topic (default: the input topic)")
    add_settings_flags(replay)


def add_selection_flags(parser: argparse.ArgumentParser) -> None:
    from worker.events import InvalidReason  # noqa: PLC0415

    parser.add_argument(
        "--reason",
        action="append",
        default=[],
        choices=[r.value for r in InvalidReason],
        help="only this reason (repeat)",
    )
    parser.add_argument(
        "--offset",
        action="append",
        default=[],
        type=offset_range,
        metavar="[P:]FIRST[-LAST]",
        help="DLQ offsets, e.g. 2:100-250, 2:17, 0:40- or 100-200 in any partition (repeat)",
    )


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not >= 1")
    return value


def offset_range(text: str) -> Any:
    from worker.dlq import parse_offset_range  # noqa: PLC0415

    try:
        return parse_offset_range(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


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


def run_tool(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from worker.kafka import StartupError  # noqa: PLC0415

    settings = load_settings(args)
    # A tool talks to a person: text logs, warnings only, unless asked otherwise.
    explicit = settings.model_fields_set
    configure_logging(
        settings.log_level if "log_level" in explicit else "WARNING",
        settings.log_format if "log_format" in explicit else LogFormat.TEXT,
    )
    replaying = args.command == "dlq" and args.dlq_command == "replay"
    if replaying and not (args.all or args.reason or args.offset):
        parser.error("dlq replay: select dead letters with --reason, --offset or --all")
    try:
        return _run_async(tool_command(args, settings))
    except StartupError as error:
        sys.stderr.write(f"session-worker {args.command}: {error}\n")
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `... | head`: the reader left; keep interpreter shutdown quiet
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "replay":
        from worker.replay import replay_file  # noqa: PLC0415  # keeps `run` start-up lean

        configure_logging(args.log_level, LogFormat.TEXT)
        return replay_file(args.file, rate_window_s=args.rate_window)
    if args.command in ("tail", "topics", "dlq"):
        return run_tool(args, parser)
    settings = load_settings(args)
    configure_logging(settings.log_level, settings.log_format)
    if args.command == "run":
        from worker.app import run_worker  # noqa: PLC0415
        from worker.gctune import tune_gc  # noqa: PLC0415

        tune_gc()
        return _run_async(lambda: run_worker(settings))
    from worker.demo import run_demo  # noqa: PLC0415

    return _run_async(lambda: run_demo(settings, sessions=args.sessions, duration_s=args.duration))


if __name__ == "__main__":
    sys.exit(main())
