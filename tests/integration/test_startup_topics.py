"""Start-up refuses topic layouts that would break its guarantees, with one clear line."""

from __future__ import annotations

import asyncio
import logging

import pytest

from tests.integration.conftest import StartWorker
from tests.integration.helpers import Topics, create_topic
from worker.kafka.restore import read_latest
from worker.kafka.topics import prepare_topics
from worker.settings import Settings

pytestmark = pytest.mark.integration


async def exit_and_errors(worker_start: StartWorker, **env: str) -> tuple[int, list[str]]:
    worker = worker_start(**env)
    code = await asyncio.to_thread(worker.process.wait, 60)
    errors = [line for line in worker.logs().splitlines() if '"level":"error"' in line]
    return code, errors


async def test_missing_output_topics_are_an_error_when_topic_creation_is_off(
    topics: Topics, start_worker: StartWorker
) -> None:
    await create_topic(topics.bootstrap, topics.input, 2)
    code, errors = await exit_and_errors(start_worker, WORKER_CREATE_TOPICS="false")
    assert code != 0
    assert len(errors) == 1, errors
    assert topics.snapshots in errors[0]
    assert topics.changelog in errors[0]


async def test_a_changelog_not_co_partitioned_with_the_input_is_refused(
    topics: Topics, start_worker: StartWorker
) -> None:
    await create_topic(topics.bootstrap, topics.input, 3)
    await create_topic(topics.bootstrap, topics.changelog, 2)
    code, errors = await exit_and_errors(start_worker)
    assert code != 0
    assert len(errors) == 1, errors
    assert "has 2 partitions but the input" in errors[0]


async def test_topics_the_worker_creates_are_served_before_the_restore_reads_them(
    kafka_bootstrap: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Right after creation the broker refused ListOffsets for a moment, and the restore's
    first read logged NotLeaderForPartitionError (in about one start of three here)."""
    for _ in range(5):
        topics = Topics(kafka_bootstrap)
        settings = Settings(
            bootstrap_servers=kafka_bootstrap,
            input_topic=topics.input,
            snapshot_topic=topics.snapshots,
            dlq_topic=topics.dlq,
            group_id=topics.group,
        )
        with caplog.at_level(logging.WARNING, logger="aiokafka"):
            partitions = await prepare_topics(settings)
            await read_latest(settings, topics.changelog, list(range(partitions)))
    assert [r.getMessage() for r in caplog.records if r.name.startswith("aiokafka")] == []
