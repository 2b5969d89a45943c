"""The live view: frames from real session state, drawn on a fixed 80x24 console."""

from __future__ import annotations

import asyncio
import io
import logging
from dataclasses import replace
from functools import cache

import pytest
from rich.console import Console
from rich.segment import Segment

from tests.unit.builders import DEFAULT_RULES, T0, decode, failed, ingested, started, transcoded
from tests.unit.publishing import PublishingStore
from worker.app import Worker
from worker.demo import logs_into
from worker.logs import TextFormatter
from worker.settings import Settings
from worker.store import SessionStore
from worker.traffic import SyntheticTraffic
from worker.view import (
    SPARK_WIDTH,
    TRACKED_SESSIONS,
    Frame,
    LiveView,
    LogTail,
    Reading,
    ViewSampler,
    plain_lines,
    read_worker,
    render_frame,
    sparkline,
)


def reading(store: SessionStore, now: int, folded: int = 0, **fields: object) -> Reading:
    exported = store.collector.values if isinstance(store, PublishingStore) else {}
    values: dict[str, object] = {
        "exported": exported,
        "sessions": list(store.live.values()),
        "rules": store.rules,
        "now_ms": now,
        "events_folded": folded,
        "lag": 12,
        "partitions": 6,
        "ready": True,
        "dead_letters": 3,
    }
    values.update(fields)
    return Reading(**values)  # type: ignore[arg-type]


@cache
def traffic_frame(sessions: int = 30, seconds: int = 40, rows: int = 24) -> Frame:
    """Synthetic demo traffic folded second by second, sampled like the live view does."""
    store = PublishingStore(DEFAULT_RULES)
    traffic = SyntheticTraffic(sessions, start_ms=T0, seed=3, failure_rate=0.3)
    sampler = ViewSampler()
    folded = 0
    frame = None
    for second in range(1, seconds + 1):
        now = T0 + second * 1000
        for body in traffic.events_between(now - 1000, now):
            store.apply(decode(body), folded % 6)
            folded += 1
        store.tick(now)
        frame = sampler.sample(reading(store, now, folded), rows, float(second))
    assert frame is not None
    return frame


def draw(frame: Frame, width: int = 80, height: int = 24) -> tuple[Console, list[str]]:
    console = Console(
        width=width, height=height, record=True, file=io.StringIO(), color_system="truecolor"
    )
    console.print(render_frame(frame, width, height))
    return console, console.export_text().splitlines()


def styled(console: Console, frame: Frame, text: str) -> list[Segment]:
    lines = console.render_lines(render_frame(frame, 80, 24), pad=False)
    return [s for line in lines for s in line if s.text.strip() == text]


def test_the_frame_fits_an_80x24_terminal() -> None:
    frame = traffic_frame()
    _, lines = draw(frame)

    assert len(lines) <= 24
    assert all(len(line) <= 80 for line in lines)
    header = "\n".join(lines[:2])
    for expected in ("ready", "partitions 6", "sessions 30", "ev/s", "lag 12", "dead letters 3"):
        assert expected in header
    assert lines[2].split() == ["session", "health", "src/out", "in", "Mb/s", "out", "Mb/s"]
    assert any(f"+{30 - len(frame.rows[:17])} more sessions" in line for line in lines)


def test_rows_are_the_most_recently_active_sessions_first() -> None:
    frame = traffic_frame()
    store_order = [row.session_id for row in frame.rows]
    _, lines = draw(frame)
    shown = [line.split()[0] for line in lines[3:] if line.startswith("demo-")]

    assert shown == store_order[: len(shown)]
    assert len(shown) == 24 - 4 - len(frame.alerts)


def test_unhealthy_sessions_are_red_with_their_issues_spelled_out() -> None:
    frame = traffic_frame()
    assert frame.unhealthy > 0
    console, lines = draw(frame)

    unhealthy = styled(console, frame, "UNHEALTHY")
    healthy = styled(console, frame, "ok")
    assert unhealthy
    assert all(s.style and s.style.color and s.style.color.name == "red" for s in unhealthy)
    assert all(s.style and s.style.color and s.style.color.name == "green" for s in healthy)
    alerts = [line for line in lines if line.startswith("! ")]
    assert len(alerts) == min(3, frame.unhealthy)
    assert any("failed to transcode" in line for line in alerts)
    assert f"{frame.unhealthy} unhealthy" in lines[0]


def test_sparklines_show_each_sessions_ingest_and_outgoing_history() -> None:
    frame = traffic_frame()
    _, lines = draw(frame)

    assert all(len(row.history) == len(row.out_history) == SPARK_WIDTH for row in frame.rows)
    shown = {line.split()[0]: line for line in lines[3:20]}
    assert len(shown) == 17
    for row in frame.rows[:17]:
        ingest, outgoing = sparkline(row.history, 8), sparkline(row.out_history, 8)
        assert ingest.strip()
        assert outgoing.strip()
        assert f"{ingest}  " in shown[row.session_id]
        assert shown[row.session_id].rstrip().endswith(outgoing.rstrip())


def test_a_wide_terminal_shows_names_and_issues_in_the_table() -> None:
    frame = traffic_frame(rows=30)
    _, lines = draw(frame, width=140, height=40)

    assert lines[2].split()[:3] == ["session", "name", "health"]
    assert "issues" in lines[2]
    assert any("Live show #" in line for line in lines)
    assert not any(line.startswith("! ") for line in lines)  # issues are in the table
    assert any("UNHEALTHY" in line and "failed to transcode" in line for line in lines)


@pytest.mark.parametrize(("width", "height"), [(80, 8), (60, 12), (200, 50)])
def test_any_terminal_size_is_respected(width: int, height: int) -> None:
    frame = traffic_frame(rows=height)
    frame = replace(frame, logs=("a log line " * 30,))
    _, lines = draw(frame, width, height)

    assert 4 < len(lines) <= height
    assert all(len(line) <= width for line in lines)


def test_sparkline_scales_to_its_peak_and_shows_silence_as_a_gap() -> None:
    assert sparkline([0, 1, 2, 4], width=4) == " ▃▅█"
    assert sparkline([5, 5, 0, 0], width=4) == "██  "
    assert sparkline([3], width=4) == "   █"
    assert sparkline([], width=3) == "   "
    assert len(sparkline(list(range(50)))) == SPARK_WIDTH


def test_history_is_bounded_and_forgets_sessions_that_left() -> None:
    store = PublishingStore(DEFAULT_RULES)
    sampler = ViewSampler()
    for i in range(TRACKED_SESSIONS + 50):
        store.apply(decode(started(T0 + i, sid=f"s{i}")), 0)
    for tick in range(SPARK_WIDTH + 5):
        sampler.sample(reading(store, T0 + 1000), 10, float(tick))

    assert len(sampler.history) == TRACKED_SESSIONS
    assert all(len(points) == SPARK_WIDTH for points in sampler.history.values())
    assert "s0" not in sampler.history  # the least recently active are not tracked
    store.take_partitions([0])
    sampler.sample(reading(store, T0 + 1000), 10, 99.0)
    assert sampler.history == {}


def test_throughput_is_events_per_second_over_recent_samples() -> None:
    store = PublishingStore(DEFAULT_RULES)
    sampler = ViewSampler()
    assert sampler.sample(reading(store, T0, folded=0), 5, 0.0).events_per_s == 0
    sampler.sample(reading(store, T0, folded=1_000), 5, 1.0)
    frame = sampler.sample(reading(store, T0, folded=3_000), 5, 2.0)

    assert frame.events_per_s == pytest.approx(1_500)
    assert "1,500 ev/s" in draw(frame)[1][1]


def test_unknown_lag_and_an_unready_worker_are_shown_as_such() -> None:
    store = PublishingStore(DEFAULT_RULES)
    frame = ViewSampler().sample(reading(store, T0, lag=None, ready=False), 5, 0.0)
    _, lines = draw(frame)

    assert "not ready" in lines[0]
    assert "lag ?" in lines[1]
    assert "more sessions" not in lines[3]


def test_ended_and_waiting_sessions_are_neither_healthy_nor_unhealthy() -> None:
    store = PublishingStore(DEFAULT_RULES)
    store.apply(decode(started(T0, sid="waiting")), 0)
    for body in (started(T0, sid="gone"), ingested(0, sid="gone")):
        store.apply(decode(body), 0)
    store.apply(decode({"type": "session.ended", "sessionId": "gone", "timestamp": T0 + 10}), 0)
    store.tick(T0 + 20)
    frame = ViewSampler().sample(reading(store, T0 + 20), 5, 0.0)
    _, lines = draw(frame)

    by_id = {line.split()[0]: line.split()[1] for line in lines[3:5]}
    assert by_id == {"waiting": "idle", "gone": "ended"}


def test_plain_lines_carry_the_same_facts_without_escape_codes() -> None:
    store = PublishingStore(DEFAULT_RULES)
    bodies = [
        started(T0, sid="sick"),
        ingested(0, sid="sick"),
        transcoded(0, sid="sick"),
        failed(1, sid="sick", error="encoder crashed"),
    ]
    for body in bodies:
        store.apply(decode(body), 0)
    store.tick(T0 + 3_000)
    lines = plain_lines(ViewSampler().sample(reading(store, T0 + 3_000, folded=4), 5, 0.0))

    assert "sessions 1" in lines[0]
    assert "1 unhealthy" in lines[0]
    assert "lag 12" in lines[0]
    assert lines[1].split()[1:3] == ["sick", "UNHEALTHY"]
    assert "encoder crashed" in lines[1]
    assert "src=1 out=3" in lines[1]
    assert not any("\x1b" in line for line in lines)


async def test_the_view_degrades_to_plain_lines_when_not_a_terminal() -> None:
    worker = Worker(Settings(bootstrap_servers="127.0.0.1:1"))
    for body in (started(T0, sid="x"), ingested(0, sid="x")):
        worker.store.apply(decode(body), 0)
    worker.runner.events_folded = 2
    worker.runner.assigned = [0, 1]
    worker.metrics.lag.labels("0").set(5)
    worker.metrics.lag.labels("1").set(7)
    worker.metrics.dead_letters.inc(4)
    out = io.StringIO()
    stop = asyncio.Event()
    asyncio.get_running_loop().call_later(0.05, stop.set)

    try:
        await asyncio.wait_for(LiveView(worker, out).run(stop), 5)
    finally:  # never started, but their clients exist
        await worker.source.stop()
        await worker.sink.stop()

    first, second = out.getvalue().splitlines()
    assert "partitions 2" in first
    assert "lag 12" in first
    assert "dead letters 4" in first
    assert " x " in second
    snapshot = read_worker(worker)
    assert (snapshot.lag, snapshot.dead_letters, snapshot.partitions) == (12, 4, 2)


def test_log_lines_are_kept_for_the_screen_and_warnings_repeated_after(
    capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    tail = LogTail(TextFormatter(), keep=3)
    log = logging.getLogger("test.view")
    with logs_into(tail):
        log.warning("broker slow")
        log.info("serving")
    log.info("after")

    assert [line.split(maxsplit=2)[2] for line in tail.lines()] == [
        "test.view: broker slow",
        "test.view: serving",
    ]
    assert "broker slow" in capsys.readouterr().err
