"""KafkaSource against a real broker: how far behind the end the consumer is, in all and
per partition (what the partition clock asks)."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
from aiokafka import AIOKafkaProducer

from tests.integration.helpers import Record, Topics, create_topic, produce
from worker.kafka.source import KafkaSource
from worker.outbox import InputRecord
from worker.settings import Settings

pytestmark = pytest.mark.integration


class NoRebalanceWork:
    async def on_revoked(self, partitions: list[int]) -> None:
        """Nothing to hand over in this test."""

    async def on_assigned(self, partitions: list[int]) -> None:
        """Nothing to restore in this test."""


async def test_backlog_counts_the_records_after_those_fetched(topics: Topics) -> None:
    await create_topic(topics.bootstrap, topics.input, 1)
    await produce(topics.bootstrap, topics.input, [(b"k", b"{}", [])] * 300)
    source = KafkaSource(
        Settings(
            bootstrap_servers=topics.bootstrap,
            input_topic=topics.input,
            group_id=topics.group,
            max_poll_records=40,
        )
    )
    await source.start(NoRebalanceWork())
    try:
        assert source.backlog() == 0, "nothing known before the first fetch"
        fetched: list[int] = []
        while not fetched:
            fetched = [r.offset for r in await source.fetch(5.0)]
        assert fetched == list(range(40))
        assert source.backlog() == 260
        while len(fetched) < 300:
            fetched += [r.offset for r in await source.fetch(5.0)]
        assert source.backlog() == 0
    finally:
        await source.stop()


async def test_committed_reads_the_groups_offsets_from_the_coordinator(topics: Topics) -> None:
    await create_topic(topics.bootstrap, topics.input, 2)
    await produce(topics.bootstrap, topics.input, [(b"k", b"{}", [])] * 10)
    settings = Settings(
        bootstrap_servers=topics.bootstrap, input_topic=topics.input, group_id=topics.group
    )
    source = KafkaSource(settings)
    await source.start(NoRebalanceWork())
    try:
        assert await source.committed([0, 1]) == {0: None, 1: None}, "nothing committed yet"
        await source.commit({0: 7})
        assert await source.committed([0, 1]) == {0: 7, 1: None}
    finally:
        await source.stop()


def source_for(topics: Topics, **settings: object) -> KafkaSource:
    return KafkaSource(
        Settings(
            bootstrap_servers=topics.bootstrap,
            input_topic=topics.input,
            group_id=topics.group,
            **settings,  # type: ignore[arg-type]
        )
    )


async def fetch_until(source: KafkaSource, done: Callable[[], bool], timeout_s: float = 30) -> int:
    """Fetch until `done()`; returns how many records were fetched meanwhile."""
    deadline = time.monotonic() + timeout_s
    count = 0
    while not done():
        assert time.monotonic() < deadline, "condition not reached"
        count += len(await source.fetch(0.5))
    return count


async def test_partition_backlog_is_unknown_until_fetched_then_counts_what_waits(
    topics: Topics,
) -> None:
    await create_topic(topics.bootstrap, topics.input, 2)
    records: list[Record] = [(b"k", b"{}", [])] * 100  # one key: one partition
    await produce(topics.bootstrap, topics.input, records)
    source = source_for(topics, max_poll_records=40)
    await source.start(NoRebalanceWork())
    try:
        assert source.partition_backlog(0) is None
        assert source.partition_backlog(1) is None
        first: list[InputRecord] = []
        while not first:
            first = list(await source.fetch(5.0))
        full = first[0].partition
        assert (len(first), source.partition_backlog(full)) == (40, 60)
        await fetch_until(source, lambda: source.partition_backlog(1 - full) is not None)
        assert source.partition_backlog(1 - full) == 0, "an empty partition is caught up"
        await fetch_until(source, lambda: source.partition_backlog(full) == 0)
        assert source.partition_backlog(7) is None, "not assigned"
    finally:
        await source.stop()


async def test_a_partition_with_nothing_new_since_the_commit_is_caught_up(
    topics: Topics,
) -> None:
    """A restart at the end of the log folds no record, yet is caught up (not 'unknown',
    which would keep judging the partition's sessions at their restored time)."""
    await create_topic(topics.bootstrap, topics.input, 1)
    await produce(topics.bootstrap, topics.input, [(b"k", b"{}", [])] * 5)
    source = source_for(topics)
    await source.start(NoRebalanceWork())
    try:
        await source.commit({0: 5})
    finally:
        await source.stop()
    restarted = source_for(topics)
    await restarted.start(NoRebalanceWork())
    try:
        fetched = await fetch_until(restarted, lambda: restarted.partition_backlog(0) is not None)
        assert (fetched, restarted.partition_backlog(0)) == (0, 0)
    finally:
        await restarted.stop()


async def test_transaction_markers_and_aborted_records_do_not_count_as_behind(
    topics: Topics,
) -> None:
    """Committed and aborted transactions leave offsets that no record shows (markers, and
    aborted records a read_committed consumer skips): once all is read, 0 waits."""
    await create_topic(topics.bootstrap, topics.input, 1)
    producer = AIOKafkaProducer(
        bootstrap_servers=topics.bootstrap, transactional_id=f"{topics.group}-tx"
    )
    await producer.start()
    try:
        for batch in range(3):
            async with producer.transaction():
                for n in range(5):
                    await producer.send(topics.input, b"{}", key=f"{batch}-{n}".encode())
        await producer.begin_transaction()
        await producer.send(topics.input, b"{}", key=b"aborted")
        await producer.abort_transaction()
    finally:
        await producer.stop()
    source = source_for(topics)
    await source.start(NoRebalanceWork())
    try:
        fetched = await fetch_until(source, lambda: source.partition_backlog(0) == 0)
        assert fetched == 15
        assert source.backlog() == 0
    finally:
        await source.stop()
