"""Micro-benchmark: the refresh of one session, as a tick does it.

    .venv/bin/python -m bench.refresh [--sessions 2000] [--seconds 20] [--runs 5]

Folds bench/load.py's live traffic (3- and 4-rendition ladders, a third recorded, churn,
~3% failed segments; a segment every 2 s per session) second by second, and after each
second refreshes the sessions a tick rebuilds: those with an event in that second, and
those whose snapshot can still change without one (not ended, or rates still held; the
store's "settled" sessions are skipped). A refresh is `expire_windows`, `build_session`
(health included), `encode_session` and the change check the store makes (a hash of the
payload against the last one). Only the refresh is timed (CPU time); the first 15 s of
traffic warm the windows up untimed. Prints µs per refresh, min and median of the runs,
as JSON.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Sequence

import orjson

from bench import load
from worker.events import Event, InvalidRecord, SegmentIngested, decode_event
from worker.rules import Rules
from worker.session import build_session, encode_session
from worker.state import SessionState, expire_windows, fold, new_session

START_MS = 1_700_000_000_000
WARM_S = 15


def _events(sessions: int, seconds: int, renditions: int) -> list[list[Event]]:
    """The decoded events of each second of traffic (warm-up included)."""
    ladder = tuple((f"r{i}", 3_000_000 >> i) for i in range(renditions))
    stream = load.Traffic(sessions, seed=7, renditions=ladder).events(START_MS)
    by_second: list[list[Event]] = [[] for _ in range(WARM_S + seconds)]
    far = START_MS + 10**9
    for at, key, value in stream:
        second = (at - START_MS) // 1000
        if second >= len(by_second):
            break
        event = decode_event(value, key, far)
        if second >= 0 and not isinstance(event, InvalidRecord):
            by_second[second].append(event)
    return by_second


def run(by_second: list[list[Event]]) -> tuple[float, int]:
    """Seconds of CPU spent refreshing, and how many refreshes."""
    states: dict[str, SessionState] = {}
    hashes: dict[str, int] = {}
    rules = Rules()
    window_ms = rules.rate_window_ms
    spent = 0.0
    refreshed = 0
    for second, events in enumerate(by_second):
        changed: dict[str, SessionState] = {}
        for event in events:
            sid = event.session_id
            state = states.get(sid)
            if state is None:
                state = states[sid] = new_session(sid, 0, event.timestamp)
            fold(state, event)
            changed[sid] = state
        now_ms = START_MS + (second + 1) * 1000
        started = time.process_time()
        due = [
            (sid, state)
            for sid, state in states.items()
            if sid in changed or state.ended_at is None or state.has_rates()
        ]
        for sid, state in due:
            expire_windows(state, now_ms, window_ms)
            payload = encode_session(build_session(state, now_ms, rules))
            digest = hash(payload)
            if digest != hashes.get(sid):
                hashes[sid] = digest
        elapsed = time.process_time() - started
        if second >= WARM_S:
            spent += elapsed
            refreshed += len(due)
    return spent, refreshed


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.refresh", description=__doc__)
    parser.add_argument("--sessions", type=int, default=2_000)
    parser.add_argument("--seconds", type=int, default=20, help="timed seconds of traffic")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args(argv)
    results: dict[str, object] = {"sessions": args.sessions, "seconds": args.seconds}
    for renditions in (3, 4):
        by_second = _events(args.sessions, args.seconds, renditions)
        per_session = []
        refreshed = 0
        for _ in range(args.runs):
            spent, refreshed = run(by_second)
            per_session.append(spent * 1e6 / refreshed)
        ingested = sum(isinstance(e, SegmentIngested) for s in by_second for e in s)
        results[f"{renditions} renditions"] = {
            "refreshes_per_run": refreshed,
            "events": sum(map(len, by_second)),
            "ingested": ingested,
            "min_us": round(min(per_session), 2),
            "median_us": round(statistics.median(per_session), 2),
            "runs_us": [round(x, 2) for x in per_session],
        }
    print(orjson.dumps(results, option=orjson.OPT_INDENT_2).decode())


if __name__ == "__main__":
    main()
