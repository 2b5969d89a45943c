"""Every Prometheus metric of the worker, on a registry passed in (tests use a fresh one).

Per-session series come from `SessionCollector`, which owns the numbers each session's
latest snapshot published (updated from every tick) and pairs them with the live store at
scrape time, so a session's series vanish the moment it is evicted or its partition is
revoked. `/metrics` has one rendering of them, `SessionCollector.render`.
"""

from __future__ import annotations

import heapq
import threading
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from itertools import compress
from operator import add, attrgetter, is_
from typing import Any, Final, Literal, NamedTuple

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.core import HistogramMetricFamily, Metric
from prometheus_client.utils import floatToGoString

from worker.session import PUBLISHED_STATUS, RECORDING_STATUSES
from worker.state import SessionState
from worker.store import TickResult

PREFIX: Final = "session_worker"
"""The one application prefix of every metric name."""
SESSION_PREFIX: Final = f"{PREFIX}_session"
SESSION_LABELS: Final = ("session_id", "parent_id", "project_id")
RECORDING_STATES: Final = RECORDING_STATUSES
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


class BatchHistogram:
    """A histogram observed a batch of values at a time: per value one bisection, per batch
    one update under the lock. prometheus-client's Histogram takes its lock and scans the
    buckets once per value (~1 µs), and a checkpoint observes one value per published
    session (thousands). Exposed like a Histogram (`_bucket`, `_count`, `_sum`)."""

    def __init__(
        self, name: str, documentation: str, buckets: Iterable[float], registry: CollectorRegistry
    ) -> None:
        self._name, self._documentation = name, documentation
        self._bounds = [*sorted(buckets), float("inf")]
        self._labels = [floatToGoString(b) for b in self._bounds]  # type: ignore[no-untyped-call]
        self._counts = [0] * len(self._bounds)
        self._sum = 0.0
        self._lock = threading.Lock()  # /metrics reads it on the HTTP thread
        registry.register(self)

    def observe_many(self, values: Iterable[float]) -> None:
        bounds = self._bounds
        counts = [0] * len(bounds)
        total = 0.0
        for value in values:
            counts[bisect_left(bounds, value)] += 1  # a bucket counts values <= its bound
            total += value
        with self._lock:
            self._counts = [a + b for a, b in zip(self._counts, counts, strict=True)]
            self._sum += total

    def describe(self) -> list[Metric]:
        return [HistogramMetricFamily(self._name, self._documentation)]

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            counts, total = self._counts, self._sum
        cumulative, buckets = 0, []
        for label, count in zip(self._labels, counts, strict=True):
            cumulative += count
            buckets.append((label, cumulative))
        yield HistogramMetricFamily(
            self._name, self._documentation, buckets=buckets, sum_value=total
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
        self.unwritable = Counter(
            f"{p}_unwritable_records",
            "Output records given up for good (too large for the topic, refused as invalid); "
            "logged at ERROR, their input offsets still committed",
            ["topic_role", "reason"],
            registry=registry,
        )
        self.truncated_dead_letters = Counter(
            f"{p}_dead_letters_truncated",
            "Dead letters written with their value cut to fit the dead-letter topic",
            registry=registry,
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
            "Writes or commits that failed transiently (sent again by the next write)",
            registry=registry,
        )
        self.checkpoints = Counter(
            f"{p}_checkpoints",
            "Completed checkpoints (writes acked, offsets committed)",
            registry=registry,
        )
        self.publish_latency = Histogram(
            f"{p}_publish_latency_seconds",
            "Time to get one write's records acknowledged",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.commit_latency = Histogram(
            f"{p}_commit_latency_seconds",
            "Time to commit input offsets",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.end_to_end_latency = BatchHistogram(
            f"{p}_event_to_snapshot_latency_seconds",
            "From an event's Kafka timestamp to the ack of the first snapshot that includes it",
            LATENCY_BUCKETS,
            registry,
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
        self.input_partitions = Gauge(
            f"{p}_input_partitions",
            "Partitions of the input topic (sum of assigned over workers should equal it)",
            registry=registry,
        )
        self.sessions = Gauge(
            f"{p}_sessions_in_memory", "Live sessions held by this worker", registry=registry
        )
        self.timed_out = Counter(
            f"{p}_sessions_timed_out",
            "Sessions ended by the idle timeout (no event for WORKER_IDLE_TIMEOUT_S)",
            registry=registry,
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
        self.kept_sessions = Counter(
            f"{p}_kept_sessions",
            "Sessions kept in memory through a rebalance that gave their partition back",
            registry=registry,
        )
        self.last_progress = Gauge(
            f"{p}_last_progress_timestamp_seconds",
            "When the consume loop last moved",
            registry=registry,
        )
        self.build = Info(f"{p}_build", "Version of the running worker", registry=registry)


class ExportedValues(NamedTuple):
    """The numbers of a session's latest snapshot: metrics show exactly what was published."""

    source_segments: int
    transcoded_segments: int
    source_duration_s: float
    transcoded_duration_s: float
    source_bytes: int
    transcoded_bytes: int
    ingest_rate: float
    outgoing_rate: float
    is_healthy: bool | None
    issue_count: int
    last_seen_ms: int | None


def exported_values(session: dict[str, Any]) -> ExportedValues:
    return ExportedValues(
        session["sourceSegments"],
        session["transcodedSegments"],
        session["sourceSegmentsDuration"],
        session["transcodedSegmentsDuration"],
        session["sourceBytes"],
        session["transcodedBytes"],
        session["ingestRate"],
        session["outgoingRate"],
        session["isHealthy"],
        len(session.get("issues", ())),
        session.get("lastSeen"),
    )


@dataclass(frozen=True, slots=True)
class SessionSeries:
    """One per-session family: `name` after the `session_worker_session_` prefix."""

    name: str
    kind: Literal["counter", "gauge"]
    help: str
    value: Callable[[ExportedValues], float | None]
    """The sample value from a session's published numbers; None: no sample."""

    @property
    def family(self) -> str:
        return f"{SESSION_PREFIX}_{self.name}"

    @property
    def sample(self) -> str:
        """Counters are exposed with `_total` (and their HELP/TYPE lines use it too)."""
        return f"{self.family}_total" if self.kind == "counter" else self.family


SESSION_SERIES: Final = (
    SessionSeries(
        "source_segments",
        "counter",
        "Distinct source segments ingested",
        attrgetter("source_segments"),
    ),
    SessionSeries(
        "transcoded_segments",
        "counter",
        "Distinct rendition segments produced",
        attrgetter("transcoded_segments"),
    ),
    SessionSeries(
        "source_duration_seconds",
        "counter",
        "Media seconds of source segments",
        attrgetter("source_duration_s"),
    ),
    SessionSeries(
        "transcoded_duration_seconds",
        "counter",
        "Media seconds of rendition segments",
        attrgetter("transcoded_duration_s"),
    ),
    SessionSeries(
        "source_bytes", "counter", "Bytes of source segments", attrgetter("source_bytes")
    ),
    SessionSeries(
        "transcoded_bytes", "counter", "Bytes of rendition segments", attrgetter("transcoded_bytes")
    ),
    SessionSeries(
        "ingest_rate_bytes_per_second",
        "gauge",
        "Source bytes per second over the trailing rate window",
        attrgetter("ingest_rate"),
    ),
    SessionSeries(
        "outgoing_rate_bytes_per_second",
        "gauge",
        "Rendition bytes per second over the trailing rate window",
        attrgetter("outgoing_rate"),
    ),
    SessionSeries(
        "healthy",
        "gauge",
        "1 healthy, 0 unhealthy; absent while the session is not active (isHealthy null)",
        lambda e: None if e.is_healthy is None else float(e.is_healthy),
    ),
    SessionSeries("issues", "gauge", "Number of current health issues", attrgetter("issue_count")),
    SessionSeries(
        "last_seen_timestamp_seconds",
        "gauge",
        "Timestamp of the newest source segment (Unix seconds)",
        lambda e: None if e.last_seen_ms is None else e.last_seen_ms / 1000,
    ),
)
RECORDING_FAMILY: Final = f"{SESSION_PREFIX}_recording_status"
RECORDING_HELP: Final = "1 for the current recording status of a recorded session, else 0"
LEFT_OUT_FAMILY: Final = f"{PREFIX}_sessions_not_exported"
LEFT_OUT_HELP: Final = "Sessions with published values left out of /metrics by the export cap"


def session_labels(state: SessionState) -> tuple[str, str, str]:
    """session_id, parent_id, project_id ("" when unknown)."""
    meta = state.meta
    parent, project = meta.parent_id, meta.project_id
    return state.session_id, "" if parent is None else parent, "" if project is None else project


def recording_status(state: SessionState) -> str | None:
    """The recording status of a session that records (as its snapshot shows it), else None."""
    if state.meta.record is not True:
        return None
    if state.recording is None:
        return "waiting"
    status = state.recording[1]
    return PUBLISHED_STATUS.get(status, status)


JOIN_SESSIONS: Final = 500
"""Samples joined by one C call while rendering (0.1-0.4 ms of CPU each on this 2-core VM)."""


def _escape(value: str) -> str:
    if "\\" in value or '"' in value or "\n" in value:
        return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")
    return value


def _header(name: str, kind: str, help_text: str) -> str:
    return f"# HELP {name} {help_text}\n# TYPE {name} {kind}\n"


def _label_set(state: SessionState) -> str:
    """`{session_id="…",parent_id="…",project_id="…"} `: what follows a sample's name."""
    sid, parent, project = session_labels(state)
    return (
        f'{{session_id="{_escape(sid)}",parent_id="{_escape(parent)}",'
        f'project_id="{_escape(project)}"}} '
    )


def _samples(name: str, label_sets: list[str], values: list[float | None]) -> str:
    """One family's sample lines (none for a None value), built by C-level map and join,
    JOIN_SESSIONS at a time: no Python code runs per sample, and the rendering thread holds
    the GIL well under a millisecond per join, so the consume loop and the probes
    hardly wait for it."""
    if None in values:
        keep = [v is not None for v in values]
        label_sets, values = list(compress(label_sets, keep)), list(compress(values, keep))
    if not values:
        return ""
    separator = f"\n{name}"
    # str() of an int or float is what an f-string writes for it.
    parts = [
        separator.join(
            map(add, label_sets[i : i + JOIN_SESSIONS], map(str, values[i : i + JOIN_SESSIONS]))
        )
        for i in range(0, len(values), JOIN_SESSIONS)
    ]
    return name + separator.join(parts) + "\n"


def _recording_lines(current: str) -> str:
    """The recording family of one session as a %-template of its label set (4 times)."""
    return "".join(
        f'{RECORDING_FAMILY}%s,status="{status}"}} {1 if status == current else 0}\n'
        for status in RECORDING_STATES
    )


RECORDING_LINES: Final = {status: _recording_lines(status) for status in RECORDING_STATES}


@dataclass(frozen=True, slots=True)
class _Rendering:
    """A rendering and what it was made from, to reuse while nothing of it changed."""

    states: list[SessionState]
    exported: list[Any]
    left_out: int
    body: bytes

    def shows(self, states: list[SessionState], exported: list[Any]) -> bool:
        """The same session objects with the same published number objects, in order."""
        return (
            len(states) == len(self.states)
            and all(map(is_, states, self.states))
            and all(map(is_, exported, self.exported))
        )


class SessionCollector:
    """Per-session series: each live session's published numbers, capped, newest first.

    Owns the numbers (`values`): `published` records what each tick's snapshots said,
    eviction removes them, `retain` drops those of sessions that left with a rebalance.
    Sessions not published yet have no series. `render` writes the text exposition
    directly: ~10x faster than a prometheus-client Collector, and it allocates few GC-tracked
    objects (a full GC pass during a big scrape freezes the loop).
    """

    def __init__(self, sessions: Callable[[], Iterable[SessionState]], max_sessions: int) -> None:
        """`sessions` must return a copy: rendering may run in a rendering thread."""
        self._sessions = sessions
        self._max_sessions = max_sessions
        self.values: dict[str, ExportedValues] = {}
        """Per session, the numbers of its latest snapshot (only looked up while rendering)."""
        self._last: _Rendering | None = None

    def published(self, result: TickResult) -> None:
        """Take the numbers of a tick's snapshots; forget the sessions it evicted."""
        values = self.values
        for snapshot in result.snapshots:
            values[snapshot.session_id] = exported_values(snapshot.session)
        for state in result.evicted:
            values.pop(state.session_id, None)

    def retain(self, live: Iterable[str]) -> None:
        """Keep only the numbers of `live` sessions (after a rebalance: parked sessions that
        went elsewhere are dropped; those taken back keep their numbers)."""
        keep = set(live)
        for session_id in [s for s in self.values if s not in keep]:
            del self.values[session_id]

    def chosen(self) -> tuple[list[tuple[SessionState, ExportedValues]], int]:
        """The sessions to export with their numbers (the most recently active ones when
        there are more than the cap) and how many the cap left out; sessions never
        published are not candidates."""
        values = self.values
        published = [
            (s, v) for s in self._sessions() if (v := values.get(s.session_id)) is not None
        ]
        cap = self._max_sessions
        left_out = max(0, len(published) - cap)
        if not left_out:
            return published, 0
        if cap == 0:
            return [], left_out
        # The cap-th newest activity time, then a filter: no long sort in one C call, which
        # would hold the GIL (and freeze the event loop) for tens of ms with 100k sessions.
        threshold = heapq.nlargest(cap, [s.last_activity for s, _ in published])[-1]
        newer = [p for p in published if p[0].last_activity > threshold]
        tied = [p for p in published if p[0].last_activity == threshold]
        return newer + tied[: cap - len(newer)], left_out

    def render(self) -> bytes:
        """The per-session families as text exposition (format 0.0.4).

        The previous body is reused when the same sessions are chosen with the same
        published numbers (compared by identity: every publish stores new numbers), so
        scrapes between two publishes (a backlog publishes only at checkpoints) cost a few
        ms. A label or recording change is always published, so it shows with the session's
        next numbers. Otherwise the samples are joined in C (`_samples`): strings only, no
        per-sample tuples or dicts, so no GC passes. The reused body and its sessions are
        held until the next rendering.
        """
        chosen, left_out = self.chosen()
        states = [state for state, _ in chosen]
        # Read each session's numbers once, so all its families come from the same tick.
        exported = [values for _, values in chosen]
        last = self._last
        if last is not None and last.left_out == left_out and last.shows(states, exported):
            return last.body
        label_sets = [_label_set(state) for state in states]
        chunks: list[bytes] = []
        for series in SESSION_SERIES:
            name = series.sample
            values = list(map(series.value, exported))
            text = _header(name, series.kind, series.help) + _samples(name, label_sets, values)
            chunks.append(text.encode())
        lines = [_header(RECORDING_FAMILY, "gauge", RECORDING_HELP)]
        for label_set, current in zip(label_sets, map(recording_status, states), strict=True):
            if current is not None:
                opening = label_set[:-2]  # without "} "
                lines.append(RECORDING_LINES[current] % ((opening,) * len(RECORDING_STATES)))
        lines.append(_header(LEFT_OUT_FAMILY, "gauge", LEFT_OUT_HELP))
        lines.append(f"{LEFT_OUT_FAMILY} {left_out}\n")
        chunks.append("".join(lines).encode())
        body = b"".join(chunks)
        self._last = _Rendering(states, exported, left_out, body)
        return body
