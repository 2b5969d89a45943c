"""Delivery guarantees on a real broker: crashes, restarts and rebalances never lose or
double-count anything. Each test compares against an uninterrupted run of the same stream.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import random
import subprocess
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.conftest import KAFKA_SCRIPT
from tests.integration.conftest import StartWorker
from tests.integration.helpers import (
    Topics,
    WorkerProcess,
    create_topic,
    event_records,
    expected_totals,
    free_port,
    http_get,
    latest_snapshots,
    produce,
    produce_in_chunks,
    totals_of,
    wait_for,
)
from worker.traffic import SyntheticTraffic

pytestmark = pytest.mark.integration


def ending_stream(seed: int, sessions: int) -> list[dict[str, Any]]:
    """Sessions that all end well in the past, so every final field is deterministic."""
    now = int(time.time() * 1000)
    span = 200_000
    traffic = SyntheticTraffic(
        sessions,
        start_ms=now - span - 60_000,
        seed=seed,
        stalling=0,
        ending_every=1,
        segments_before_end=25,
        id_prefix="g",
    )
    events = traffic.events_between(now - span - 60_000, now - 30_000)
    rng = random.Random(seed)
    return events + rng.sample(events, len(events) // 8)


async def reference_snapshots(
    kafka_bootstrap: str, events: Sequence[dict[str, Any]], tmp_path: Path, partitions: int
) -> dict[str, dict[str, Any]]:
    """The final snapshots of one uninterrupted worker over the same events."""
    topics = Topics(kafka_bootstrap)
    await create_topic(kafka_bootstrap, topics.input, partitions)
    await produce(kafka_bootstrap, topics.input, event_records(events))
    worker = WorkerProcess(topics.worker_env(free_port()), tmp_path / "reference.log")
    try:
        await worker.wait_ready()
        return await converged(topics, expected_totals(events))
    finally:
        assert worker.terminate() == 0
        worker.close()


async def converged(
    topics: Topics, expected: dict[str, dict[str, Any]], timeout_s: float = 90
) -> dict[str, dict[str, Any]]:
    async def probe() -> dict[str, dict[str, Any]] | None:
        latest = await latest_snapshots(topics.bootstrap, topics.snapshots)
        done = set(latest) >= set(expected) and all(
            totals_of(latest[s]) == t and latest[s]["isHealthy"] is None
            for s, t in expected.items()
        )
        return latest if done else None

    result: dict[str, dict[str, Any]] = await wait_for(probe, timeout_s, 1.0, "final snapshots")
    return result


@pytest.mark.parametrize("guarantee", ["at_least_once", "exactly_once"])
async def test_kill_9_at_random_points_then_restart_equals_an_uninterrupted_run(
    topics: Topics, start_worker: StartWorker, kafka_bootstrap: str, tmp_path: Path, guarantee: str
) -> None:
    events = ending_stream(seed=41, sessions=16)
    reference = await reference_snapshots(kafka_bootstrap, events, tmp_path, partitions=3)
    await create_topic(topics.bootstrap, topics.input, 3)
    producing = asyncio.create_task(produce_in_chunks(topics, events, chunks=80, pause_s=0.25))
    rng = random.Random(5)
    for _ in range(4):
        victim = start_worker(
            WORKER_PROCESSING_GUARANTEE=guarantee, WORKER_PUBLISH_INTERVAL_S="0.2"
        )
        await victim.wait_ready()
        await asyncio.sleep(rng.uniform(0.3, 2.0))
        victim.kill()  # SIGKILL: no final checkpoint, no commit, no leave-group
    await producing
    survivor = start_worker(WORKER_PROCESSING_GUARANTEE=guarantee)
    await survivor.wait_ready()
    final = await converged(topics, expected_totals(events))
    assert final == reference, "field by field equal to the uninterrupted run"
    assert survivor.terminate() == 0


def metric_value(port: int, name: str) -> float:
    status, body = http_get(port, "/metrics")
    assert status == 200
    for line in body.decode().splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not exported")


async def test_static_member_restart_does_not_rebalance_the_others(
    topics: Topics, start_worker: StartWorker
) -> None:
    await create_topic(topics.bootstrap, topics.input, 4)
    static = {"WORKER_GROUP_INSTANCE_ID": "pod-a", "WORKER_SESSION_TIMEOUT_S": "60"}
    pod_a = start_worker(**static)
    await pod_a.wait_ready()
    pod_b = start_worker(WORKER_GROUP_INSTANCE_ID="pod-b", WORKER_SESSION_TIMEOUT_S="60")
    await pod_b.wait_ready()
    await asyncio.sleep(4)  # let the second join settle
    rebalances = metric_value(pod_b.port, "session_worker_rebalances_total")
    assert pod_a.terminate() == 0  # a rolling restart of pod-a
    restarted = start_worker(**static)
    await restarted.wait_ready()
    events = ending_stream(seed=3, sessions=6)
    await produce(topics.bootstrap, topics.input, event_records(events))
    await converged(topics, expected_totals(events))
    assert metric_value(pod_b.port, "session_worker_rebalances_total") == rebalances
    assert restarted.terminate() == 0
    assert pod_b.terminate() == 0


async def test_partitions_given_back_by_a_rebalance_keep_their_sessions_in_memory(
    topics: Topics, start_worker: StartWorker
) -> None:
    await create_topic(topics.bootstrap, topics.input, 4)
    events = ending_stream(seed=5, sessions=16)
    half = len(events) // 2
    first = start_worker()
    await first.wait_ready()
    await produce(topics.bootstrap, topics.input, event_records(events[:half]))

    def exported(name: str) -> Callable[[], Awaitable[float]]:
        async def probe() -> float:
            return metric_value(first.port, name)

        return probe

    await wait_for(exported("session_worker_checkpoints_total"), 30, what="a checkpoint")
    restored = metric_value(first.port, "session_worker_restored_sessions_total")
    second = start_worker()  # a rebalance: the first worker gives up all four, gets two back
    await second.wait_ready()
    await wait_for(exported("session_worker_kept_sessions_total"), 30, what="kept sessions")
    assert metric_value(first.port, "session_worker_restored_sessions_total") == restored
    await produce(topics.bootstrap, topics.input, event_records(events[half:]))
    await converged(topics, expected_totals(events))
    assert first.terminate() == 0
    assert second.terminate() == 0


def ownership_intervals(logs: list[str]) -> dict[int, list[tuple[float, float, int]]]:
    """Per partition, (assigned_at, revoked_at, worker) from the workers' JSON logs."""
    intervals: dict[int, list[tuple[float, float, int]]] = {}
    for index, text in enumerate(logs):
        open_since: dict[int, float] = {}
        for line in text.splitlines():
            if not line.startswith("{"):
                continue
            entry = orjson.loads(line)
            at = (
                time.mktime(time.strptime(entry["ts"][:19], "%Y-%m-%dT%H:%M:%S"))
                + int(entry["ts"][20:23]) / 1000
            )
            if entry["message"] == "partitions assigned":
                for p in entry["partitions"]:
                    open_since.setdefault(p, at)
            elif entry["message"] == "partitions revoked":
                for p in entry["partitions"]:
                    if p in open_since:
                        intervals.setdefault(p, []).append((open_since.pop(p), at, index))
        for p, since in open_since.items():
            intervals.setdefault(p, []).append((since, float("inf"), index))
    return intervals


async def test_scale_1_3_2_1_while_traffic_flows_keeps_totals_exact(
    topics: Topics, start_worker: StartWorker, kafka_bootstrap: str, tmp_path: Path
) -> None:
    events = ending_stream(seed=77, sessions=24)
    reference = await reference_snapshots(kafka_bootstrap, events, tmp_path, partitions=6)
    await create_topic(topics.bootstrap, topics.input, 6)
    producing = asyncio.create_task(produce_in_chunks(topics, events, chunks=60, pause_s=0.25))
    first = start_worker()
    await first.wait_ready()
    await asyncio.sleep(2)
    second, third = start_worker(), start_worker()
    await second.wait_ready()
    await third.wait_ready()
    await asyncio.sleep(3)
    assert third.terminate() == 0
    await asyncio.sleep(3)
    assert second.terminate() == 0
    await producing
    final = await converged(topics, expected_totals(events))
    assert final == reference
    assert first.terminate() == 0

    intervals = ownership_intervals([w.log_path.read_text() for w in (first, second, third)])
    assert set(intervals) == set(range(6))
    for partition, spans in intervals.items():
        spans.sort()
        for (_, end, _), (start, _, _) in itertools.pairwise(spans):
            assert end <= start, f"partition {partition} owned twice at once: {spans}"
    assert any(len({w for *_, w in s}) > 1 for s in intervals.values()), "partitions moved"


def run_script(command: str, env: dict[str, str]) -> None:
    subprocess.run(["bash", str(KAFKA_SCRIPT), command], env=env, check=True)


@pytest.fixture
def private_broker(tmp_path: Path) -> Iterator[dict[str, str]]:
    """A broker of this test's own (other tests keep theirs), stopped at the end."""
    env = {
        **os.environ,
        "KAFKA_PORT": str(free_port()),
        "KAFKA_CONTROLLER_PORT": str(free_port()),
        "KAFKA_RUN_DIR": str(tmp_path / "broker"),
    }
    subprocess.run(["bash", str(KAFKA_SCRIPT), "up"], env=env, check=True)
    yield env
    subprocess.run(["bash", str(KAFKA_SCRIPT), "down"], env=env, check=False)


async def test_broker_restart_mid_stream_loses_and_doubles_nothing(
    private_broker: dict[str, str], tmp_path: Path
) -> None:
    topics = Topics(f"127.0.0.1:{private_broker['KAFKA_PORT']}")
    await create_topic(topics.bootstrap, topics.input, 3)
    events = ending_stream(seed=99, sessions=10)
    half = len(events) // 2
    await produce(topics.bootstrap, topics.input, event_records(events[:half]))
    worker = WorkerProcess(topics.worker_env(free_port()), tmp_path / "worker.log")
    try:
        await worker.wait_ready()
        await wait_for_totals_of(topics, expected_totals(events[:half]))
        await asyncio.to_thread(run_script, "down", private_broker)
        await asyncio.sleep(3)  # the worker keeps running without a broker
        assert worker.process.poll() is None, worker.logs()
        restart = {**private_broker, "KAFKA_KEEP_DATA": "1"}
        await asyncio.to_thread(run_script, "up", restart)
        await produce(topics.bootstrap, topics.input, event_records(events[half:]))
        await converged(topics, expected_totals(events), timeout_s=120)
        assert worker.process.poll() is None, "reconnected on its own"
        assert worker.terminate() == 0
    finally:
        worker.close()


async def wait_for_totals_of(topics: Topics, expected: dict[str, dict[str, Any]]) -> None:
    async def probe() -> bool:
        latest = await latest_snapshots(topics.bootstrap, topics.snapshots)
        return all(totals_of(latest.get(s, {})) == t for s, t in expected.items())

    await wait_for(probe, 60, 1.0, "totals of the first half")
