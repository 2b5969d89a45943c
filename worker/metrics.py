"""Every Prometheus metric of the worker, on a registry passed in (tests use a fresh one).

Per-session series come from `SessionCollector`, which reads the live store at scrape time,
so a session's series vanish the moment it is evicted or its partition is revoked.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable, Iterator
from typing import Final

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from worker.state import SessionState

PREFIX: Final = "session_worker"
RECORDING_STATES: Final = ("waiting", "ready", "failed", "deleted", "none")
LATENCY_BUCKETS: Final = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    1.5,
    2.0,
    3.0,
    5.0,
    10.0,
    30.0,
)


class WorkerMetrics:
    """Worker-level instruments; labels are bounded sets (event types, reasons, partitions)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        p = PREFIX
        self.events = Counter(
            f"{p}_events_consumed", "Valid events folded, by type", ["type"], registry=registry
        )
        self.invalid = Counter(
            f"{p}_invalid_events", "Invalid records, by reason", ["reason"], registry=registry
        )
        self.dead_letters = Counter(
            f"{p}_dead_letters", "Records written to the dead-letter topic", registry=registry
        )
        self.tombstones = Counter(
            f"{p}_tombstones", "Input records with a null value, ignored", registry=registry
        )
        self.late_segments = Counter(
            f"{p}_late_segments",
            "Segments older than the dedupe window, not counted",
            registry=registry,
        )
        self.snapshots = Counter(
            f"{p}_snapshots_published", "Session snapshots acknowledged", registry=registry
        )
        self.changelog_records = Counter(
            f"{p}_changelog_records", "State changelog records acknowledged", registry=registry
        )
        self.checkpoint_failures = Counter(
            f"{p}_checkpoint_failures",
            "Checkpoints whose writes or commit failed transiently (retried)",
            registry=registry,
        )
        self.checkpoints = Counter(
            f"{p}_checkpoints", "Completed checkpoints (flush + commit)", registry=registry
        )
        self.publish_latency = Histogram(
            f"{p}_publish_latency_seconds",
            "Time to get a checkpoint's records acknowledged",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.commit_latency = Histogram(
            f"{p}_commit_latency_seconds",
            "Time to commit input offsets",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.end_to_end_latency = Histogram(
            f"{p}_event_to_snapshot_latency_seconds",
            "From an event's Kafka timestamp to the ack of the first snapshot that includes it",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.lag = Gauge(
            f"{p}_consumer_lag_records",
            "Records behind the end, per partition",
            ["partition"],
            registry=registry,
        )
        self.assigned = Gauge(
            f"{p}_assigned_partitions", "Input partitions owned now", registry=registry
        )
        self.sessions = Gauge(
            f"{p}_sessions_in_memory", "Live sessions held by this worker", registry=registry
        )
        self.rebalances = Counter(
            f"{p}_rebalances", "Partition assignments received", registry=registry
        )
        self.restore_duration = Histogram(
            f"{p}_state_restore_duration_seconds",
            "Time to rebuild state from the changelog",
            buckets=(0.1, 0.5, 1, 2, 5, 10, 30, 60, 120),
            registry=registry,
        )
        self.restored_sessions = Counter(
            f"{p}_restored_sessions", "Sessions rebuilt from the changelog", registry=registry
        )
        self.last_progress = Gauge(
            f"{p}_last_progress_timestamp_seconds",
            "When the consume loop last moved",
            registry=registry,
        )
        self.build = Info(f"{p}_build", "Version of the running worker", registry=registry)


class SessionCollector(Collector):
    """Per-session series computed from live state at scrape time, capped and newest first."""

    def __init__(
        self,
        sessions: Callable[[], Iterable[SessionState]],
        max_sessions: int,
    ) -> None:
        """`sessions` must return a copy (it may be called from a rendering thread)."""
        self._sessions = sessions
        self._max_sessions = max_sessions

    def describe(self) -> Iterator[Metric]:
        return iter(())  # dynamic series: skip the registration-time collect()

    def collect(self) -> Iterator[Metric]:
        p = f"{PREFIX}_session"
        labels = ["session_id", "parent_id", "project_id"]

        def counter(name: str, doc: str) -> CounterMetricFamily:
            return CounterMetricFamily(f"{p}_{name}", doc, labels=labels)

        def gauge(name: str, doc: str, extra: list[str] | None = None) -> GaugeMetricFamily:
            return GaugeMetricFamily(f"{p}_{name}", doc, labels=labels + (extra or []))

        source_segments = counter("source_segments", "Distinct source segments ingested")
        transcoded_segments = counter("transcoded_segments", "Distinct rendition segments produced")
        source_seconds = counter("source_duration_seconds", "Media seconds of source segments")
        transcoded_seconds = counter(
            "transcoded_duration_seconds", "Media seconds of rendition segments"
        )
        source_bytes = counter("source_bytes", "Bytes of source segments")
        transcoded_bytes = counter("transcoded_bytes", "Bytes of rendition segments")
        ingest_rate = gauge(
            "ingest_rate_bytes_per_second", "Source bytes per second, trailing window"
        )
        outgoing_rate = gauge(
            "outgoing_rate_bytes_per_second", "Rendition bytes per second, trailing window"
        )
        healthy = gauge("healthy", "1 healthy, 0 unhealthy; absent while inactive")
        issues = gauge("issues", "Number of current issues")
        last_seen = gauge("last_seen_timestamp_seconds", "Newest source segment timestamp")
        recording = gauge("recording_status", "1 for the current recording status", ["status"])
        left_out = GaugeMetricFamily(
            f"{PREFIX}_sessions_not_exported", "Live sessions beyond the export cap, left out"
        )

        everything = list(self._sessions())
        if len(everything) > self._max_sessions:
            chosen = heapq.nlargest(self._max_sessions, everything, key=lambda s: s.last_activity)
        else:
            chosen = everything
        left_out.add_metric([], len(everything) - len(chosen))
        for s in chosen:
            e = s.exported
            if e is None:
                continue  # not published yet: nothing consistent to show
            parent = s.meta.get("parent_id")
            project = s.meta.get("project_id")
            values = [s.session_id, parent[1] if parent else "", project[1] if project else ""]
            source_segments.add_metric(values, e.source_segments)
            transcoded_segments.add_metric(values, e.transcoded_segments)
            source_seconds.add_metric(values, e.source_duration_s)
            transcoded_seconds.add_metric(values, e.transcoded_duration_s)
            source_bytes.add_metric(values, e.source_bytes)
            transcoded_bytes.add_metric(values, e.transcoded_bytes)
            ingest_rate.add_metric(values, e.ingest_rate)
            outgoing_rate.add_metric(values, e.outgoing_rate)
            if e.is_healthy is not None:
                healthy.add_metric(values, 1.0 if e.is_healthy else 0.0)
            issues.add_metric(values, e.issue_count)
            if e.last_seen_ms is not None:
                last_seen.add_metric(values, e.last_seen_ms / 1000)
            record = s.meta.get("record")
            if record is not None and record[1] is True:
                current = s.recording[1] if s.recording else "waiting"
                for status in RECORDING_STATES:
                    recording.add_metric([*values, status], 1.0 if status == current else 0.0)
        yield from (
            source_segments,
            transcoded_segments,
            source_seconds,
            transcoded_seconds,
            source_bytes,
            transcoded_bytes,
            ingest_rate,
            outgoing_rate,
            healthy,
            issues,
            last_seen,
            recording,
            left_out,
        )
