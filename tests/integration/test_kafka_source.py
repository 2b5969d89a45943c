"""KafkaSource against a real broker: how far behind the end the consumer is."""

from __future__ import annotations

import pytest

from tests.integration.helpers import Topics, create_topic, produce
from worker.kafka import KafkaSource
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
