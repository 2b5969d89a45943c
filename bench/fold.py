"""Micro-benchmark: folding decoded events into the store, CPU µs per event.

    .venv/bin/python -m bench.fold [--events 200000] [--sessions 2000] [--rounds 5]
                                   [--profile]

Events are bench/load.py's live traffic (session.started, then per segment one
segment.ingested and one segment.transcoded, 3% failed and mostly retried, a session in 8
ending), decoded up front: (1) `SessionStore.apply` of each, what the worker does after
decoding; (2) `state.fold` alone into states kept in a dict. Each round folds the same
events into a fresh store; the figure is CPU time (the machine is shared), min and median
of the rounds, for 3 and 4 renditions. `--profile` prints cProfile's top functions of one
extra round of (1) instead.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import statistics
import time
from collections.abc import Callable, Sequence
from itertools import islice

import orjson

from bench import load
from worker.events import Event, InvalidRecord, decode_event
from worker.rules import Rules
from worker.state import SessionState, fold, new_session
from worker.store import SessionStore


def events(count: int, sessions: int, renditions: int) -> list[Event]:
    """`count` decoded events of live traffic from its start (every session starts)."""
    ladder = tuple((f"r{i}", 3_000_000 >> i) for i in range(renditions))
    traffic = load.Traffic(sessions, seed=7, renditions=ladder)
    out: list[Event] = []
    for _, key, value in islice(traffic.events(1_700_000_000_000), count):
        decoded = decode_event(value, key, 1_800_000_000_000)
        if isinstance(decoded, InvalidRecord):
            raise SystemExit(f"the load generator made an invalid event: {decoded}")
        out.append(decoded)
    return out


def by_store(batch: Sequence[Event]) -> None:
    apply = SessionStore(Rules()).apply
    for event in batch:
        apply(event, 0)


def by_fold(batch: Sequence[Event]) -> None:
    states: dict[str, SessionState] = {}
    for event in batch:
        state = states.get(event.session_id)
        if state is None:
            state = states[event.session_id] = new_session(event.session_id, 0, event.timestamp)
        fold(state, event)


def timed(
    run: Callable[[Sequence[Event]], None], batch: list[Event], rounds: int
) -> dict[str, float]:
    per_event = []
    for _ in range(rounds):
        started = time.process_time()
        run(batch)
        per_event.append((time.process_time() - started) * 1e6 / len(batch))
    return {"min_us": min(per_event), "median_us": statistics.median(per_event)}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.fold", description=__doc__)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--sessions", type=int, default=2_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args(argv)
    results: dict[str, object] = {"events": args.events, "sessions": args.sessions}
    for renditions in (3, 4):
        batch = events(args.events, args.sessions, renditions)
        if args.profile:
            profiler = cProfile.Profile()
            profiler.runcall(by_store, batch)
            print(f"--- {renditions} renditions")
            pstats.Stats(profiler).sort_stats("tottime").print_stats(15)
            continue
        kinds: dict[str, int] = {}
        for event in batch:
            kinds[event.type] = kinds.get(event.type, 0) + 1
        results[f"{renditions} renditions"] = {
            "mix": kinds,
            # interleaved: drift on a shared machine hits each alike
            "store_apply": timed(by_store, batch, args.rounds),
            "fold": timed(by_fold, batch, args.rounds),
            "store_apply_again": timed(by_store, batch, args.rounds),
            "fold_again": timed(by_fold, batch, args.rounds),
        }
    if not args.profile:
        print(orjson.dumps(results, option=orjson.OPT_INDENT_2).decode())


if __name__ == "__main__":
    main()
