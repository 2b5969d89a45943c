"""Poison records on a real broker: no record of any size or shape stops the worker, stalls
its partition, or is lost. Every bad record is dead-lettered (truncated when too large for
the dead-letter topic), every record that cannot be written is counted, and the totals of
the valid events around them are exact, in both delivery modes.
"""

from __future__ import annotations

import hashlib
import random
import time
from collections.abc import Callable, Mapping
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from tests.integration.conftest import StartWorker
from tests.integration.helpers import (
    ConsumedRecord,
    Record,
    Topics,
    WorkerProcess,
    event_records,
    expected_totals,
    http_get,
    latest_snapshots,
    read_all,
    totals_of,
    wait_for,
)

pytestmark = pytest.mark.integration
GUARANTEES = ["at_least_once", "exactly_once"]
DEFAULT_LIMIT = 1_048_576
"""The producer's request limit, below the broker's default `max.message.bytes`."""


async def create_topic_with(
    bootstrap: str, name: str, partitions: int, config: Mapping[str, str]
) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, partitions, 1, topic_configs=dict(config))])
    finally:
        await admin.close()


async def produce_large(bootstrap: str, topic: str, records: list[Record]) -> None:
    """In order, one at a time: records of up to 4 MB."""
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", max_request_size=4 * 1024 * 1024
    )
    await producer.start()
    try:
        for key, value, headers in records:
            await (await producer.send(topic, value=value, key=key, headers=headers))
    finally:
        await producer.stop()


def session_events(session_id: str, segments: int, start_ms: int) -> list[dict[str, Any]]:
    """A session's start, `segments` ingested and transcoded segments, and its end."""
    base = {"sessionId": session_id}
    events: list[dict[str, Any]] = [
        {**base, "type": "session.started", "timestamp": start_ms, "name": f"show {session_id}"}
    ]
    for seq_no in range(segments):
        at = start_ms + 2000 * (seq_no + 1)
        events.append(
            {**base, "type": "segment.ingested", "timestamp": at, "seqNo": seq_no}
            | {"duration": 2.0, "bytes": 1000 + seq_no}
        )
        events.append(
            {**base, "type": "segment.transcoded", "timestamp": at + 500, "seqNo": seq_no}
            | {"duration": 2.0, "renditions": [{"name": "360p", "bytes": 300 + seq_no}]}
        )
    events.append({**base, "type": "session.ended", "timestamp": start_ms + 2000 * segments + 1})
    return events


def fuzzed_values(seed: int, count: int) -> list[bytes]:
    """Bounded, seeded garbage: random bytes, deep JSON, huge numbers, invalid UTF-8."""
    rng = random.Random(seed)
    makers: list[Callable[[], bytes]] = [
        lambda: rng.randbytes(rng.randint(1, 2000)),
        lambda: b"[" * rng.randint(1000, 200_000),
        lambda: b'{"a":' * rng.randint(1000, 50_000) + b"1" + b"}" * 10,
        lambda: (
            b'{"type":"segment.ingested","sessionId":"x","timestamp":'
            + b"9" * rng.randint(30, 20_000)
            + b"}"
        ),
        lambda: (
            b'{"type":"segment.ingested","sessionId":"x","timestamp":1e'
            + str(rng.randint(400, 10**6)).encode()
            + b"}"
        ),
        lambda: b'{"type":"session.started","sessionId":"x\xff\xfe","timestamp":1,"name":"\xc3"}',
        lambda: bytes([0xED, 0xA0, 0x80]) * rng.randint(1, 100),  # a UTF-8 encoded surrogate
    ]
    return [rng.choice(makers)() for _ in range(count)]


async def dead_letters_of(topics: Topics, count: int) -> list[ConsumedRecord] | None:
    found = await read_all(topics.bootstrap, topics.dlq)
    return found if len(found) >= count else None


def labelled_metric(port: int, name: str, labels: Mapping[str, str]) -> float:
    """The value of one labelled sample of `name` on a worker's /metrics (0: none yet)."""
    status, body = http_get(port, "/metrics")
    assert status == 200
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    prefix = f"{name}{{{wanted}}}" if labels else name
    for line in body.decode().splitlines():
        if line.startswith(prefix + " "):
            return float(line.split()[1])
    return 0.0


async def committed_to_end(topics: Topics) -> bool:
    """The group's committed offsets have reached the end of every input partition."""
    admin = AIOKafkaAdminClient(bootstrap_servers=topics.bootstrap)
    await admin.start()
    try:
        committed = await admin.list_consumer_group_offsets(topics.group)
    finally:
        await admin.close()
    ends = {r.partition: r.offset + 1 for r in await read_all(topics.bootstrap, topics.input)}
    done = {tp.partition: meta.offset for tp, meta in committed.items()}
    return all(done.get(p, -1) >= end for p, end in ends.items())


async def wait_totals(topics: Topics, expected: dict[str, dict[str, Any]]) -> None:
    async def converged() -> bool:
        latest = await latest_snapshots(topics.bootstrap, topics.snapshots)
        return all(totals_of(latest.get(s, {})) == t for s, t in expected.items())

    await wait_for(converged, 90, 1.0, "exact totals")


async def later_events_fold_and_the_worker_stops_cleanly(
    topics: Topics, worker: WorkerProcess, start_ms: int
) -> None:
    """What every poison case ends with: the partition goes on, the worker is still up."""
    later = session_events("later", 3, start_ms)
    await produce_large(topics.bootstrap, topics.input, event_records(later))
    await wait_totals(topics, expected_totals(later))
    assert worker.process.poll() is None
    assert worker.terminate() == 0


@pytest.mark.parametrize("guarantee", GUARANTEES)
async def test_a_1mb_invalid_record_and_fuzzed_garbage_are_dead_lettered_and_later_events_fold(
    topics: Topics, start_worker: StartWorker, guarantee: str
) -> None:
    await create_topic_with(topics.bootstrap, topics.input, 1, {})
    start_ms = int(time.time() * 1000) - 120_000
    events = session_events("poisoned", 6, start_ms)
    # Just within the input topic's limit, over the dead-letter topic's with the dlq headers.
    huge = b"{" + b"x" * (DEFAULT_LIMIT - 200)
    garbage = [huge, *fuzzed_values(seed=16, count=40)]
    records = event_records(events[:3])
    records += [(b"poisoned", value, [("trace", b"t1")]) for value in garbage]
    records += event_records(events[3:])
    await produce_large(topics.bootstrap, topics.input, records)

    worker = start_worker(WORKER_PROCESSING_GUARANTEE=guarantee)
    await worker.wait_ready()
    await wait_totals(topics, expected_totals(events))
    dead = await wait_for(lambda: dead_letters_of(topics, len(garbage)), 60, what="dead letters")
    assert len(dead) == len(garbage), "each bad record once, nothing else"
    offsets = [int(d.headers["dlq.source.offset"]) for d in dead]
    assert sorted(offsets) == list(range(3, 3 + len(garbage)))
    by_offset = {int(d.headers["dlq.source.offset"]): d for d in dead}
    letter = by_offset[3]
    assert int(letter.headers["dlq.truncated"]) == len(huge)
    assert letter.headers["dlq.value.sha256"].decode() == hashlib.sha256(huge).hexdigest()
    assert letter.value is not None
    assert 0 < len(letter.value) < len(huge)
    assert huge.startswith(letter.value)
    assert letter.headers["trace"] == b"t1"
    for offset, value in enumerate(garbage[1:], start=4):
        assert by_offset[offset].value == value, "small dead letters are written unchanged"
        assert "dlq.truncated" not in by_offset[offset].headers
    truncated = "session_worker_dead_letters_truncated_total"
    assert labelled_metric(worker.port, truncated, {}) == 1
    await wait_for(lambda: committed_to_end(topics), 30, what="offsets committed to the end")
    assert worker.process.poll() is None, "still running"
    assert worker.terminate() == 0


@pytest.mark.parametrize("guarantee", GUARANTEES)
async def test_a_2mb_record_on_a_raised_input_limit_gets_a_truncated_dead_letter(
    topics: Topics, start_worker: StartWorker, guarantee: str
) -> None:
    await create_topic_with(topics.bootstrap, topics.input, 2, {"max.message.bytes": "3000000"})
    start_ms = int(time.time() * 1000) - 120_000
    events = session_events("big-input", 4, start_ms)
    huge = orjson.dumps({"type": "session.started", "sessionId": "big-input"}) + b" " * 2_000_000
    records = [*event_records(events[:2]), (b"big-input", huge, [])]
    records += event_records(events[2:])
    await produce_large(topics.bootstrap, topics.input, records)

    worker = start_worker(WORKER_PROCESSING_GUARANTEE=guarantee)
    await worker.wait_ready()
    await wait_totals(topics, expected_totals(events))
    (letter,) = await wait_for(lambda: dead_letters_of(topics, 1), 60, what="the dead letter")
    assert int(letter.headers["dlq.truncated"]) == len(huge)
    assert letter.headers["dlq.value.sha256"].decode() == hashlib.sha256(huge).hexdigest()
    assert letter.value is not None
    assert len(letter.value) < DEFAULT_LIMIT
    assert huge.startswith(letter.value)
    await wait_for(lambda: committed_to_end(topics), 30, what="offsets committed to the end")
    assert worker.terminate() == 0


def huge_metadata(session_id: str, start_ms: int) -> dict[str, Any]:
    """As large as the input rules allow: 32 profiles with 500-char names, 128-char ids."""
    return {
        "type": "session.started",
        "sessionId": session_id,
        "timestamp": start_ms,
        "name": "n" * 500,
        "parentId": "p" * 128,
        "projectId": "q" * 128,
        "playbackId": "b" * 128,
        "profiles": [
            {"name": f"{i:02d}" + "r" * 498, "width": 1280, "height": 720}
            | {"bitrate": 3_000_000, "fps": 30}
            for i in range(32)
        ],
    }


@pytest.mark.parametrize("guarantee", GUARANTEES)
async def test_a_snapshot_too_large_for_its_topic_is_skipped_and_counted_while_others_publish(
    topics: Topics, start_worker: StartWorker, guarantee: str
) -> None:
    await create_topic_with(topics.bootstrap, topics.input, 1, {})
    # Room for ordinary snapshots, not for one with the largest valid metadata.
    await create_topic_with(
        topics.bootstrap,
        topics.snapshots,
        1,
        {"cleanup.policy": "compact", "max.message.bytes": "8000"},
    )
    start_ms = int(time.time() * 1000) - 120_000
    large = session_events("large", 5, start_ms)
    large[0] = huge_metadata("large", start_ms)
    small = session_events("small", 5, start_ms)
    interleaved = [e for pair in zip(large, small, strict=True) for e in pair]
    await produce_large(topics.bootstrap, topics.input, event_records(interleaved))

    worker = start_worker(WORKER_PROCESSING_GUARANTEE=guarantee)
    await worker.wait_ready()
    await wait_totals(topics, expected_totals(small))
    unwritable = "session_worker_unwritable_records_total"
    labels = {"topic_role": "snapshots", "reason": "too_large"}

    async def counted() -> float:
        return labelled_metric(worker.port, unwritable, labels)

    await wait_for(counted, 30, what="the unwritable snapshot counted")
    await wait_for(lambda: committed_to_end(topics), 30, what="offsets committed to the end")
    assert "large" not in await latest_snapshots(topics.bootstrap, topics.snapshots)
    logged = [
        orjson.loads(line)
        for line in worker.log_path.read_text().splitlines()
        if "record cannot be written" in line
    ]
    assert logged
    assert logged[0]["key"] == "large"
    assert logged[0]["source_partition"] == 0
    assert logged[0]["level"] == "error"
    # Later events of the same partition still fold and publish.
    await later_events_fold_and_the_worker_stops_cleanly(topics, worker, start_ms + 1000)


@pytest.mark.parametrize("guarantee", GUARANTEES)
async def test_huge_valid_metadata_is_published(
    topics: Topics, start_worker: StartWorker, guarantee: str
) -> None:
    await create_topic_with(topics.bootstrap, topics.input, 1, {})
    start_ms = int(time.time() * 1000) - 120_000
    events = session_events("meta", 3, start_ms)
    events[0] = huge_metadata("meta", start_ms)
    await produce_large(topics.bootstrap, topics.input, event_records(events))
    worker = start_worker(WORKER_PROCESSING_GUARANTEE=guarantee)
    await worker.wait_ready()
    await wait_totals(topics, expected_totals(events))
    snapshot = (await latest_snapshots(topics.bootstrap, topics.snapshots))["meta"]
    assert len(snapshot["profiles"]) == 32
    assert snapshot["name"] == "n" * 500
    assert await read_all(topics.bootstrap, topics.dlq) == []
    assert worker.terminate() == 0


async def alter_topic(bootstrap: str, topic: str, config: Mapping[str, str]) -> None:
    """Set `config` as the topic's whole configuration (the worker is already running)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, topic, dict(config))])
    finally:
        await admin.close()


@pytest.mark.parametrize("guarantee", GUARANTEES)
async def test_a_limit_lowered_while_running_is_learned_from_the_refusal(
    topics: Topics, start_worker: StartWorker, guarantee: str
) -> None:
    """The limits read at startup are stale: the broker refuses a batch, which breaks the
    producer's sequence. The producer is replaced and the retry leaves the culprit out."""
    await create_topic_with(topics.bootstrap, topics.input, 1, {})
    start_ms = int(time.time() * 1000) - 120_000
    early = session_events("early", 2, start_ms)
    await produce_large(topics.bootstrap, topics.input, event_records(early))
    worker = start_worker(WORKER_PROCESSING_GUARANTEE=guarantee)
    await worker.wait_ready()
    await wait_totals(topics, expected_totals(early))
    await alter_topic(
        topics.bootstrap,
        topics.snapshots,
        {"cleanup.policy": "compact", "max.message.bytes": "8000"},
    )
    large = session_events("large", 5, start_ms)
    large[0] = huge_metadata("large", start_ms)
    small = session_events("small", 5, start_ms)
    interleaved = [e for pair in zip(large, small, strict=True) for e in pair]
    await produce_large(topics.bootstrap, topics.input, event_records(interleaved))
    await wait_totals(topics, expected_totals(small))
    labels = {"topic_role": "snapshots", "reason": "too_large"}

    async def counted() -> float:
        return labelled_metric(worker.port, "session_worker_unwritable_records_total", labels)

    await wait_for(counted, 30, what="the unwritable snapshot counted")
    await wait_for(lambda: committed_to_end(topics), 30, what="offsets committed to the end")
    assert "large" not in await latest_snapshots(topics.bootstrap, topics.snapshots)
    assert "batch of" in worker.logs(), "the refusal was seen and retried"
    await later_events_fold_and_the_worker_stops_cleanly(topics, worker, start_ms + 1000)


@pytest.mark.parametrize("guarantee", GUARANTEES)
async def test_a_record_the_broker_refuses_as_invalid_is_found_and_left_out(
    topics: Topics, start_worker: StartWorker, guarantee: str
) -> None:
    """The dead-letter topic turns compacted while the worker runs: the broker refuses the
    batch holding a keyless dead letter (INVALID_RECORD). The refusal replaces the producer
    and re-reads the topics' configs, so the retry leaves the keyless one out; the keyed
    dead letter beside it is written. (A refusal the configs do not explain isolates the
    records one per batch: tests/unit/test_outbox.py.)"""
    await create_topic_with(topics.bootstrap, topics.input, 1, {})
    start_ms = int(time.time() * 1000) - 120_000
    events = session_events("refused", 4, start_ms)
    worker = start_worker(WORKER_PROCESSING_GUARANTEE=guarantee)
    await worker.wait_ready()
    await alter_topic(topics.bootstrap, topics.dlq, {"cleanup.policy": "compact"})
    records = [*event_records(events[:2]), (b"refused", b"{keyed", []), (None, b"{keyless", [])]
    records += event_records(events[2:])
    await produce_large(topics.bootstrap, topics.input, records)
    await wait_totals(topics, expected_totals(events))
    labels = {"topic_role": "dead_letters", "reason": "invalid_record"}

    async def counted() -> float:
        return labelled_metric(worker.port, "session_worker_unwritable_records_total", labels)

    assert await wait_for(counted, 60, what="the refused dead letter counted") == 1
    await wait_for(lambda: committed_to_end(topics), 30, what="offsets committed to the end")
    letters = await read_all(topics.bootstrap, topics.dlq)
    assert {(r.key, r.value) for r in letters} == {(b"refused", b"{keyed")}
    logged = [
        orjson.loads(line)
        for line in worker.log_path.read_text().splitlines()
        if "record cannot be written" in line
    ]
    assert [(e["source_offset"], e["reason"]) for e in logged] == [(3, "invalid_record")]
    assert worker.process.poll() is None
    assert worker.terminate() == 0


@pytest.mark.parametrize("guarantee", GUARANTEES)
async def test_two_starts_with_700kb_ids_never_stop_the_partition(
    topics: Topics, start_worker: StartWorker, guarantee: str
) -> None:
    """The production outage: each record fits, their merged snapshot (1.4 MB) does not.
    Whatever the input rules make of the ids (kept, or dropped as invalid metadata), the
    worker keeps running and the partition moves on."""
    await create_topic_with(topics.bootstrap, topics.input, 1, {})
    start_ms = int(time.time() * 1000) - 120_000
    big = session_events("big-ids", 3, start_ms)
    first = {**big[0], "parentId": "p" * 700_000}
    second = {**big[0], "timestamp": start_ms + 1, "projectId": "q" * 700_000}
    other = session_events("neighbour", 4, start_ms)
    records = event_records([first, second, *big[1:]]) + event_records(other)
    await produce_large(topics.bootstrap, topics.input, records)
    worker = start_worker(WORKER_PROCESSING_GUARANTEE=guarantee)
    await worker.wait_ready()
    await wait_totals(topics, expected_totals(other))
    await wait_for(lambda: committed_to_end(topics), 30, what="offsets committed to the end")
    published = (await latest_snapshots(topics.bootstrap, topics.snapshots)).get("big-ids")
    labels = {"topic_role": "snapshots", "reason": "too_large"}
    skipped = labelled_metric(worker.port, "session_worker_unwritable_records_total", labels)
    if published is None:  # ids kept: the snapshot cannot be written, and says so
        assert skipped >= 1
    else:  # ids dropped by the input rules: the rest of the session is published
        assert len(published.get("parentId", "")) < 700_000
        assert totals_of(published) == expected_totals(big)["big-ids"]
    assert worker.process.poll() is None
    assert worker.terminate() == 0
