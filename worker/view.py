"""Live terminal view of a worker: full-screen rich table, or plain lines when not a TTY.

Three layers, so the picture is testable without a worker or a terminal:
`read_worker` copies what the view needs out of a running Worker (a `Reading`),
`ViewSampler` turns readings into `Frame`s and keeps the small bounded rate history behind
the sparklines (the core state keeps no history), and `render_frame` / `plain_lines` draw a
frame for a given terminal size.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import time
from collections import deque
from collections.abc import Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Final, TextIO

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from worker.health import evaluate_issues
from worker.metrics import ExportedValues
from worker.rules import Rules
from worker.state import SessionState

if TYPE_CHECKING:
    from worker.app import Worker

REFRESH_S: Final = 1.0
PLAIN_EVERY_S: Final = 5.0
PLAIN_ROWS: Final = 20
SPARK_WIDTH: Final = 12
"""Rate samples kept per session: the last ~12 s at one sample per refresh."""
NARROW_SPARK: Final = 8
"""Sparkline width below `WIDE` columns, so both fit in 80."""
TRACKED_SESSIONS: Final = 200
"""History is kept for at most this many of the most active sessions (bounded memory)."""
THROUGHPUT_SAMPLES: Final = 5
SPARKS: Final = "▁▂▃▄▅▆▇█"
CHROME_LINES: Final = 4
"""Lines around the table rows: two header lines, the column titles, one footer."""
MAX_ALERTS: Final = 3
"""Unhealthy sessions whose issues get a full line under the table, most active first."""
WIDE: Final = 110
"""From this width the table also has name and issues columns."""


@dataclass(frozen=True, slots=True)
class Reading:
    """A copy of what the view shows, taken from the worker on its event loop."""

    sessions: Sequence[SessionState]
    rules: Rules
    now_ms: int
    """The worker's last publish clock: issues are evaluated as of the last snapshots."""
    events_folded: int
    lag: int | None
    partitions: int
    ready: bool
    dead_letters: int = 0
    exported: Mapping[str, ExportedValues] = field(default_factory=dict)
    """Per session, the numbers of its latest snapshot (the metrics collector's)."""


@dataclass(frozen=True, slots=True)
class Row:
    session_id: str
    name: str
    healthy: bool | None
    ended: bool
    issues: tuple[str, ...]
    source_segments: int
    transcoded_segments: int
    ingest_rate: float
    outgoing_rate: float
    history: tuple[float, ...]
    """Ingest rate samples, oldest first."""
    out_history: tuple[float, ...]
    """Outgoing rate samples, oldest first."""


@dataclass(frozen=True, slots=True)
class Frame:
    rows: list[Row]
    """The most active sessions first; at most the number asked for."""
    sessions: int
    unhealthy: int
    events_folded: int
    events_per_s: float
    lag: int | None
    partitions: int
    ready: bool
    dead_letters: int
    clock: str
    alerts: tuple[tuple[str, str], ...] = ()
    """(session id, its issues) of the most active unhealthy sessions, shown or not."""
    logs: tuple[str, ...] = ()


def _activity(state: SessionState) -> int:
    return state.last_activity


@dataclass
class ViewSampler:
    """Turns readings into frames; owns the sparkline history and the throughput window."""

    history: dict[str, deque[tuple[float, float]]] = field(default_factory=dict)
    """(ingest, outgoing) rate samples per tracked session."""
    _throughput: deque[tuple[float, int]] = field(
        default_factory=lambda: deque(maxlen=THROUGHPUT_SAMPLES)
    )

    def sample(self, reading: Reading, rows: int, monotonic_s: float) -> Frame:
        """A frame of the `rows` most recently active sessions; call once per refresh."""
        tracked = heapq.nlargest(max(rows, TRACKED_SESSIONS), reading.sessions, key=_activity)
        history: dict[str, deque[tuple[float, float]]] = {}
        for state in tracked:
            points = self.history.get(state.session_id) or deque(maxlen=SPARK_WIDTH)
            e = reading.exported.get(state.session_id)
            points.append((e.ingest_rate, e.outgoing_rate) if e else (0.0, 0.0))
            history[state.session_id] = points
        self.history = history  # sessions no longer tracked drop their history here
        self._throughput.append((monotonic_s, reading.events_folded))
        (t0, n0), (t1, n1) = self._throughput[0], self._throughput[-1]
        rate = (n1 - n0) / (t1 - t0) if t1 > t0 else 0.0
        exported = reading.exported
        sick = [
            s
            for s in reading.sessions
            if (e := exported.get(s.session_id)) is not None and e.is_healthy is False
        ]
        alerts = tuple(
            (s.session_id, "; ".join(evaluate_issues(s, reading.now_ms, reading.rules) or ()))
            for s in heapq.nlargest(MAX_ALERTS, sick, key=_activity)
        )
        return Frame(
            rows=[_row(s, reading, history[s.session_id]) for s in tracked[:rows]],
            sessions=len(reading.sessions),
            unhealthy=len(sick),
            events_folded=reading.events_folded,
            events_per_s=max(0.0, rate),
            lag=reading.lag,
            partitions=reading.partitions,
            ready=reading.ready,
            dead_letters=reading.dead_letters,
            clock=time.strftime("%H:%M:%S"),
            alerts=alerts,
        )


def _row(state: SessionState, reading: Reading, history: deque[tuple[float, float]]) -> Row:
    e = reading.exported.get(state.session_id)
    healthy = e.is_healthy if e else None
    issues = evaluate_issues(state, reading.now_ms, reading.rules) if healthy is False else None
    name = state.meta.name
    return Row(
        session_id=state.session_id,
        name="" if name is None else str(name),
        healthy=healthy,
        ended=state.ended_at is not None,
        issues=tuple(issues or ()),
        source_segments=e.source_segments if e else state.source_segments,
        transcoded_segments=e.transcoded_segments if e else state.transcoded_segments,
        ingest_rate=e.ingest_rate if e else 0.0,
        outgoing_rate=e.outgoing_rate if e else 0.0,
        history=tuple(i for i, _ in history),
        out_history=tuple(o for _, o in history),
    )


def sparkline(values: Sequence[float], width: int = SPARK_WIDTH) -> str:
    """Bars scaled to the largest value shown; zero is a blank, so a stall reads as a gap."""
    values = list(values)[-width:]
    peak = max(values, default=0.0)
    bars = "".join(
        " " if v <= 0 or peak <= 0 else SPARKS[min(len(SPARKS) - 1, int(v / peak * len(SPARKS)))]
        for v in values
    )
    return bars.rjust(width)


def _mbps(bytes_per_s: float) -> str:
    return f"{bytes_per_s * 8 / 1e6:.2f}"


def _health(row: Row) -> Text:
    if row.healthy is None:
        return Text("ended" if row.ended else "idle", style="dim")
    return Text("ok", style="green") if row.healthy else Text("UNHEALTHY", style="bold red")


def header_lines(frame: Frame) -> tuple[Text, Text]:
    ready = Text("ready", style="green") if frame.ready else Text("not ready", style="yellow")
    first = Text("session-worker", style="bold").append("  ").append_text(ready)
    first.append(f"  partitions {frame.partitions}  sessions {frame.sessions}")
    if frame.unhealthy:
        first.append("  ").append(f"{frame.unhealthy} unhealthy", style="bold red")
    lag = "?" if frame.lag is None else f"{frame.lag:,}"
    second = Text(f"{frame.events_per_s:,.0f} ev/s  lag {lag}  folded {frame.events_folded:,}")
    if frame.dead_letters:
        second.append("  ").append(f"dead letters {frame.dead_letters:,}", style="yellow")
    second.append(f"  {frame.clock}", style="dim")
    return first, second


def render_frame(frame: Frame, width: int, height: int) -> RenderableType:
    """The whole screen for a `width` x `height` terminal; never taller than `height`.

    Below 110 columns the issues move out of the table into full-width alert lines.
    """
    wide = width >= WIDE
    alerts = () if wide else frame.alerts
    logs = frame.logs[-2:]
    room = height - CHROME_LINES - len(alerts) - len(logs)
    if room < 3:  # a tiny terminal: the table first
        alerts, logs, room = (), (), max(1, height - CHROME_LINES)
    table = Table(box=None, padding=(0, 1), pad_edge=False, expand=wide, header_style="bold")
    table.add_column("session", no_wrap=True, overflow="ellipsis", max_width=24, min_width=8)
    if wide:
        table.add_column("name", no_wrap=True, overflow="ellipsis", max_width=24)
    table.add_column("health", no_wrap=True, min_width=9)
    table.add_column("src/out", justify="right", no_wrap=True)
    spark = SPARK_WIDTH if wide else NARROW_SPARK
    table.add_column("in Mb/s", justify="right", no_wrap=True)
    table.add_column("", no_wrap=True, min_width=spark)
    table.add_column("out Mb/s", justify="right", no_wrap=True)
    table.add_column("", no_wrap=True, min_width=spark)
    if wide:
        table.add_column("issues", no_wrap=True, overflow="ellipsis", ratio=1)
    rows = frame.rows[:room]
    for row in rows:
        cells: list[RenderableType] = [row.session_id]
        if wide:
            cells.append(row.name)
        cells += [
            _health(row),
            f"{row.source_segments}/{row.transcoded_segments}",
            _mbps(row.ingest_rate),
            Text(sparkline(row.history, spark), style="cyan"),
            _mbps(row.outgoing_rate),
            Text(sparkline(row.out_history, spark), style="magenta"),
        ]
        if wide:
            cells.append(Text("; ".join(row.issues), style="yellow"))
        table.add_row(*cells)
    hidden = frame.sessions - len(rows)
    hidden_unhealthy = frame.unhealthy - sum(1 for r in rows if r.healthy is False)
    footer = Text(f"+{hidden} more sessions  " if hidden > 0 else "", style="dim")
    if hidden_unhealthy > 0:
        footer.append(f"{hidden_unhealthy} unhealthy not shown  ", style="red")
    footer.append("Ctrl-C stops", style="dim")
    first, second = header_lines(frame)
    parts: list[RenderableType] = [_one_line(first), _one_line(second), table, _one_line(footer)]
    for session_id, issues in alerts:
        line = Text().append("! ", style="bold red").append(session_id, style="bold")
        line.append(f"  {issues}", style="yellow")
        parts.append(_one_line(line))
    parts += [_one_line(Text(line, style="dim")) for line in logs]
    return Group(*parts)


def _one_line(text: Text) -> Text:
    text.no_wrap = True
    text.overflow = "ellipsis"
    return text


def plain_lines(frame: Frame, rows: int = PLAIN_ROWS) -> list[str]:
    """The frame as log-friendly lines (no colour, no cursor movement)."""
    first, second = header_lines(frame)
    lines = [f"{frame.clock} {first.plain} | {second.plain.rsplit('  ', 1)[0]}"]
    for row in frame.rows[:rows]:
        health = _health(row).plain
        issues = f" issues={'; '.join(row.issues)}" if row.issues else ""
        lines.append(
            f"{frame.clock}   {row.session_id} {health} src={row.source_segments} "
            f"out={row.transcoded_segments} in={_mbps(row.ingest_rate)}Mb/s "
            f"out={_mbps(row.outgoing_rate)}Mb/s{issues}"
        )
    return lines


class LogTail(logging.Handler):
    """Keeps the last few log lines for the view while it owns the screen."""

    def __init__(self, formatter: logging.Formatter, keep: int = 50) -> None:
        super().__init__()
        self.setFormatter(formatter)
        self.records: deque[logging.LogRecord] = deque(maxlen=keep)

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def lines(self, level: int = logging.NOTSET) -> tuple[str, ...]:
        return tuple(self.format(r) for r in list(self.records) if r.levelno >= level)


def read_worker(worker: Worker) -> Reading:
    """Copy the worker's numbers; run on the worker's loop so nothing changes meanwhile."""
    lag_samples = [s.value for m in worker.metrics.lag.collect() for s in m.samples]
    dead = [
        s.value
        for m in worker.metrics.dead_letters.collect()
        for s in m.samples
        if s.name.endswith("_total")
    ]
    return Reading(
        sessions=list(worker.store.live.values()),
        rules=worker.store.rules,
        now_ms=worker.runner.last_tick_ms,
        events_folded=worker.runner.events_folded,
        lag=round(sum(lag_samples)) if lag_samples else None,
        partitions=len(worker.runner.assigned),
        ready=worker.runner.ready,
        dead_letters=round(sum(dead)),
        exported=dict(worker.sessions.values),
    )


class LiveView:
    """Draws a worker until `stop` is set: full screen on a terminal, else plain lines."""

    def __init__(self, worker: Worker, out: TextIO, logs: LogTail | None = None) -> None:
        self._worker = worker
        self._console = Console(file=out)
        self._logs = logs
        self._sampler = ViewSampler()

    @property
    def is_terminal(self) -> bool:
        return self._console.is_terminal

    def frame(self, rows: int) -> Frame:
        frame = self._sampler.sample(read_worker(self._worker), rows, time.monotonic())
        if self._logs is not None:
            frame = replace(frame, logs=self._logs.lines()[-2:])
        return frame

    async def run(self, stop: asyncio.Event) -> None:
        if not self._console.is_terminal:
            await self._run_plain(stop)
            return
        console = self._console
        with Live(console=console, screen=True, auto_refresh=False) as live:
            while not stop.is_set():
                width, height = console.size
                live.update(render_frame(self.frame(height), width, height), refresh=True)
                with suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), REFRESH_S)

    async def _run_plain(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            with suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), PLAIN_EVERY_S)
            for line in plain_lines(self.frame(PLAIN_ROWS)):
                print(line, file=self._console.file, flush=True)
