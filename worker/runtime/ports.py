"""What the runtime needs from the outside world: small Protocols the Kafka adapter (and
the test fakes) implement, the output topics, and the changelog reader's shape."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Final, Protocol

from worker.outbox import CheckpointTimings, InputRecord, Outbox
from worker.state import SessionState
from worker.store import TickResult

LOGGER_NAME: Final = "worker.runner"
"""The runtime's logger, one name for all its parts: the name log filters already know."""


class Source(Protocol):
    async def fetch(self, timeout_s: float) -> Sequence[InputRecord]: ...
    def backlog(self) -> int:
        """Records known to wait after what was fetched, over the assigned partitions."""
        ...

    def partition_backlog(self, partition: int) -> int | None:
        """Records known to wait after what was fetched from `partition` (no request); None
        while unknown (no fetch response since it was assigned)."""
        ...

    async def committed(self, partitions: Sequence[int]) -> dict[int, int | None]:
        """The group's committed offset of each partition, asked of the coordinator (None:
        never committed); a partition it could not tell is left out."""
        ...


class Sink(Protocol):
    async def open_partitions(self, partitions: Sequence[int]) -> None: ...
    async def close_partitions(self, partitions: Sequence[int]) -> None: ...
    async def checkpoint(self, outbox: Outbox) -> CheckpointTimings:
        """Write every record and commit the offsets; raise (and commit nothing) on failure.
        A record that can never be written is not a failure: it is left out and returned
        in `unwritten` (too-large dead letters are cut to fit and returned in `truncated`)."""
        ...


class TickObserver(Protocol):
    """Told what each tick published (the metrics collector keeps those numbers)."""

    def published(self, result: TickResult) -> None: ...
    def retain(self, live: Iterable[str]) -> None:
        """After a rebalance: only these sessions are still owned."""
        ...


@dataclass(frozen=True, slots=True)
class OutputTopics:
    snapshots: str
    changelog: str
    dead_letters: str


ChangelogRecords = dict[int, dict[bytes, bytes]]
"""The latest changelog value of each live session key, per partition (tombstoned keys absent)."""
ChangelogReader = Callable[[Sequence[int]], Awaitable[ChangelogRecords]]
"""Reads the changelog of some partitions (the restore's only input)."""
ChangelogEncoder = Callable[[SessionState, int | None, int | None], bytes]
Monotonic = Callable[[], float]
"""Seconds on a clock that never goes back (`time.monotonic`): what schedules judge."""
WallClockMs = Callable[[], int]
"""Milliseconds since the epoch: what sessions and latencies are judged at."""
