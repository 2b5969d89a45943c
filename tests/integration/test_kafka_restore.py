"""The changelog restore on a real broker: the latest value per key of each partition, over
several fetches, with tombstones deleting their keys."""

from __future__ import annotations

import pytest

from tests.integration.helpers import Topics, create_topic
from worker.kafka.readers import EventProducer
from worker.kafka.restore import read_latest
from worker.settings import Settings

pytestmark = pytest.mark.integration

KEYS = 100
ROUNDS = 250
"""Each key written this many times: 25,000 records, more than one fetch returns."""


async def test_restore_keeps_the_latest_value_per_key_and_drops_tombstoned_keys(
    topics: Topics,
) -> None:
    settings = Settings(bootstrap_servers=topics.bootstrap)
    await create_topic(topics.bootstrap, topics.changelog, 3)
    producer = EventProducer(settings)
    await producer.start()
    try:
        for n in range(ROUNDS):
            for k in range(KEYS):
                await producer.send(topics.changelog, b"k%d" % k, b"v%d" % n, partition=0)
        for k in range(0, KEYS, 10):  # tombstones, and one key written again after its own
            await producer.send(topics.changelog, b"k%d" % k, None, partition=0)
        await producer.send(topics.changelog, b"k0", b"back", partition=0)
        await producer.send(topics.changelog, None, b"keyless", partition=0)
        await producer.send(topics.changelog, b"gone", b"v", partition=2)
        await producer.send(topics.changelog, b"gone", None, partition=2)
        await producer.flush()
    finally:
        await producer.stop()
    fetches: list[int] = []
    latest = await read_latest(settings, topics.changelog, [0, 1, 2], lambda: fetches.append(1))
    expected = {b"k%d" % k: b"v%d" % (ROUNDS - 1) for k in range(KEYS) if k % 10}
    assert latest == {0: {**expected, b"k0": b"back"}, 1: {}, 2: {}}
    assert len(fetches) > 1, "read over several fetches"
