"""The composition root's shutdown: closing the clients is bounded."""

from __future__ import annotations

import asyncio
import logging

import pytest

from worker.app import Worker
from worker.settings import Settings


async def test_a_client_that_never_closes_does_not_keep_the_worker_from_exiting(
    caplog: pytest.LogCaptureFixture,
) -> None:
    worker = Worker(Settings(bootstrap_servers="127.0.0.1:1", shutdown_timeout_s=0.2))
    consumer_stop, producer_stop = worker.source.stop, worker.sink.stop
    producer_closed: list[bool] = []

    async def never_returns() -> None:  # e.g. a consumer stuck rejoining its group
        await asyncio.Event().wait()

    async def close_producer() -> None:
        await producer_stop()
        producer_closed.append(True)

    worker.source.stop = never_returns  # type: ignore[method-assign]
    worker.sink.stop = close_producer  # type: ignore[method-assign]
    try:
        with caplog.at_level(logging.ERROR, logger="worker.app"):
            await asyncio.wait_for(worker.close(), 10)  # bounded by the deadline, not by 10 s
    finally:
        await consumer_stop()
    assert "client did not close in time" in caplog.text
    assert producer_closed == [True], "the producer is still closed after the consumer hung"
