"""Composition root and command line: settings -> logging -> asyncio.run(command)."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

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
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in error.errors()
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
    return parser


def _run_async(main: Callable[[], Coroutine[Any, Any, int]]) -> int:
    try:
        import uvloop  # noqa: PLC0415  # optional speed-up; absent on some platforms

        return uvloop.run(main())
    except ImportError:
        return asyncio.run(main())


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "replay":
        from worker.replay import replay_file  # noqa: PLC0415  # keeps `run` start-up lean

        configure_logging(args.log_level, LogFormat.TEXT)
        return replay_file(args.file, rate_window_s=args.rate_window)
    settings = load_settings(args)
    configure_logging(settings.log_level, settings.log_format)
    if args.command == "run":
        from worker.app import run_worker  # noqa: PLC0415

        return _run_async(lambda: run_worker(settings))
    from worker.demo import run_demo  # noqa: PLC0415

    return _run_async(lambda: run_demo(settings, sessions=args.sessions, duration_s=args.duration))


if __name__ == "__main__":
    sys.exit(main())
