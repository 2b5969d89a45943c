"""A store whose ticks feed a metrics collector, as the runner's ticks feed the worker's."""

from __future__ import annotations

from collections.abc import Mapping

from worker.metrics import SessionCollector
from worker.rules import Rules
from worker.store import SessionStore, TickResult


class PublishingStore(SessionStore):
    """`collector` (capped at `max_sessions`) holds the numbers every tick published."""

    def __init__(self, rules: Rules | None = None, max_sessions: int = 100) -> None:
        super().__init__(rules or Rules())
        self.collector = SessionCollector(lambda: list(self.live.values()), max_sessions)

    def tick(self, now: int | Mapping[int, int], slot: int = 0, slots: int = 1) -> TickResult:
        result = super().tick(now, slot, slots)
        self.collector.published(result)
        return result
