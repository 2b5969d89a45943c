"""Operator tools: `tail` the snapshot topic and `topics create` (dead letters: worker.dlq).

Each command is a coroutine returning a process exit code: 0 done, 1 done but something needs
attention; it raises StartupError when it cannot run (unreachable broker, missing topic).
Kafka access goes through worker.kafka (readers, topics); output goes to the streams passed
in, so tests can capture it.
"""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Final, NamedTuple, TextIO

from pydantic import ValidationError
from rich.console import Console
from rich.text import Text

from worker.kafka.readers import StoredRecord, TopicReader
from worker.kafka.topics import (
    TopicLayout,
    TopicSpec,
    create_topic_specs,
    describe_layouts,
    topic_specs,
)
from worker.session import Session
from worker.settings import Settings

TAIL_POLL_S: Final = 0.5
"""Longest a fetch blocks, so Ctrl-C and --timeout are honoured within half a second."""
REMEMBERED_SESSIONS: Final = 100_000
"""`tail` remembers each session's previous snapshot to print deltas; oldest forgotten first."""
CRITICAL_CONFIGS: Final = frozenset({"cleanup.policy"})
"""Topic settings the worker is wrong without: a non-compacted changelog grows forever, a
compacted input or DLQ drops records (every record of a session has the same key)."""


@contextmanager
def stop_on_signals(stop: asyncio.Event) -> Iterator[None]:
    """Ctrl-C / SIGTERM set `stop` instead of raising, so commands end cleanly."""
    loop = asyncio.get_running_loop()
    installed = []
    for signum in (signal.SIGINT, signal.SIGTERM):
        with suppress(NotImplementedError, RuntimeError):  # not on this platform/thread
            loop.add_signal_handler(signum, stop.set)
            installed.append(signum)
    try:
        yield
    finally:
        for signum in installed:
            loop.remove_signal_handler(signum)


def mbps(bytes_per_s: float) -> str:
    return f"{bytes_per_s * 8 / 1e6:.2f} Mb/s"


# --- tail -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TailOptions:
    sessions: frozenset[str] = frozenset()
    unhealthy: bool = False
    json: bool = False
    from_beginning: bool = False
    max_messages: int | None = None
    timeout_s: float | None = None


def health_text(healthy: bool | None) -> Text:
    if healthy is None:
        return Text("inactive", style="dim")
    return Text("healthy", style="green") if healthy else Text("UNHEALTHY", style="bold red")


class Seen(NamedTuple):
    """What `tail` remembers of a session's previous snapshot."""

    source_segments: int
    transcoded_segments: int
    is_healthy: bool | None


def describe_snapshot(session: Session, previous: Seen | None, at_ms: int) -> Text:
    """One line for a snapshot; counts show the change since the previous one seen."""

    def count(label: str, field: str) -> str:
        now: int = getattr(session, field)
        before: int | None = getattr(previous, field) if previous else None
        delta = f" (+{now - before})" if before is not None and now > before else ""
        return f"{label} {now}{delta}"

    line = Text(time.strftime("%H:%M:%S ", time.localtime(at_ms / 1000)), style="dim")
    line.append(session.id, style="bold")
    if session.name != session.id:
        line.append(f" {session.name!r}")
    line.append("  ").append_text(health_text(session.is_healthy))
    line.append(
        f"  {count('src', 'source_segments')}  {count('out', 'transcoded_segments')}"
        f"  in {mbps(session.ingest_rate)}  out {mbps(session.outgoing_rate)}"
    )
    if session.recording_status is not None:
        line.append(f"  rec {session.recording_status}")
    if session.issues:
        line.append("  " + "; ".join(session.issues), style="yellow")
    return line


class SnapshotPrinter:
    """Validates each snapshot as a Session, filters it, and prints it (pretty or NDJSON)."""

    def __init__(self, options: TailOptions, out: TextIO, errors: TextIO) -> None:
        self.options = options
        self.out = out
        self.errors = errors
        self.console = Console(file=out, highlight=False, soft_wrap=True)
        self.read = self.shown = self.invalid = 0
        self._previous: dict[str, Seen] = {}

    def _wanted(self, session: Session, previous: Seen | None) -> bool:
        if self.options.sessions and session.id not in self.options.sessions:
            return False
        if not self.options.unhealthy:
            return True
        # Also the first snapshot after an unhealthy one, so a recovery is visible.
        return session.is_healthy is False or (
            previous is not None and previous.is_healthy is False
        )

    def handle(self, record: StoredRecord) -> bool:
        """Print the record if it passes the filters; return whether it was printed."""
        self.read += 1
        if record.value is None:
            return False  # a deleted key: nothing downstream can show
        try:
            session = Session.model_validate_json(record.value)
        except ValidationError as error:
            self.invalid += 1
            problem = error.errors(include_url=False)[0]
            self.errors.write(
                f"tail: {record.partition}:{record.offset}: not a valid Session "
                f"({'.'.join(map(str, problem['loc']))}: {problem['msg']})\n"
            )
            return False
        previous = self._previous.pop(session.id, None)
        self._previous[session.id] = Seen(
            session.source_segments, session.transcoded_segments, session.is_healthy
        )
        if len(self._previous) > REMEMBERED_SESSIONS:
            del self._previous[next(iter(self._previous))]
        if not self._wanted(session, previous):
            return False
        if self.options.json:
            self.out.write(record.value.decode() + "\n")
        else:
            self.console.print(describe_snapshot(session, previous, record.timestamp))
        self.shown += 1
        return True


async def tail_snapshots(
    settings: Settings, options: TailOptions, out: TextIO = sys.stdout, errors: TextIO = sys.stderr
) -> int:
    """Follow the snapshot topic until Ctrl-C, --max-messages or --timeout.

    Exit code 1 when --timeout ends it before --max-messages snapshots were shown.
    """
    printer = SnapshotPrinter(options, out, errors)
    reader = TopicReader(settings, settings.snapshot_topic)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    deadline = None if options.timeout_s is None else loop.time() + options.timeout_s
    timed_out = False
    with stop_on_signals(stop):
        try:
            await reader.start(options.from_beginning)
            errors.write(
                f"tail: following {reader.topic} ({len(reader.partitions)} partitions) from the "
                f"{'beginning' if options.from_beginning else 'end'}; Ctrl-C stops\n"
            )
            errors.flush()
            while not stop.is_set():
                wait_s = TAIL_POLL_S
                if deadline is not None:
                    wait_s = min(wait_s, deadline - loop.time())
                    if wait_s <= 0:
                        timed_out = True
                        break
                for record in await reader.fetch(wait_s):
                    printed = printer.handle(record)
                    if printed and printer.shown == options.max_messages:
                        stop.set()
                        break
                out.flush()
        finally:
            await reader.stop()
    errors.write(f"tail: {printer.shown} shown, {printer.read} read, {printer.invalid} invalid\n")
    unmet = options.max_messages is not None and printer.shown < options.max_messages
    return 1 if timed_out and unmet else 0


# --- topics create ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TopicCheck:
    role: str
    spec: TopicSpec
    status: str
    """'created', 'exists', 'would create' or 'failed'."""
    partitions: int
    problems: tuple[str, ...] = ()
    """Must be fixed by hand: the worker misbehaves on this topic as it is."""
    notes: tuple[str, ...] = ()
    """Differences from the suggested settings, left as they are."""


def planned_topics(settings: Settings, input_partitions: int) -> list[tuple[str, TopicSpec]]:
    return list(topic_specs(settings, input_partitions).items())


def check_topic(
    role: str, spec: TopicSpec, layout: TopicLayout, input_partitions: int, replication: int = 1
) -> tuple[list[str], list[str]]:
    """(problems, notes) of an existing topic against what the worker needs."""
    problems: list[str] = []
    notes: list[str] = []
    if layout.replication < replication:
        problems.append(
            f"replication factor is {layout.replication}, less than the {replication} asked for "
            "(--replication-factor); raise it with a partition reassignment"
        )
    if layout.partitions != input_partitions and role == "changelog":
        problems.append(
            f"has {layout.partitions} partitions; the changelog needs exactly the input's "
            f"{input_partitions} (recreate it empty: the worker rebuilds it)"
        )
    elif layout.partitions != spec.partitions and role != "input":
        notes.append(f"has {layout.partitions} partitions (suggested {spec.partitions})")
    for key, wanted in spec.config.items():
        found = layout.config.get(key)
        if found == wanted:
            continue
        if key in CRITICAL_CONFIGS:
            problems.append(f"{key} is {found!r}, must be {wanted!r}")
        else:
            notes.append(f"{key} is {found!r} (suggested {wanted!r}), left as is")
    return problems, notes


async def create_worker_topics(
    settings: Settings, dry_run: bool = False, out: TextIO = sys.stdout
) -> int:
    """Create whatever of input, snapshot, changelog and DLQ topics is missing; check the rest.

    Idempotent: a second run creates nothing and reports every topic as existing. Existing
    topics are never altered; a critical difference (not compacted, wrong changelog
    partitions) is reported and makes the exit code 1.
    """
    wanted = {spec.name: spec.config.keys() for _, spec in planned_topics(settings, 1)}
    layouts = await describe_layouts(settings, wanted)
    existing_input = layouts.get(settings.input_topic)
    input_partitions = existing_input.partitions if existing_input else settings.topic_partitions
    plan = planned_topics(settings, input_partitions)
    missing = [spec for _, spec in plan if spec.name not in layouts]
    refused: dict[str, str] = {}
    if missing and not dry_run:
        refused = await create_topic_specs(settings, missing, settings.replication_factor)
        layouts = await describe_layouts(settings, wanted)  # verify what the cluster made
    checks = []
    for role, spec in plan:
        layout = layouts.get(spec.name)
        if spec.name in refused or (layout is None and not dry_run):
            reason = refused.get(spec.name, "not visible after creation")
            checks.append(TopicCheck(role, spec, "failed", spec.partitions, (reason,)))
        elif layout is None:
            checks.append(TopicCheck(role, spec, "would create", spec.partitions))
        else:
            problems, notes = check_topic(
                role, spec, layout, input_partitions, settings.replication_factor
            )
            status = "created" if spec in missing else "exists"
            checks.append(
                TopicCheck(role, spec, status, layout.partitions, tuple(problems), tuple(notes))
            )
    print_topic_checks(checks, settings.replication_factor, out)
    return 1 if any(c.problems for c in checks) else 0


def print_topic_checks(checks: Sequence[TopicCheck], replication: int, out: TextIO) -> None:
    width = max(len(c.spec.name) for c in checks)
    for c in checks:
        config = " ".join(f"{k}={v}" for k, v in c.spec.config.items()) or "-"
        out.write(
            f"{c.role:<10} {c.spec.name:<{width}}  {c.partitions:>3} partitions  "
            f"{c.status:<12}  {config}\n"
        )
        out.writelines(f"    error: {problem}\n" for problem in c.problems)
        out.writelines(f"    note: {note}\n" for note in c.notes)
    counts = Counter(c.status for c in checks)
    summary = ", ".join(f"{status} {n}" for status, n in sorted(counts.items()))
    problems = sum(len(c.problems) for c in checks)
    out.write(f"topics: {summary}; replication factor {replication}; {problems} problem(s)\n")
