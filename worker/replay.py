"""`session-worker replay FILE`: the live fold over an NDJSON file, on stream time.

`now` is the newest event timestamp seen, so a replay is deterministic: the same file always
prints the same snapshots. The future-timestamp rule needs a wall clock and is not applied.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Final

from worker.events import InvalidRecord, decode_event
from worker.rules import Rules
from worker.session import build_session, encode_session
from worker.store import SessionStore

NO_WALL_CLOCK: Final = 2**62
"""Stands in for `now` in the future-timestamp rule: no event is 'ahead' of a replay."""


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
            continue
        valid += 1
        stream_now = max(stream_now, decoded.timestamp)
        store.apply(decoded, 0)
    snapshots = [
        encode_session(build_session(state, stream_now, rules))
        for state in [*store.live.values(), *(s for s, _ in store.evicted.values())]
    ]
    return snapshots, valid, invalid


def replay_file(path: Path, rate_window_s: float = 10.0) -> int:
    """Print final snapshots as NDJSON on stdout; 0 if every line was valid, else 1."""
    rules = Rules(rate_window_ms=round(rate_window_s * 1000))
    try:
        snapshots, valid, invalid = replay_lines(_lines(path), rules, sys.stderr)
    except OSError as error:
        sys.stderr.write(f"session-worker replay: {error}\n")
        return 2
    out = sys.stdout.buffer
    for payload in snapshots:
        out.write(payload + b"\n")
    out.flush()
    sys.stderr.write(
        f"replayed {valid + invalid} events: {valid} valid, {invalid} invalid, "
        f"{len(snapshots)} sessions\n"
    )
    return 1 if invalid else 0
