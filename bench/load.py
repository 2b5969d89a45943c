"""Load generator: realistic segment events, pre-filled into a topic or offered live.

Traffic shape (per active session): one `session.started`, then a 2 s source segment and its
3-rendition transcode 200-700 ms later; ~3% of transcodes fail first (most then succeed on
a retry); one session in `churn_every` ends after 20-60 segments (with a recording update)
and is replaced by a new session, so the number of active sessions stays constant while
sessions come and go. Values average ~200 bytes; keys are UUID-like session ids.

    .venv/bin/python -m bench.load --bootstrap 127.0.0.1:49092 --topic t --live \
        --rate 20000 --seconds 60        # steady offered load (events/s)

Record partitions are computed with the Java-compatible murmur2 partitioner (what a keyed
producer does), and records are written with the batch API, which is ~10x cheaper per
record than `send()`: the generator must outrun the worker it feeds. A live run encodes
and partitions all of its records before it starts sending (`plan_live`), so that on two
cores the generator takes as little as possible from the worker; it reports its own CPU.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import resource
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from typing import Any, Final

import orjson
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.partitioner import murmur2

RENDITIONS: Final = (("720p", 3_000_000), ("480p", 1_600_000), ("360p", 800_000))
EVENTS_PER_SEGMENT: Final = 2.05
"""ingested + transcoded, plus the occasional failure and retry."""
SEGMENT_MS: Final = 2_000
BATCH_BYTES: Final = 512 * 1024
Rec = tuple[int, bytes, bytes]
"""(partition, key, value) of a record to send."""


@dataclass(slots=True)
class _Live:
    session_id: str
    index: int
    offset_ms: int
    """Phase of this session's segments within a segment period."""
    seq_no: int
    ends_after: int | None
    record: bool


class Traffic:
    """Deterministic event stream of `sessions` concurrently active sessions, in time order."""

    def __init__(
        self,
        sessions: int,
        seed: int = 11,
        churn_every: int = 8,
        renditions: tuple[tuple[str, int], ...] = RENDITIONS,
    ) -> None:
        self.sessions = sessions
        self._renditions = renditions
        self._rng = random.Random(seed)
        self._churn_every = churn_every
        self._created = 0
        self.session_ids: set[str] = set()

    def _new(self, slot_offset_ms: int) -> _Live:
        rng, index = self._rng, self._created
        self._created += 1
        ends = rng.randrange(20, 60) if index % self._churn_every == 0 else None
        sid = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        self.session_ids.add(sid)
        return _Live(sid, index, slot_offset_ms, 0, ends, index % 3 == 0)

    def _started(self, live: _Live, at: int) -> dict[str, Any]:
        i = live.index
        return {
            "type": "session.started",
            "sessionId": live.session_id,
            "timestamp": at,
            "name": f"Live show #{i}",
            "parentId": f"stream-{i % 997:04d}",
            "projectId": f"project-{i % 31}",
            "playbackId": f"pb{i:08d}",
            "record": live.record,
            "kind": "stream",
            "profiles": [
                {"name": n, "width": 1280, "height": 720, "bitrate": b, "fps": 30, "gop": "2.0"}
                for n, b in self._renditions
            ],
        }

    def _segment(self, live: _Live, at: int) -> list[tuple[int, dict[str, Any]]]:
        rng = self._rng
        sid, seq = live.session_id, live.seq_no
        duration = round(SEGMENT_MS / 1000 + rng.uniform(-0.02, 0.02), 3)
        size = rng.randrange(600_000, 1_400_000)
        out: list[tuple[int, dict[str, Any]]] = [
            (
                at,
                {
                    "type": "segment.ingested",
                    "sessionId": sid,
                    "timestamp": at,
                    "seqNo": seq,
                    "duration": duration,
                    "bytes": size,
                },
            )
        ]
        delay = rng.randrange(200, 700)
        transcoded = {
            "type": "segment.transcoded",
            "sessionId": sid,
            "seqNo": seq,
            "duration": duration,
            "transcodeTime": round(delay / 1000 * rng.uniform(0.6, 0.9), 3),
            "renditions": [
                {"name": n, "bytes": size * b // 4_000_000} for n, b in self._renditions
            ],
        }
        if rng.random() < 0.03:
            failed_at = at + delay
            out.append(
                (
                    failed_at,
                    {
                        "type": "segment.failed",
                        "sessionId": sid,
                        "timestamp": failed_at,
                        "seqNo": seq,
                        "error": "GPU ran out of memory",
                    },
                )
            )
            if rng.random() < 0.8:
                out.append((failed_at + delay, {**transcoded, "timestamp": failed_at + delay}))
        else:
            out.append((at + delay, {**transcoded, "timestamp": at + delay}))
        return out

    def _ended(self, live: _Live, at: int) -> list[tuple[int, dict[str, Any]]]:
        sid = live.session_id
        out: list[tuple[int, dict[str, Any]]] = [
            (at, {"type": "session.ended", "sessionId": sid, "timestamp": at})
        ]
        if live.record:
            body = {
                "type": "recording.updated",
                "sessionId": sid,
                "timestamp": at + 1,
                "status": "ready",
                "recordingUrl": f"https://recordings.example/{sid}/index.m3u8",
                "mp4Url": f"https://recordings.example/{sid}/video.mp4",
            }
            out.append((at + 1, body))
        return out

    def events(self, start_ms: int) -> Iterator[tuple[int, bytes, bytes]]:
        """(timestamp ms, key, value) forever, in timestamp order (within a few ms)."""
        slots = [self._new(round(i * SEGMENT_MS / self.sessions)) for i in range(self.sessions)]
        pending: list[tuple[int, dict[str, Any]]] = []
        round_no = 0
        while True:
            round_start = start_ms + round_no * SEGMENT_MS
            for slot, live in enumerate(slots):
                at = round_start + live.offset_ms
                if live.seq_no == 0:
                    pending.append((at - 50, self._started(live, at - 50)))
                if live.ends_after is not None and live.seq_no >= live.ends_after:
                    pending.extend(self._ended(live, at))
                    slots[slot] = self._new(live.offset_ms)
                    continue
                pending.extend(self._segment(live, at))
                live.seq_no += 1
            pending.sort(key=lambda item: item[0])
            horizon = round_start + SEGMENT_MS - 100  # later rounds start after this
            cut = next((i for i, (at, _) in enumerate(pending) if at >= horizon), len(pending))
            for at, body in pending[:cut]:
                yield at, body["sessionId"].encode(), orjson.dumps(body)
            del pending[:cut]
            round_no += 1


def partition_of(key: bytes, partitions: int) -> int:
    """The default (Java-compatible) partitioner of a keyed producer."""
    return int(murmur2(key) & 0x7FFFFFFF) % partitions


async def create_topic(bootstrap: str, topic: str, partitions: int, **config: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, partitions, 1, topic_configs=config)])
    finally:
        await admin.close()


class BatchWriter:
    """Keyed records to one topic through the producer's batch API (one batch per partition)."""

    def __init__(self, producer: AIOKafkaProducer, topic: str, partitions: int) -> None:
        self._producer = producer
        self._topic = topic
        self._partitions = partitions
        self._cache: dict[bytes, int] = {}
        self._batches: dict[int, Any] = {}
        self._futures: list[asyncio.Future[Any]] = []

    def partition(self, key: bytes) -> int:
        partition = self._cache.get(key)
        if partition is None:
            partition = self._cache[key] = partition_of(key, self._partitions)
        return partition

    async def add(self, key: bytes, value: bytes, timestamp_ms: int | None = None) -> None:
        ts = time.time_ns() // 1_000_000 if timestamp_ms is None else timestamp_ms
        await self.write(((self.partition(key), key, value),), ts)

    async def write(self, records: Iterable[tuple[int, bytes, bytes]], timestamp_ms: int) -> None:
        """Append pre-partitioned records, all stamped `timestamp_ms` (integer epoch ms: the
        builder's docstring says float seconds, and it is wrong)."""
        batches, create = self._batches, self._producer.create_batch
        for partition, key, value in records:
            batch = batches.get(partition)
            if batch is None:
                batch = batches[partition] = create()
            if batch.append(key=key, value=value, timestamp=timestamp_ms) is None:
                await self._send(partition)
                batch = batches[partition] = create()
                batch.append(key=key, value=value, timestamp=timestamp_ms)

    async def _send(self, partition: int) -> None:
        batch = self._batches.pop(partition)
        batch.close()
        self._futures.append(
            await self._producer.send_batch(batch, self._topic, partition=partition)
        )
        if len(self._futures) > 64:
            await asyncio.gather(*self._futures)
            self._futures.clear()

    async def send_open(self) -> None:
        """Send every open batch without waiting for its acks (those are awaited 64 at a time,
        and by `flush`)."""
        for partition in list(self._batches):
            await self._send(partition)

    async def flush(self) -> None:
        await self.send_open()
        await asyncio.gather(*self._futures)
        self._futures.clear()


def producer(bootstrap: str) -> AIOKafkaProducer:
    return AIOKafkaProducer(
        bootstrap_servers=bootstrap, linger_ms=5, max_batch_size=BATCH_BYTES, acks=1
    )


@dataclass(frozen=True, slots=True)
class Prefilled:
    topic: str
    partitions: int
    events: int
    sessions: int
    """Distinct session ids in the topic (active ones plus the churned)."""
    value_bytes: int
    seconds: float


async def prefill(
    bootstrap: str, topic: str, partitions: int, events: int, sessions: int, end_ms: int
) -> Prefilled:
    """Write `events` events of `sessions` concurrent sessions, the newest stamped ~`end_ms`."""
    traffic = Traffic(sessions)
    span_ms = round(events / (sessions * EVENTS_PER_SEGMENT)) * SEGMENT_MS
    await create_topic(bootstrap, topic, partitions)
    started = time.perf_counter()
    client = producer(bootstrap)
    await client.start()
    writer = BatchWriter(client, topic, partitions)
    total = 0
    try:
        stream = traffic.events(end_ms - span_ms)
        for _ in range(events):
            at, key, value = next(stream)
            total += len(value)
            await writer.add(key, value, at)
        await writer.flush()
    finally:
        await client.stop()
    return Prefilled(
        topic,
        partitions,
        events,
        len(traffic.session_ids),
        total,
        time.perf_counter() - started,
    )


TICK_MS: Final = 10


@dataclass(frozen=True, slots=True)
class LiveRun:
    sent: int
    seconds: float
    """Wall time of the sending (the preparation excluded)."""
    cpu_s: float
    """This process's CPU time over the sending (user + system)."""
    late_ms_max: float
    """The furthest the sending fell behind its schedule (0: it kept up)."""
    payload_lag_ms: int
    """How far the payload timestamps lag the wall clock at the start (the preparation
    overran its estimate); 0 normally."""


def plan_live(rate: float, seconds: float, partitions: int, start_ms: int) -> list[list[Rec]]:
    """Every record of a live soak, encoded and partitioned ahead of time: element i is what
    falls due at `start_ms + i * TICK_MS`, as (partition, key, value)."""
    sessions = max(1, round(rate * SEGMENT_MS / 1000 / EVENTS_PER_SEGMENT))
    ticks: list[list[Rec]] = [[] for _ in range(max(1, round(seconds * 1000 / TICK_MS)))]
    cache: dict[bytes, int] = {}
    for at, key, value in Traffic(sessions, seed=23).events(start_ms):
        index = max(0, (at - start_ms) // TICK_MS)
        if index >= len(ticks):
            break
        partition = cache.get(key)
        if partition is None:
            partition = cache[key] = partition_of(key, partitions)
        ticks[index].append((partition, key, value))
    return ticks


def _preparation_ms(rate: float, seconds: float, partitions: int) -> int:
    """A generous estimate of `plan_live`'s wall time, from timing a small plan."""
    sample_s = min(seconds, 0.5)
    started = time.perf_counter()
    plan_live(rate, sample_s, partitions, 0)
    cost = (time.perf_counter() - started) / sample_s
    return round((cost * seconds * 1.5 + 0.5) * 1000)


async def offer_live(
    bootstrap: str,
    topic: str,
    partitions: int,
    rate: float,
    seconds: float,
    on_start: Callable[[], None] | None = None,
) -> LiveRun:
    """Produce `rate` events/s in real time for `seconds`; payload timestamps = send time.

    Every record is generated, encoded and partitioned before the sending starts (payload
    timestamps planned from an estimate of that preparation), so the sending costs only the
    batch API: one `append` per record, one `send_batch` per partition every 10 ms.
    `on_start` is called when the sending starts (the CLI prints a line)."""
    start_ms = time.time_ns() // 1_000_000 + _preparation_ms(rate, seconds, partitions)
    ticks = plan_live(rate, seconds, partitions, start_ms)
    client = producer(bootstrap)
    await client.start()
    writer = BatchWriter(client, topic, partitions)
    sent, late = 0, 0.0
    try:
        await asyncio.sleep(max(0.0, start_ms / 1000 - time.time()))
        lag_ms = max(0, time.time_ns() // 1_000_000 - start_ms)
        if on_start is not None:
            on_start()
        cpu_started = _cpu_s()
        started = time.perf_counter()
        for index, tick in enumerate(ticks):
            delay = started + index * TICK_MS / 1000 - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            else:
                late = max(late, -delay)
            if tick:  # Kafka timestamp: now (the produce time)
                await writer.write(tick, time.time_ns() // 1_000_000)
                await writer.send_open()
                sent += len(tick)
        await writer.flush()
        cpu_s = _cpu_s() - cpu_started
        wall = time.perf_counter() - started
    finally:
        await client.stop()
    return LiveRun(sent, wall, cpu_s, late * 1000, lag_ms)


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.load",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--bootstrap", default="127.0.0.1:9092")
    parser.add_argument("--topic", required=True)
    parser.add_argument("--partitions", type=int, default=6)
    parser.add_argument("--live", action="store_true", help="offer a steady load in real time")
    parser.add_argument("--rate", type=float, default=20_000, help="events/s (--live)")
    parser.add_argument("--seconds", type=float, default=60, help="duration (--live)")
    parser.add_argument("--events", type=int, default=2_000_000, help="prefill size")
    parser.add_argument("--sessions", type=int, default=10_000, help="prefill sessions")
    args = parser.parse_args()
    if args.live:
        run = asyncio.run(
            offer_live(
                args.bootstrap,
                args.topic,
                args.partitions,
                args.rate,
                args.seconds,
                on_start=lambda: print("started", flush=True),
            )
        )
        print(orjson.dumps(asdict(run)).decode())
        return
    done = asyncio.run(
        prefill(
            args.bootstrap,
            args.topic,
            args.partitions,
            args.events,
            args.sessions,
            time.time_ns() // 1_000_000,
        )
    )
    print(orjson.dumps(asdict(done)).decode())


if __name__ == "__main__":
    main()
