"""Pacing of failed metadata updates (pure: a fake client and a recording sleep), and how
a client that cannot start is reported."""

from __future__ import annotations

from typing import Any

from worker.kafka.clients import (
    CONNECT_TIMEOUT_S,
    METADATA_BACKOFF_MAX_S,
    RETRY_BACKOFF_MS,
    KafkaClientError,
    backoff_s,
    pace_metadata_updates,
    start_failure,
)


def test_backoff_doubles_from_the_base_up_to_the_cap() -> None:
    delays = [backoff_s(n, 0.5, 2.0) for n in range(6)]
    assert delays == [0.0, 0.5, 1.0, 2.0, 2.0, 2.0]
    assert backoff_s(10_000, 0.5, 2.0) == 2.0, "no overflow for long outages"


class FakeClient:
    def __init__(self, results: list[bool]) -> None:
        self.results = results
        self.calls = 0

    async def _metadata_update(self, cluster_metadata: Any, topics: Any) -> bool:
        self.calls += 1
        return self.results.pop(0)


async def test_failed_updates_wait_longer_each_time_and_a_success_resets_the_wait() -> None:
    client = FakeClient([False, False, False, False, True, False])
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    pace_metadata_updates(client, sleep)
    results = [await client._metadata_update(None, set()) for _ in range(6)]
    assert results == [False, False, False, False, True, False]
    base = RETRY_BACKOFF_MS / 1000
    assert slept == [base, 2 * base, 4 * base, METADATA_BACKOFF_MAX_S, 0.0, base]
    assert client.calls == 6


def test_a_start_that_timed_out_says_so() -> None:
    """A TimeoutError prints as nothing: the message names the wait instead of ending in ': '."""
    assert str(start_failure("consumer", TimeoutError())) == (
        f"cannot start consumer: no answer within {CONNECT_TIMEOUT_S:.0f}s"
    )
    assert str(start_failure("producer", OSError("refused"))) == "cannot start producer: refused"
    assert str(start_failure("producer", KafkaClientError())).startswith("cannot start producer: ")
    assert not str(start_failure("producer", KafkaClientError())).endswith(": ")
