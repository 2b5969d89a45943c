"""Integration fixtures: unique topics per test and worker subprocesses that always die."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.integration.helpers import Topics, WorkerProcess, collect_snapshots, free_port

pytestmark = pytest.mark.integration

StartWorker = Callable[..., WorkerProcess]


@pytest.fixture
def topics(kafka_bootstrap: str) -> Topics:
    return Topics(kafka_bootstrap)


@pytest.fixture
def start_worker(topics: Topics, tmp_path: Path) -> Iterator[StartWorker]:
    """Start `session-worker run` subprocesses; all are killed when the test ends, then
    everything they published goes to the SDK conformance check."""
    started: list[WorkerProcess] = []

    def start(*args: str, **env: str) -> WorkerProcess:
        port = free_port()
        log = tmp_path / f"worker-{len(started)}.log"
        worker = WorkerProcess(topics.worker_env(port, **env), log, args)
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.close()
    if started:
        collect_snapshots(topics)
