"""Live terminal view of a worker's sessions (rich); plain lines when stdout is not a TTY."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Final, TextIO

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from worker.state import SessionState

if TYPE_CHECKING:
    from worker.app import Worker

REFRESH_S: Final = 1.0
PLAIN_EVERY_S: Final = 5.0


def _rate(value: float) -> str:
    return f"{value * 8 / 1e6:6.2f} Mb/s"


def _health(state: SessionState) -> Text:
    exported = state.exported
    if exported is None or exported.is_healthy is None:
        return Text("ended" if state.ended_at is not None else "-", style="dim")
    return (
        Text("healthy", style="green")
        if exported.is_healthy
        else Text("UNHEALTHY", style="bold red")
    )


def sessions_by_activity(worker: Worker) -> list[SessionState]:
    return sorted(worker.store.live.values(), key=lambda s: s.last_activity, reverse=True)


def render_table(worker: Worker, rows: int, issues_by_id: dict[str, list[str]]) -> Group:
    sessions = sessions_by_activity(worker)
    consumed = worker.runner.events_folded
    header = Text(
        f"session-worker  partitions {len(worker.runner.assigned)}  sessions {len(sessions)}  "
        f"events {int(consumed)}  ready {'yes' if worker.runner.ready else 'no'}",
        style="bold",
    )
    table = Table(expand=True, pad_edge=False)
    for column, justify in (
        ("session", "left"),
        ("health", "left"),
        ("src", "right"),
        ("out", "right"),
        ("ingest", "right"),
        ("outgoing", "right"),
        ("issues", "left"),
    ):
        table.add_column(column, justify=justify, no_wrap=column != "issues")  # type: ignore[arg-type]
    for state in sessions[:rows]:
        e = state.exported
        table.add_row(
            state.session_id,
            _health(state),
            str(state.source_segments),
            str(state.transcoded_segments),
            _rate(e.ingest_rate if e else 0.0),
            _rate(e.outgoing_rate if e else 0.0),
            Text("; ".join(issues_by_id.get(state.session_id, [])), style="yellow"),
        )
    return Group(header, table)


class LiveView:
    def __init__(self, worker: Worker, out: TextIO) -> None:
        self._worker = worker
        self._console = Console(file=out)

    def _issues(self) -> dict[str, list[str]]:
        from worker.session import build_session  # noqa: PLC0415

        worker = self._worker
        found = {}
        for state in list(worker.store.live.values()):
            session = build_session(state, worker.runner.last_tick_ms, worker.store.rules)
            if session.get("issues"):
                found[state.session_id] = session["issues"]
        return found

    async def run(self, stop: asyncio.Event) -> None:
        if not self._console.is_terminal:
            await self._run_plain(stop)
            return
        rows = max(3, self._console.size.height - 6)
        with Live(console=self._console, refresh_per_second=2, screen=False) as live:
            while not stop.is_set():
                live.update(render_table(self._worker, rows, self._issues()))
                await asyncio.sleep(REFRESH_S)

    async def _run_plain(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await asyncio.sleep(PLAIN_EVERY_S)
            issues = self._issues()
            stamp = time.strftime("%H:%M:%S")
            for state in sessions_by_activity(self._worker)[:20]:
                e = state.exported
                health = (
                    "-"
                    if e is None or e.is_healthy is None
                    else ("ok" if e.is_healthy else "UNHEALTHY")
                )
                ingest = _rate(e.ingest_rate if e else 0.0).strip()
                print(
                    f"{stamp} {state.session_id} {health} src={state.source_segments} "
                    f"out={state.transcoded_segments} ingest={ingest} "
                    f"issues={issues.get(state.session_id, [])}",
                    file=self._console.file,
                    flush=True,
                )
