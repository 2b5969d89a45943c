"""Per-session metrics: values equal the published snapshot, the export cap, the recording
enum, eviction; read by parsing the one rendering with prometheus-client's text parser;
every metric is documented."""

from __future__ import annotations

import re
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from tests.unit.builders import (
    DEFAULT_RULES,
    ROOT,
    SID,
    T0,
    Json,
    decode,
    ended,
    ingested,
    recording,
    seg_ts,
    segments,
    started,
    transcoded,
)
from tests.unit.publishing import PublishingStore
from worker.metrics import (
    LATENCY_BUCKETS,
    LEFT_OUT_FAMILY,
    LEFT_OUT_HELP,
    PREFIX,
    RECORDING_FAMILY,
    RECORDING_HELP,
    RECORDING_STATES,
    SESSION_LABELS,
    SESSION_SERIES,
    BatchHistogram,
    SessionCollector,
    WorkerMetrics,
    recording_status,
    session_labels,
)
from worker.state import SessionState
from worker.store import SessionStore

LABELS = {"session_id": SID, "parent_id": "stream-1", "project_id": "project-1"}
DOCS = ROOT / "docs" / "metrics.md"


def apply_all(store: SessionStore, bodies: list[Json], partition: int = 0) -> None:
    for body in bodies:
        store.apply(decode(body), partition)


@pytest.fixture
def store() -> SessionStore:
    return PublishingStore(DEFAULT_RULES)


class Scrape:
    """The per-session part of /metrics over a store, read back by parsing its text."""

    def __init__(self, store: SessionStore, max_sessions: int) -> None:
        assert isinstance(store, PublishingStore)
        self.collector = SessionCollector(lambda: list(store.live.values()), max_sessions)
        self.collector.values = store.collector.values

    def text(self) -> str:
        return self.collector.render().decode()

    def families(self) -> dict[str, Metric]:
        return {f.name: f for f in text_string_to_metric_families(self.text())}

    def get_sample_value(self, name: str, labels: dict[str, str] | None = None) -> float | None:
        wanted = labels or {}
        for family in text_string_to_metric_families(self.text()):
            for sample in family.samples:
                if sample.name == name and sample.labels == wanted:
                    return float(sample.value)
        return None


def collector_registry(store: SessionStore, max_sessions: int = 100) -> Scrape:
    return Scrape(store, max_sessions)


def value(scrape: Scrape, name: str, labels: dict[str, str] | None = None) -> float | None:
    return scrape.get_sample_value(f"{PREFIX}_session_{name}", LABELS if labels is None else labels)


def live_session(store: SessionStore, **started_fields: Any) -> dict[str, Any]:
    """One healthy session with three segments, ticked: returns its published snapshot."""
    fields = {"parentId": "stream-1", "projectId": "project-1", **started_fields}
    apply_all(store, [started(**fields), *segments(3)])
    result = store.tick(seg_ts(3))
    (snapshot,) = result.snapshots
    return snapshot.session


def test_series_equal_the_published_snapshot(store: SessionStore) -> None:
    snapshot = live_session(store)
    registry = collector_registry(store)

    assert value(registry, "source_segments_total") == snapshot["sourceSegments"] == 3
    assert value(registry, "transcoded_segments_total") == snapshot["transcodedSegments"] == 9
    assert value(registry, "source_duration_seconds_total") == snapshot["sourceSegmentsDuration"]
    assert (
        value(registry, "transcoded_duration_seconds_total")
        == snapshot["transcodedSegmentsDuration"]
    )
    assert value(registry, "source_bytes_total") == snapshot["sourceBytes"]
    assert value(registry, "transcoded_bytes_total") == snapshot["transcodedBytes"]
    assert value(registry, "ingest_rate_bytes_per_second") == snapshot["ingestRate"] > 0
    assert value(registry, "outgoing_rate_bytes_per_second") == snapshot["outgoingRate"] > 0
    assert snapshot["isHealthy"] is True
    assert value(registry, "healthy") == 1.0
    assert value(registry, "issues") == len(snapshot["issues"]) == 0
    assert value(registry, "last_seen_timestamp_seconds") == snapshot["lastSeen"] / 1000
    assert registry.get_sample_value(f"{PREFIX}_sessions_not_exported") == 0


def test_values_stay_those_of_the_last_snapshot_until_the_next_tick(store: SessionStore) -> None:
    snapshot = live_session(store)
    registry = collector_registry(store)
    apply_all(store, segments(2, first=3))  # folded, not yet published

    assert value(registry, "source_segments_total") == snapshot["sourceSegments"] == 3
    store.tick(seg_ts(5))
    assert value(registry, "source_segments_total") == 5


def test_a_session_never_published_has_no_series(store: SessionStore) -> None:
    apply_all(store, [started(parentId="stream-1", projectId="project-1"), *segments(1)])
    registry = collector_registry(store)

    assert value(registry, "source_segments_total") is None
    assert registry.get_sample_value(f"{PREFIX}_sessions_not_exported") == 0


def test_unknown_parent_and_project_are_empty_labels(store: SessionStore) -> None:
    apply_all(store, segments(1))
    store.tick(seg_ts(1))
    registry = collector_registry(store)
    labels = {"session_id": SID, "parent_id": "", "project_id": ""}

    assert value(registry, "source_segments_total", labels) == 1


def test_an_unhealthy_session_counts_its_issues(store: SessionStore) -> None:
    live_session(store)
    stalled_at = seg_ts(3) + 30_000
    snapshot = store.tick(stalled_at).snapshots[0].session
    registry = collector_registry(store)

    assert snapshot["isHealthy"] is False
    assert value(registry, "healthy") == 0.0
    assert value(registry, "issues") == len(snapshot["issues"]) == 1
    assert value(registry, "ingest_rate_bytes_per_second") == 0


def test_healthy_is_absent_while_the_session_is_not_active(store: SessionStore) -> None:
    apply_all(store, [started(parentId="stream-1", projectId="project-1"), *segments(2)])
    apply_all(store, [ended(seg_ts(2))])
    snapshot = store.tick(seg_ts(2)).snapshots[0].session
    registry = collector_registry(store)

    assert snapshot["isHealthy"] is None
    assert value(registry, "healthy") is None
    assert value(registry, "source_segments_total") == 2


@pytest.mark.parametrize(
    ("updates", "current"),
    [
        ([], "waiting"),
        ([("ready", 1)], "ready"),
        ([("ready", 2), ("failed", 1)], "ready"),  # newest by timestamp wins
        ([("failed", 1), ("deleted", 2)], "none"),  # as published (session.md)
        ([("deleted", 1), ("none", 2)], "none"),
    ],
)
def test_recording_status_is_an_enum_of_four_series(
    store: SessionStore, updates: list[tuple[str, int]], current: str
) -> None:
    apply_all(store, [recording(status, seg_ts(3) + offset) for status, offset in updates])
    snapshot = live_session(store, record=True)
    registry = collector_registry(store)

    assert snapshot["recordingStatus"] == current
    assert value(registry, "recording_status", {**LABELS, "status": "deleted"}) is None
    for status in ("waiting", "ready", "failed", "none"):
        expected = 1.0 if status == current else 0.0
        assert value(registry, "recording_status", {**LABELS, "status": status}) == expected


def test_a_session_that_does_not_record_has_no_recording_series(store: SessionStore) -> None:
    live_session(store, record=False)
    registry = collector_registry(store)

    assert value(registry, "recording_status", {**LABELS, "status": "waiting"}) is None


def many_sessions(store: SessionStore, count: int) -> list[str]:
    """`count` published sessions; session i was last active at T0 + i seconds."""
    ids = [f"s-{i:03d}" for i in range(count)]
    for i, sid in enumerate(ids):
        apply_all(store, [started(T0 + i * 1000, sid=sid)])
    store.tick(T0 + count * 1000)
    return ids


def exported_ids(registry: Scrape) -> set[str]:
    family = registry.families()[f"{PREFIX}_session_source_segments"]
    return {sample.labels["session_id"] for sample in family.samples}


@pytest.mark.parametrize("cap", [0, 1, 3, 5, 8])
def test_the_cap_keeps_the_most_recently_active_and_counts_the_rest(
    store: SessionStore, cap: int
) -> None:
    ids = many_sessions(store, 5)
    registry = collector_registry(store, max_sessions=cap)

    assert exported_ids(registry) == set(ids[::-1][:cap])
    assert registry.get_sample_value(f"{PREFIX}_sessions_not_exported") == max(0, 5 - cap)


def test_an_evicted_session_leaves_no_series(store: SessionStore) -> None:
    apply_all(store, [started(parentId="stream-1", projectId="project-1"), *segments(2)])
    apply_all(store, [ended(seg_ts(2))])
    store.tick(seg_ts(2))
    registry = collector_registry(store)
    assert value(registry, "source_segments_total") == 2

    store.tick(seg_ts(2) + 20_000)  # rates decayed to 0: the final snapshot
    after_retention = seg_ts(2) + DEFAULT_RULES.retention_ms + 1
    assert [s.session_id for s in store.tick(after_retention).evicted] == [SID]
    assert SID not in registry.text()
    assert value(registry, "source_segments_total") is None


def test_a_revoked_partition_leaves_no_series(store: SessionStore) -> None:
    live_session(store)
    registry = collector_registry(store)
    store.take_partitions([0])

    assert SID not in registry.text()


def test_labels_are_escaped_and_unpublished_sessions_left_out(store: SessionStore) -> None:
    live_session(store, record=True)
    awkward = 'a "quoted" \\ back\nslash'
    apply_all(store, [started(sid="odd-1", parentId=awkward, projectId="p"), *segments(1)])
    store.tick(seg_ts(3))
    apply_all(store, [*segments(1, sid="unpublished")])
    scrape = Scrape(store, 100)

    text = scrape.text()
    assert "odd-1" in text
    assert "unpublished" not in text
    (odd,) = [
        s
        for s in scrape.families()[f"{PREFIX}_session_source_segments"].samples
        if s.labels["session_id"] == "odd-1"
    ]
    assert odd.labels["parent_id"] == awkward


def test_a_rebalance_keeps_only_the_numbers_of_sessions_still_owned(store: SessionStore) -> None:
    many_sessions(store, 3)
    assert isinstance(store, PublishingStore)
    store.take_partitions([0])
    store.collector.retain(store.live)
    assert store.collector.values == {}


def exposed_families(store: SessionStore) -> dict[str, str]:
    """Every family the worker exposes: name (as in the text format) -> type."""
    live_session(store, record=True)
    registry = CollectorRegistry()
    WorkerMetrics(registry)
    text = generate_latest(registry).decode() + collector_registry(store).text()
    return {
        family.name + ("_total" if family.type == "counter" else ""): family.type
        for family in text_string_to_metric_families(text)
        if not family.name.endswith("_created")  # prometheus-client's creation timestamps
    }


def test_metric_names_follow_the_prometheus_conventions(store: SessionStore) -> None:
    families = exposed_families(store)

    assert len(families) > 30
    for name, kind in families.items():
        assert name.startswith(f"{PREFIX}_"), name
        assert re.fullmatch(r"[a-z][a-z0-9_]*", name), name
        assert (kind == "counter") == name.endswith("_total"), name
        assert not re.search(r"_(ms|milliseconds|kb|mb|percent)(_|$)", name), f"base units: {name}"


def test_every_metric_is_documented_with_its_type(store: SessionStore) -> None:
    documented: dict[str, str] = {}
    for line in DOCS.read_text().splitlines():
        match = re.match(r"\|\s*`(session_worker_[a-z0-9_]+)`\s*\|\s*(\w+)\s*\|", line)
        if match:
            documented[match.group(1)] = match.group(2)
    exposed = {
        # An Info is exposed as a gauge named `*_info`; the docs call it what it is.
        name: "info" if kind == "gauge" and name.endswith("_info") else kind
        for name, kind in exposed_families(store).items()
    }
    assert documented == exposed


def test_the_cap_is_exact_when_sessions_were_last_active_at_the_same_time(
    store: SessionStore,
) -> None:
    for i in range(6):
        apply_all(store, [started(T0, sid=f"same-{i}")])
    store.tick(T0)
    registry = collector_registry(store, max_sessions=4)

    assert len(exported_ids(registry)) == 4
    assert registry.get_sample_value(f"{PREFIX}_sessions_not_exported") == 2


@pytest.mark.parametrize(
    "values",
    [
        [],
        [0.0, 0.005, 0.0051, 1.0, 1.2, 30.0, 31.0, 1e9],
        [0.3] * 7 + [2.5, 0.001],
    ],
)
def test_a_batch_histogram_exposes_what_a_histogram_observing_each_value_does(
    values: list[float],
) -> None:
    """Same buckets (a value equal to a bound counts in it), count and sum, over two batches;
    only the standard Histogram's `_created` sample is not there."""
    expected, batched = CollectorRegistry(), CollectorRegistry()
    reference = Histogram("latency_seconds", "doc", buckets=LATENCY_BUCKETS, registry=expected)
    histogram = BatchHistogram("latency_seconds", "doc", LATENCY_BUCKETS, batched)
    for value in values:
        reference.observe(value)
    half = len(values) // 2
    histogram.observe_many(values[:half])
    histogram.observe_many(values[half:])

    def samples(registry: CollectorRegistry) -> dict[tuple[str, str], float]:
        text = generate_latest(registry).decode()
        return {
            (s.name, s.labels.get("le", "")): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
            if not s.name.endswith("_created")
        }

    assert samples(batched) == pytest.approx(samples(expected))
    assert len(samples(batched)) == len(LATENCY_BUCKETS) + 3  # + Inf, count, sum


def reference_render(collector: SessionCollector) -> bytes:
    """The per-session families written sample by sample, the plain way (the first direct
    rendering), to hold the faster one to the same bytes."""
    chosen, left_out = collector.chosen()
    out = []
    for series in SESSION_SERIES:
        out.append(f"# HELP {series.sample} {series.help}\n# TYPE {series.sample} {series.kind}\n")
        for state, values in chosen:
            number = series.value(values)
            if number is not None:
                out.append(f"{series.sample}{{{reference_labels(state)}}} {number}\n")
    out.append(f"# HELP {RECORDING_FAMILY} {RECORDING_HELP}\n# TYPE {RECORDING_FAMILY} gauge\n")
    for state, _ in chosen:
        current = recording_status(state)
        if current is not None:
            for status in RECORDING_STATES:
                flag = 1 if status == current else 0
                labels = f'{reference_labels(state)},status="{status}"'
                out.append(f"{RECORDING_FAMILY}{{{labels}}} {flag}\n")
    out.append(f"# HELP {LEFT_OUT_FAMILY} {LEFT_OUT_HELP}\n# TYPE {LEFT_OUT_FAMILY} gauge\n")
    out.append(f"{LEFT_OUT_FAMILY} {left_out}\n")
    return "".join(out).encode()


def reference_labels(state: SessionState) -> str:
    def escape(text: str) -> str:
        return text.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")

    return ",".join(
        f'{name}="{escape(text)}"'
        for name, text in zip(SESSION_LABELS, session_labels(state), strict=True)
    )


def test_the_rendering_is_byte_for_byte_the_plain_one(store: SessionStore) -> None:
    live_session(store, record=True)
    odd = 'odd %s {x} "q" \\ \n'
    bodies = [
        started(sid="odd", parentId=odd, projectId="%d%%", record=True),
        ingested(0, sid="odd", duration=1.7, size=333_333),
        transcoded(0, sid="odd", duration=1.7),
        ingested(1, sid="odd", duration=2.05),
        recording("ready", seg_ts(1), sid="odd"),
        started(sid="bare"),  # no segment: no healthy and no last-seen sample
        started(sid="ended", record=True),
        ingested(0, sid="ended"),
        ended(seg_ts(1), sid="ended"),
    ]
    apply_all(store, bodies)
    store.tick(seg_ts(3))
    for cap in (100, 2):
        scrape = Scrape(store, cap)
        assert scrape.collector.render() == reference_render(scrape.collector)


def test_an_unchanged_store_reuses_the_rendering(store: SessionStore) -> None:
    live_session(store)
    scrape = collector_registry(store)
    first = scrape.collector.render()

    assert scrape.collector.render() is first
    apply_all(store, segments(2, first=3))  # folded, not yet published: same numbers
    assert scrape.collector.render() is first


def test_a_publish_renders_again(store: SessionStore) -> None:
    live_session(store)
    scrape = collector_registry(store)
    first = scrape.collector.render()
    apply_all(store, segments(2, first=3))
    store.tick(seg_ts(5))

    assert scrape.collector.render() is not first
    assert value(scrape, "source_segments_total") == 5


def test_a_revocation_after_a_rendering_removes_the_series(store: SessionStore) -> None:
    live_session(store)
    scrape = collector_registry(store)
    assert SID in scrape.text()
    store.take_partitions([0])

    assert SID not in scrape.text()


def test_a_fold_that_changes_the_capped_choice_renders_again(store: SessionStore) -> None:
    ids = many_sessions(store, 3)
    scrape = collector_registry(store, max_sessions=1)
    assert exported_ids(scrape) == {ids[2]}
    apply_all(store, [started(T0 + 10_000, sid=ids[0])])  # now the most recently active

    assert exported_ids(scrape) == {ids[0]}
