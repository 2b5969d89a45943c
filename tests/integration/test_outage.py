"""A broker outage under load: the worker backs off instead of spinning, its client errors
are condensed to a few lines, and the totals are exact once the broker is back."""

from __future__ import annotations

import asyncio
import os
import time
from collections import Counter
from pathlib import Path

import orjson
import pytest

from tests.integration.helpers import (
    Topics,
    WorkerProcess,
    create_topic,
    event_records,
    expected_totals,
    free_port,
    produce,
)
from tests.integration.test_guarantees import (  # the fixture is shared by import
    converged,
    ending_stream,
    private_broker,  # noqa: F401
    run_script,
    wait_for_totals_of,
)

pytestmark = pytest.mark.integration
OUTAGE_S = 10.0
MAX_LINES = 60
"""A few dozen: one condensed line per repeated message and interval, plus the worker's own."""
MAX_CPU_S = 0.5 * OUTAGE_S
"""Generous: well below a core (the busy loop this guards against took a whole one)."""


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def lines_since(log_path: Path, offset: int) -> list[dict[str, object]]:
    text = log_path.read_bytes()[offset:].decode(errors="replace")
    return [orjson.loads(line) for line in text.splitlines() if line.startswith("{")]


async def test_a_10s_outage_gives_few_log_lines_little_cpu_and_exact_totals(
    private_broker: dict[str, str],  # noqa: F811
    tmp_path: Path,
) -> None:
    topics = Topics(f"127.0.0.1:{private_broker['KAFKA_PORT']}")
    await create_topic(topics.bootstrap, topics.input, 3)
    events = ending_stream(seed=61, sessions=12)
    third = len(events) // 3
    await produce(topics.bootstrap, topics.input, event_records(events[:third]))
    worker = WorkerProcess(topics.worker_env(free_port()), tmp_path / "worker.log")
    try:
        await worker.wait_ready()
        await wait_for_totals_of(topics, expected_totals(events[:third]))
        log_offset = worker.log_path.stat().st_size
        cpu_before = cpu_seconds(worker.process.pid)
        # Under load: the broker goes away while the worker folds and writes these.
        await produce(topics.bootstrap, topics.input, event_records(events[third : 2 * third]))
        await asyncio.to_thread(run_script, "down", private_broker)
        stopped = time.monotonic()
        await asyncio.sleep(OUTAGE_S - (time.monotonic() - stopped))  # the outage itself
        cpu_during = cpu_seconds(worker.process.pid) - cpu_before
        during = lines_since(worker.log_path, log_offset)
        assert worker.process.poll() is None, worker.logs()
        restart = {**private_broker, "KAFKA_KEEP_DATA": "1"}
        await asyncio.to_thread(run_script, "up", restart)
        await produce(topics.bootstrap, topics.input, event_records(events[2 * third :]))
        await converged(topics, expected_totals(events), timeout_s=120)
        after = lines_since(worker.log_path, log_offset)
        summary = Counter(str(line["message"])[:80] for line in after)
        print(f"outage: {len(during)} lines, {cpu_during:.2f} s CPU; through recovery:", summary)
        assert len(during) <= MAX_LINES, summary
        assert len(after) <= 2 * MAX_LINES, summary
        assert cpu_during <= MAX_CPU_S
        assert worker.process.poll() is None, "reconnected on its own"
        assert worker.terminate() == 0
    finally:
        worker.close()
