"""Memory per active session: RSS growth of a fresh process, and the deep size of one state.

Run in its own process (the suite starts `python -m bench.memory --sessions N`) so the RSS
baseline is clean. Sessions are folded from realistic live traffic (the load generator's,
through the real decoder and fold), then the store is ticked at the newest event time, as
the worker does every interval (slot by slot, so the store's per-slot index is counted), so
rate windows, dedupe masks, health windows, metadata and the published numbers are all
populated as in a live worker. Prints one JSON object.

    .venv/bin/python -m bench.memory --sessions 100000
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from typing import Any

import orjson

from bench.latency import rss_bytes
from bench.load import EVENTS_PER_SEGMENT, Traffic
from worker.app import PUBLISH_SLICES
from worker.changelog import encode_state
from worker.events import InvalidRecord, decode_event
from worker.rules import Rules
from worker.state import SessionState
from worker.store import SessionStore

SEGMENTS: int = 12
"""Per session: more than the health windows (10) and the 10 s rate window hold."""


def deep_size(obj: object, seen: set[int]) -> int:
    """Bytes reachable from `obj` not already counted in `seen` (shared objects once)."""
    size, stack = 0, [obj]
    while stack:
        item = stack.pop()
        if id(item) in seen or isinstance(item, type):
            continue
        seen.add(id(item))
        size += sys.getsizeof(item)
        stack.extend(gc.get_referents(item))
    return size


def fill(sessions: int) -> tuple[SessionStore, int, int]:
    """A store of `sessions` live sessions; returns it, the events folded and the newest ms."""
    store = SessionStore(Rules())
    traffic = Traffic(sessions, seed=3, churn_every=10**9)  # no churn: all stay active
    total = round(sessions * SEGMENTS * EVENTS_PER_SEGMENT)
    now_ms = time.time_ns() // 1_000_000
    stream = traffic.events(now_ms - SEGMENTS * 2_000)
    newest = 0
    for _ in range(total):
        at, key, value = next(stream)
        event = decode_event(value, key, now_ms)
        assert not isinstance(event, InvalidRecord), event
        store.apply(event, 0)
        newest = max(newest, at)
    return store, total, newest


def measure(sessions: int) -> dict[str, Any]:
    gc.collect()
    before = rss_bytes()
    store, events, newest = fill(sessions)
    for slot in range(PUBLISH_SLICES):  # a round of publish slices, as the worker ticks
        store.tick(newest, slot, PUBLISH_SLICES)
    gc.collect()
    after = rss_bytes()
    states: list[SessionState] = list(store.live.values())
    sample = states[:: max(1, len(states) // 1000)]
    # Strings and small ints shared by every session (interned names, cached ints) are
    # counted once, up front, so they are not charged to the first sampled session.
    seen: set[int] = set()
    deep_size(Rules(), seen)
    sizes = [deep_size(state, seen) for state in sample]
    changelog = [len(encode_state(state, None, 0)) for state in sample]
    return {
        "sessions": len(states),
        "events_folded": events,
        "rss_delta_mib": (after - before) / 2**20,
        "rss_per_session_bytes": (after - before) / len(states),
        "rss_per_100k_sessions_mib": (after - before) / len(states) * 100_000 / 2**20,
        "state_bytes_mean": sum(sizes) / len(sizes),
        "state_bytes_max": max(sizes),
        "changelog_bytes_mean": sum(changelog) / len(changelog),
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.memory", description=__doc__)
    parser.add_argument("--sessions", type=int, default=100_000)
    args = parser.parse_args()
    print(orjson.dumps(measure(args.sessions)).decode())


if __name__ == "__main__":
    main()
