"""Integration helpers: real Kafka clients, a worker subprocess, HTTP polling."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from tests.conformance.sessioncheck import collect
from tests.conftest import ROOT

SNAPSHOT_TOPIC_SUFFIX = ".sessions"


@dataclass(frozen=True)
class Topics:
    """Unique names per test so tests never see each other's records."""

    bootstrap: str
    suffix: str = field(default_factory=lambda: uuid.uuid4().hex[:10])

    @property
    def input(self) -> str:
        return f"it.{self.suffix}.events"

    @property
    def snapshots(self) -> str:
        return f"it.{self.suffix}{SNAPSHOT_TOPIC_SUFFIX}"

    @property
    def dlq(self) -> str:
        return f"it.{self.suffix}.dlq"

    @property
    def group(self) -> str:
        return f"it-{self.suffix}"

    @property
    def changelog(self) -> str:
        return f"{self.group}.{self.input}.changelog"

    def worker_env(self, http_port: int, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("WORKER_")}
        env.update(
            WORKER_BOOTSTRAP_SERVERS=self.bootstrap,
            WORKER_INPUT_TOPIC=self.input,
            WORKER_SNAPSHOT_TOPIC=self.snapshots,
            WORKER_DLQ_TOPIC=self.dlq,
            WORKER_GROUP_ID=self.group,
            WORKER_HTTP_PORT=str(http_port),
            WORKER_HTTP_HOST="127.0.0.1",
            WORKER_LOG_FORMAT="json",
            WORKER_PUBLISH_INTERVAL_S="0.5",
            # Three publishes per checkpoint: crashes land between them too.
            WORKER_COMMIT_INTERVAL_S="1.5",
        )
        env.update(extra)
        return env


async def create_topic(bootstrap: str, name: str, partitions: int) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, partitions, 1)])
    finally:
        await admin.close()


Record = tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]


async def produce(bootstrap: str, topic: str, records: Iterable[Record]) -> int:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    await producer.start()
    count = 0
    try:
        for key, value, headers in records:
            await producer.send(topic, value=value, key=key, headers=headers)
            count += 1
        await producer.flush()
    finally:
        await producer.stop()
    return count


async def produce_in_chunks(
    topics: Topics, events: Sequence[Mapping[str, Any]], chunks: int, pause_s: float
) -> None:
    """Produce `events` to the input topic in `chunks` parts, pausing between them."""
    size = max(1, len(events) // chunks)
    for i in range(0, len(events), size):
        await produce(topics.bootstrap, topics.input, event_records(events[i : i + size]))
        await asyncio.sleep(pause_s)


def event_records(events: Iterable[Mapping[str, Any]]) -> list[Record]:
    return [(e["sessionId"].encode(), orjson.dumps(e), []) for e in events]


@dataclass
class ConsumedRecord:
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: dict[str, bytes]
    timestamp: int = 0
    """The record's Kafka timestamp (ms): for snapshots, when the worker published it."""


async def read_all(bootstrap: str, topic: str) -> list[ConsumedRecord]:
    """Every record currently in `topic`, all partitions, from the beginning."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False
    )
    await consumer.start()
    try:
        partitions = consumer.partitions_for_topic(topic)
        if partitions is None:
            await consumer._client.force_metadata_update()  # a fresh topic
            partitions = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        if not tps:
            return []
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        found: list[ConsumedRecord] = []
        remaining = {tp for tp in tps if ends[tp] > 0}
        while remaining:
            batches = await consumer.getmany(*remaining, timeout_ms=1000)
            for tp, records in batches.items():
                found.extend(
                    ConsumedRecord(
                        tp.partition, r.offset, r.key, r.value, dict(r.headers), r.timestamp
                    )
                    for r in records
                )
            for tp in list(remaining):
                if await consumer.position(tp) >= ends[tp]:
                    remaining.discard(tp)
        if topic.endswith(SNAPSHOT_TOPIC_SUFFIX):  # for the end-of-run SDK conformance check
            collect(record.value for record in found)
        return found
    finally:
        await consumer.stop()


def collect_snapshots(topics: Topics) -> None:
    """Read the whole snapshot topic of a finished test, so the SDK conformance check sees
    every snapshot published, not only those the test read. In a thread of its own: it
    runs in a fixture's teardown, outside the test's event loop."""
    with ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, read_all(topics.bootstrap, topics.snapshots)).result(60)


async def latest_snapshots(bootstrap: str, topic: str) -> dict[str, dict[str, Any]]:
    """What a downstream consumer of the compacted topic sees: last value per key."""
    latest: dict[str, dict[str, Any]] = {}
    for record in await read_all(bootstrap, topic):
        if record.key is not None and record.value is not None:
            latest[record.key.decode()] = orjson.loads(record.value)
    return latest


async def wait_for(
    probe: Callable[[], Any], timeout_s: float, interval_s: float = 0.5, what: str = "condition"
) -> Any:
    """Poll an async probe until it returns a truthy value; fail with `what` on timeout."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        last = await probe()
        if last:
            return last
        await asyncio.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}; last: {last!r:.2000}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def http_get(port: int, path: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return 0, b""


class WorkerProcess:
    """`python -m worker run` as a real subprocess, logs captured to a file."""

    def __init__(self, env: Mapping[str, str], log_path: Path, args: Iterable[str] = ()) -> None:
        self.port = int(env["WORKER_HTTP_PORT"])
        self.log_path = log_path
        self._log = log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "worker", "run", *args],
            env=dict(env),
            cwd=ROOT,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    async def wait_ready(self, timeout_s: float = 60) -> None:
        async def ready() -> bool:
            if self.process.poll() is not None:
                raise AssertionError(
                    f"worker exited early ({self.process.returncode}):\n{self.logs()}"
                )
            return http_get(self.port, "/readyz")[0] == 200

        await wait_for(ready, timeout_s, 0.2, "worker readiness")

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")[-6000:]

    def terminate(self, timeout_s: float = 15) -> int:
        """SIGTERM, wait; returns the exit code (fails the test if it does not stop in time)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise AssertionError(
                f"worker ignored SIGTERM for {timeout_s}s:\n{self.logs()}"
            ) from None

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()

    def close(self) -> None:
        self.kill()
        self._log.close()


def expected_totals(events: Iterable[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Totals computed straight from the spec (distinct seqNos and renditions), no worker code."""
    sources: dict[str, dict[int, Mapping[str, Any]]] = {}
    renditions: dict[str, dict[tuple[int, str], tuple[float, int]]] = {}
    created: dict[str, int] = {}
    last_seen: dict[str, int] = {}
    for e in events:
        sid = e["sessionId"]
        created[sid] = min(created.get(sid, e["timestamp"]), e["timestamp"])
        if e["type"] == "segment.ingested":
            sources.setdefault(sid, {})[e["seqNo"]] = e
            last_seen[sid] = max(last_seen.get(sid, 0), e["timestamp"])
        elif e["type"] == "segment.transcoded":
            for r in e["renditions"]:
                renditions.setdefault(sid, {})[(e["seqNo"], r["name"])] = (
                    e["duration"],
                    r["bytes"],
                )
    result: dict[str, dict[str, Any]] = {}
    for sid, first in created.items():
        src = sources.get(sid, {})
        out = renditions.get(sid, {})
        totals: dict[str, Any] = {
            "sourceSegments": len(src),
            "sourceSegmentsDuration": sum(round(s["duration"] * 1e6) for s in src.values()) / 1e6,
            "sourceBytes": sum(s["bytes"] for s in src.values()),
            "transcodedSegments": len(out),
            "transcodedSegmentsDuration": sum(round(d * 1e6) for d, _ in out.values()) / 1e6,
            "transcodedBytes": sum(b for _, b in out.values()),
            "createdAt": first,
        }
        if sid in last_seen:
            totals["lastSeen"] = last_seen[sid]
        result[sid] = totals
    return result


def totals_of(session: Mapping[str, Any]) -> dict[str, Any]:
    keys = (
        "sourceSegments",
        "sourceSegmentsDuration",
        "sourceBytes",
        "transcodedSegments",
        "transcodedSegmentsDuration",
        "transcodedBytes",
        "createdAt",
        "lastSeen",
    )
    return {k: session[k] for k in keys if k in session}
