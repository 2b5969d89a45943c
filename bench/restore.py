"""Restore benchmark: how long a worker takes to rebuild N sessions from the changelog.

Writes N realistic session states to a fresh changelog topic on the local broker, then times
the real restore path (an assignment: `read_latest` + `Recovery.restore`) and, separately,
the pure decode. Then a rebalance that gives every partition back unchanged, as the eager
protocol does to a member whose partitions stay with it: the revoke (its final checkpoint:
every restored session is ticked and published once, here into a sink that discards it)
and the assignment that takes the sessions back without reading the changelog.

    .venv/bin/python -m bench.restore --sessions 100000
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid
from collections.abc import Sequence

from prometheus_client import CollectorRegistry

from worker.changelog import decode_state, encode_state
from worker.kafka.readers import EventProducer
from worker.kafka.restore import read_latest
from worker.kafka.topics import TopicSpec, ensure_topics
from worker.metrics import WorkerMetrics
from worker.outbox import CheckpointTimings, InputRecord, Outbox
from worker.rules import Rules
from worker.runtime import OutputTopics, Runner
from worker.settings import Settings
from worker.state import SessionState
from worker.store import SessionStore
from worker.traffic import SyntheticTraffic

PARTITIONS = 6


def realistic_states(count: int) -> list[SessionState]:
    """Sessions with ~20 s of 3-rendition traffic each (windows and masks populated)."""
    from worker.events import EVENT_ADAPTER  # noqa: PLC0415

    traffic = SyntheticTraffic(1, start_ms=1_700_000_000_000, seed=1, stalling=0)
    template = [
        EVENT_ADAPTER.validate_python(e) for e in traffic.events_between(0, 1_700_000_030_000)
    ]
    store = SessionStore(Rules())
    states = []
    for i in range(count):
        sid = f"restore-{i:07d}"
        for event in template:
            state = store.apply(event.model_copy(update={"session_id": sid}), i % PARTITIONS)
        states.append(state)
    # Tick at the newest event time, as the worker does before it writes a changelog record:
    # rate windows lose what has left them, so records are as big as a live worker's.
    store.tick(max(event.timestamp for event in template))
    return states


class _NullSink:
    async def open_partitions(self, partitions: Sequence[int]) -> None: ...
    async def close_partitions(self, partitions: Sequence[int]) -> None: ...
    async def checkpoint(self, outbox: Outbox) -> CheckpointTimings:
        return CheckpointTimings(0.0, 0.0)


class _NoSource:
    """No input; the group's committed offsets never move (nobody else owns a partition)."""

    async def fetch(self, timeout_s: float) -> list[InputRecord]:
        return []

    def backlog(self) -> int:
        return 0

    def partition_backlog(self, partition: int) -> int | None:
        return 0

    async def committed(self, partitions: Sequence[int]) -> dict[int, int | None]:
        return dict.fromkeys(partitions, 0)


DECODE_REPS = 5
"""Runs of the decode micro-benchmark: the least CPU time of them is reported (the machine's
other load only ever adds to it)."""


def decode_cpu(payloads: Sequence[tuple[int, str, bytes]], reps: int) -> float:
    """CPU µs per record to decode `payloads` into states kept alive, as a restore keeps
    them (the least of `reps` runs)."""
    runs = []
    for _ in range(reps):
        started = time.process_time()
        kept = [decode_state(payload, partition) for partition, _, payload in payloads]
        runs.append((time.process_time() - started) / len(payloads) * 1e6)
        del kept
    return min(runs)


async def run(sessions: int, bootstrap: str) -> dict[str, float]:
    states = realistic_states(sessions)
    payloads = [(s.partition, s.session_id, encode_state(s, None, 0)) for s in states]
    # A restoring worker holds no other 100k states: these would make every full collection
    # of the restore walk them too (1.6 times as long with them kept: docs/performance.md).
    del states
    started = time.perf_counter()
    for partition, _, payload in payloads:
        decode_state(payload, partition)
    decode_s = time.perf_counter() - started
    decode_cpu_us = decode_cpu(payloads, DECODE_REPS)

    settings = Settings(bootstrap_servers=bootstrap)
    topic = f"bench.restore.{uuid.uuid4().hex[:8]}"
    await ensure_topics(settings, [TopicSpec(topic, PARTITIONS, {"cleanup.policy": "compact"})])
    producer = EventProducer(settings, linger_ms=20, max_batch_size=1024 * 1024)
    await producer.start()
    for partition, sid, payload in payloads:
        await producer.send(topic, sid.encode(), payload, partition=partition)
    await producer.flush()
    await producer.stop()

    runner = Runner(
        _NoSource(),
        _NullSink(),
        SessionStore(Rules()),
        WorkerMetrics(CollectorRegistry()),
        lambda parts: read_latest(settings, topic, parts),
        OutputTopics("s", topic, "d"),
        publish_interval_s=1.0,
    )
    everything = list(range(PARTITIONS))
    started = time.perf_counter()
    await runner.on_assigned(everything)
    restore_s = time.perf_counter() - started
    assert len(runner.store) == sessions, (len(runner.store), sessions)
    started = time.perf_counter()
    await runner.on_revoked(everything)
    revoke_s = time.perf_counter() - started
    started = time.perf_counter()
    await runner.on_assigned(everything)
    kept_s = time.perf_counter() - started
    assert len(runner.store) == sessions, "every session kept"
    return {
        "sessions": sessions,
        "record_bytes_mean": sum(len(p) for *_, p in payloads) / sessions,
        "decode_only_s": decode_s,
        "decode_cpu_us_per_record_min": decode_cpu_us,
        "restore_from_kafka_s": restore_s,
        "sessions_per_s": sessions / restore_s,
        "rebalance_revoke_s": revoke_s,
        "rebalance_assign_kept_s": kept_s,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sessions", type=int, default=100_000)
    parser.add_argument("--bootstrap", default="127.0.0.1:9092")
    args = parser.parse_args()
    result = asyncio.run(run(args.sessions, args.bootstrap))
    for key, value in result.items():
        print(f"{key:>24}: {value:,.3f}")


if __name__ == "__main__":
    main()
