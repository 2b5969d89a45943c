"""The command line: parsers whose setting flags are generated from the Settings fields.

One source per setting: its field in worker.settings gives the flag (`--<name>` without the
`_s` unit suffix), the env var, the bounds and the `--help` text (the field's docstring).
Each command takes only the settings it uses (`command_settings`); a new field shows up on
`run` and `demo` by itself, on `replay` too when it is a fold rule (`<x>_s` for a Rules
field `<x>_ms`), and on the Kafka tools when it is a connection setting (`sasl_*`, ...).
Values are checked by the Settings model only, never by argparse, so a bad flag and a bad
env var fail the same way: one line naming the flag or variable, exit 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import shlex
from collections.abc import Callable, Collection, Iterable, Sequence
from enum import Enum
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from types import UnionType
from typing import Any, Final, TypeAlias, Union, get_args, get_origin

from pydantic import SecretStr, ValidationError
from pydantic.fields import FieldInfo

from worker.rules import Rules
from worker.settings import Settings

PROG: Final = "session-worker"
HIDDEN_PREFIX: Final = "debug_"
"""Settings named so are test hooks: they work but `--help` does not show them."""
LOGGING: Final = frozenset({"log_level", "log_format"})
CONNECTION_PREFIXES: Final = ("security_", "sasl_", "ssl_")
TOPIC_NAMES: Final = frozenset({"input_topic", "snapshot_topic", "dlq_topic", "changelog_topic"})


class SettingsError(ValueError):
    """Settings that do not validate; the message is one line naming each bad value."""


def flag_name(field: str) -> str:
    """`publish_interval_s` -> `--publish-interval`: the unit lives in the docs, not the flag."""
    return "--" + field.removesuffix("_s").replace("_", "-")


def env_name(field: str) -> str:
    return f"WORKER_{field.upper()}"


def fold_rule_settings() -> frozenset[str]:
    """The settings `Settings.rules()` feeds the fold: `<x>_s` for each Rules field `<x>_ms`."""
    rules = {f.name for f in dataclasses.fields(Rules)}
    return frozenset(n for n in Settings.model_fields if n.removesuffix("_s") + "_ms" in rules)


def connection_settings() -> frozenset[str]:
    """What every Kafka client needs: brokers, client id, TLS and SASL."""
    return frozenset(
        n
        for n in Settings.model_fields
        if n in ("bootstrap_servers", "client_id") or n.startswith(CONNECTION_PREFIXES)
    )


def command_settings() -> dict[str, frozenset[str]]:
    """The settings each command uses, so its `--help` shows only those."""
    everything = frozenset(Settings.model_fields)
    kafka = connection_settings() | LOGGING
    return {
        "run": everything,
        "demo": everything,
        "replay": fold_rule_settings() | LOGGING,
        "tail": kafka | {"snapshot_topic"},
        "topics create": kafka
        | TOPIC_NAMES
        | {"group_id", "topic_partitions", "replication_factor"},
        "dlq inspect": kafka | {"dlq_topic"},
        "dlq replay": kafka | {"dlq_topic", "input_topic"},
    }


def _plain_type(annotation: Any) -> Any:
    """`X | None` -> X."""
    if get_origin(annotation) in (Union, UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        return args[0] if len(args) == 1 else annotation
    return annotation


def _metavar(name: str, kind: Any) -> str:
    if isinstance(kind, type) and issubclass(kind, Enum):
        return "{" + ",".join(str(member.value) for member in kind) + "}"
    if kind is float:
        return "SECONDS" if name.endswith("_s") else "NUMBER"
    if kind is int:
        return "N"
    return name.rsplit("_", 1)[-1].upper()


def _default_text(field: FieldInfo, kind: Any) -> str:
    default = field.default
    if default is None or kind is SecretStr:
        return "unset"
    if isinstance(default, Enum):
        return str(default.value)
    if isinstance(default, bool):
        return str(default).lower()
    if isinstance(default, float) and default.is_integer():
        return str(int(default))
    return str(default)


def help_text(name: str, field: FieldInfo) -> str:
    """The field's description, then where else it can be set and its default."""
    description = " ".join((field.description or "").split())
    default = _default_text(field, _plain_type(field.annotation))
    text = f"{description} [env {env_name(name)}; default {default}]".strip()
    return text.replace("%", "%%")  # argparse formats help with %


def add_settings_flags(parser: argparse.ArgumentParser, names: Collection[str]) -> None:
    """One flag per setting in `names`, in the Settings' order; values stay strings here."""
    group = parser.add_argument_group(
        "settings", "each also an environment variable; flags win over the environment"
    )
    for name, field in Settings.model_fields.items():
        if name not in names:
            continue
        kind = _plain_type(field.annotation)
        hidden = name.startswith(HIDDEN_PREFIX)
        shown = argparse.SUPPRESS if hidden else help_text(name, field)
        flag = flag_name(name)
        if kind is bool:
            group.add_argument(
                flag,
                dest=name,
                nargs="?",
                const="true",
                default=argparse.SUPPRESS,
                metavar="true|false",
                help=argparse.SUPPRESS if hidden else f"{shown}; --no-{flag[2:]} sets false",
            )
            group.add_argument(
                f"--no-{flag[2:]}",
                dest=name,
                action="store_const",
                const="false",
                default=argparse.SUPPRESS,
                help=argparse.SUPPRESS,
            )
        else:
            group.add_argument(
                flag,
                dest=name,
                default=argparse.SUPPRESS,
                metavar=_metavar(name, kind),
                help=shown,
            )


def _shown_value(name: str, value: object) -> str:
    kind = _plain_type(Settings.model_fields[name].annotation)
    if kind is SecretStr:
        return "<secret>"
    return shlex.quote(str(value))


def describe_errors(error: ValidationError, flags: Collection[str]) -> str:
    """One line: each bad value as the flag or env var it came from, and why."""
    parts = []
    for problem in error.errors(include_url=False):
        message = problem["msg"].removeprefix("Value error, ")
        loc = problem["loc"]
        name = str(loc[0]) if loc else ""
        if name not in Settings.model_fields:  # a rule across fields
            parts.append(f"settings: {message}")
            continue
        source = flag_name(name) if name in flags else env_name(name)
        parts.append(f"{source}={_shown_value(name, problem['input'])}: {message}")
    return "; ".join(parts)


def load_settings(args: argparse.Namespace) -> Settings:
    """Flags win over the environment. Raises SettingsError with one readable line."""
    flags = {k: v for k, v in vars(args).items() if k in Settings.model_fields}
    try:
        return Settings(**flags)
    except ValidationError as error:
        raise SettingsError(describe_errors(error, flags)) from None


def settings_report(settings: Settings, names: Iterable[str]) -> dict[str, Any]:
    """The effective values of `names`, secrets masked, for `--check-config`."""
    dumped = settings.model_dump(mode="json")
    return {env_name(n): dumped[n] for n in Settings.model_fields if n in names}


# --- option types of the commands' own flags -------------------------------------------------


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not >= 1")
    return value


def seconds(text: str) -> float:
    """A finite, non-negative number of seconds."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"{text} is not a finite number >= 0")
    return value


def offset_range(text: str) -> Any:
    from worker.dlq import parse_offset_range  # noqa: PLC0415

    try:
        return parse_offset_range(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


# --- parsers ---------------------------------------------------------------------------------

Commands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"
"""What `add_subparsers` returns (argparse has no public name for it)."""


def package_version() -> str:
    try:
        return version("session-worker")
    except PackageNotFoundError:
        return "unknown"


def add_command(
    commands: Commands,
    path: str,
    help_: str,
    add_options: Callable[[argparse.ArgumentParser], object] | None = None,
    **kwargs: Any,
) -> argparse.ArgumentParser:
    """A leaf command: its own options, then its settings, then `--check-config`."""
    # A short usage line: the full one lists every setting, and errors repeat it.
    positionals = " FILE" if path == "replay" else ""
    kwargs.setdefault("description", help_[0].upper() + help_[1:] + ".")
    parser = commands.add_parser(
        path.rsplit(" ", 1)[-1],
        help=help_,
        allow_abbrev=False,
        usage=f"%(prog)s [options]{positionals}",
        **kwargs,
    )
    if add_options is not None:
        add_options(parser)
    add_settings_flags(parser, command_settings()[path])
    parser.add_argument(
        "--check-config",
        action="store_true",
        help="validate flags and environment, print the settings this command uses as JSON "
        "(secrets masked) and exit; connects to nothing",
    )
    parser.set_defaults(command_path=path, command_parser=parser)
    return parser


def _demo_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sessions", type=positive_int, default=30, help="synthetic sessions")
    parser.add_argument(
        "--duration", type=seconds, default=0, help="stop after N seconds (0: until Ctrl-C)"
    )


def _replay_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", type=Path, help="NDJSON events, one per line ('-' for stdin)")


def _tail_options(tail: argparse.ArgumentParser) -> None:
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
        type=seconds,
        metavar="SECONDS",
        help="stop after this long (exit 1 if --max-messages was not reached)",
    )


def _selection_options(parser: argparse.ArgumentParser) -> None:
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


def _inspect_options(parser: argparse.ArgumentParser) -> None:
    _selection_options(parser)
    parser.add_argument("--limit", type=positive_int, default=20, help="newest N shown")
    parser.add_argument("--json", action="store_true", help="every selected record as NDJSON")


def _dlq_replay_options(parser: argparse.ArgumentParser) -> None:
    _selection_options(parser)
    parser.add_argument("--all", action="store_true", help="every dead letter")
    parser.add_argument("--dry-run", action="store_true", help="list, do not produce")
    parser.add_argument("--to", metavar="TOPIC", help="target topic (default: the input topic)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Fold live-video segment events from Kafka into Session snapshots and metrics.",
        epilog="`session-worker COMMAND --help` lists the command's flags.",
        allow_abbrev=False,
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {package_version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_command(commands, "run", "the daemon: consume, fold, publish, serve HTTP")
    add_command(
        commands,
        "demo",
        "local broker + synthetic traffic + worker + live view",
        _demo_options,
    )
    add_command(
        commands,
        "replay",
        "fold an NDJSON file without Kafka; print final snapshots",
        _replay_options,
    )
    add_command(
        commands, "tail", "follow the snapshot topic: what downstream consumers see", _tail_options
    )
    topics = commands.add_parser("topics", help="set up the worker's topics on a cluster")
    topic_actions = topics.add_subparsers(dest="topics_command", required=True, metavar="ACTION")
    add_command(
        topic_actions,
        "topics create",
        "create missing input, snapshot, changelog and DLQ topics; check existing ones",
        lambda p: p.add_argument(
            "--dry-run", action="store_true", help="only show what would be created"
        ),
        description="Idempotent. Partitions: the input's if it exists, else --topic-partitions; "
        "replication: --replication-factor. Existing topics are checked, never altered.",
    )
    dlq = commands.add_parser("dlq", help="inspect and replay dead letters")
    dlq_actions = dlq.add_subparsers(dest="dlq_command", required=True, metavar="ACTION")
    add_command(
        dlq_actions, "dlq inspect", "list dead letters with their reasons", _inspect_options
    )
    add_command(
        dlq_actions,
        "dlq replay",
        "re-inject selected dead letters into the input topic",
        _dlq_replay_options,
        description="Keeps key, value and original headers; strips the dlq.* headers. "
        "Select with --reason and/or --offset (both must match), or --all.",
    )
    return parser


def parse_args(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """Like `parse_args`, but an unknown flag is reported with its own command's usage."""
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        leaf: argparse.ArgumentParser = getattr(args, "command_parser", parser)
        leaf.error(f"unrecognized arguments: {' '.join(unknown)}")
    return args
