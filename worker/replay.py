"""`session-worker replay FILE`: the live fold over an NDJSON file, on stream time.

`now` is the newest event timestamp seen, so a replay is deterministic: the same file always
prints the same snapshots. The future-timestamp rule needs a wall clock and is not applied.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Final

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from worker.events import InvalidRecord, decode_event
from worker.rules import Rules
from worker.session import build_session, encode_session
from worker.store import SessionStore

NO_WALL_CLOCK: Final = 2**62
"""Stands in for `now` in the future-timestamp rule: no event is 'ahead' of a replay."""
PROGRESS_STEP_BYTES: Final = 256 * 1024


def _lines(path: Path) -> Iterator[bytes]:
    if str(path) == "-":
        yield from sys.stdin.buffer
        return
    with path.open("rb") as handle:
        yield from handle


def replay_lines(
    lines: Iterable[bytes], rules: Rules, errors: IO[str]
) -> tuple[list[bytes], int, int]:
    """Fold every line; return (final snapshots, valid count, invalid count)."""
    store = SessionStore(rules)
    stream_now = 0
    valid = invalid = 0
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        decoded = decode_event(line, None, NO_WALL_CLOCK)
        if isinstance(decoded, InvalidRecord):
            invalid += 1
            errors.write(f"line {number}: {decoded.reason.value}: {decoded.detail}\n")
            if decoded.event is None:
                continue
            decoded = decoded.event  # invalid_metadata: folded without the bad fields, as live
        else:
            valid += 1
        stream_now = max(stream_now, decoded.timestamp)
        store.apply(decoded, 0)
    snapshots = [
        encode_session(build_session(state, stream_now, rules))
        for state in [*store.live.values(), *(s for s, _ in store.evicted.values())]
    ]
    return snapshots, valid, invalid


def _counted(lines: Iterable[bytes], progress: Progress, task: TaskID) -> Iterator[bytes]:
    """Advance the bar by bytes read, in chunks (a refresh per line would dominate the time)."""
    pending = 0
    for line in lines:
        pending += len(line)
        if pending >= PROGRESS_STEP_BYTES:
            progress.advance(task, pending)
            pending = 0
        yield line
    progress.advance(task, pending)


def _progress_bar(console: Console) -> Progress:
    return Progress(
        TextColumn("replay"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
    )


def replay_file(path: Path, rules: Rules | None = None, progress: Console | None = None) -> int:
    """Print final snapshots as NDJSON on stdout; 0 if every line was valid, else 1.

    `rules` come from the settings (`Settings.rules()`); default: the spec's. A progress
    bar (bytes of the file) goes to `progress`, by default stderr when it is a terminal; a
    one-line summary always ends on stderr.
    """
    rules = rules or Rules()
    if progress is None and sys.stderr.isatty():
        progress = Console(stderr=True)
    started = time.monotonic()
    try:
        total = None if str(path) == "-" else path.stat().st_size
        if progress is None:
            snapshots, valid, invalid = replay_lines(_lines(path), rules, sys.stderr)
        else:
            with _progress_bar(progress) as bar:
                task = bar.add_task("replay", total=total)
                lines = _counted(_lines(path), bar, task)
                # sys.stderr is rich's proxy here: error lines print above the bar.
                snapshots, valid, invalid = replay_lines(lines, rules, sys.stderr)
    except OSError as error:
        sys.stderr.write(f"session-worker replay: cannot read {path}: {error.strerror}\n")
        return 2
    elapsed = time.monotonic() - started
    out = sys.stdout.buffer
    for payload in snapshots:
        out.write(payload + b"\n")
    out.flush()
    events = valid + invalid
    speed = events / max(elapsed, 1e-9)
    sys.stderr.write(
        f"replayed {events} events: {valid} valid, {invalid} invalid, "
        f"{len(snapshots)} sessions in {elapsed:.1f}s ({speed:,.0f} events/s)\n"
    )
    return 1 if invalid else 0
