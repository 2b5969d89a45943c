"""Getting sessions back after a rebalance: park a revoked partition's sessions, take them
back if the partition returns with the committed offset they match, else restore the
partition from the changelog (the latest value of each key)."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass

from worker.changelog import ChangelogFormatError, decode_state
from worker.metrics import WorkerMetrics
from worker.runtime.ports import LOGGER_NAME, ChangelogReader
from worker.store import PartitionSessions, SessionStore

log = logging.getLogger(LOGGER_NAME)

CommittedReader = Callable[[Sequence[int]], Awaitable[dict[int, int | None]]]
"""The group's committed offsets of some partitions (`Source.committed`)."""


@dataclass(frozen=True, slots=True)
class Parked:
    """A revoked partition's sessions, kept until the rebalance ends: if the partition
    comes back and its committed offset is still the one they match, they are current."""

    committed: int | None
    sessions: PartitionSessions


class Recovery:
    """Parking, take-back and restore of partitions, into one store."""

    def __init__(
        self,
        store: SessionStore,
        metrics: WorkerMetrics,
        read_changelog: ChangelogReader,
        read_committed: CommittedReader,
        observe_time: Callable[[Mapping[int, int]], None],
    ) -> None:
        self.store = store
        self.metrics = metrics
        self.read_changelog = read_changelog
        self.read_committed = read_committed
        self._observe_time = observe_time
        """Tells the partition clock where a restored partition's time stands."""
        self._parked: dict[int, Parked] = {}
        """Partitions revoked by the rebalance in progress, with their sessions."""

    @property
    def parked(self) -> list[int]:
        return sorted(self._parked)

    def park(self, partitions: Sequence[int], committed: Mapping[int, int | None]) -> int:
        """Take the partitions' sessions out of the store; keep those of each partition
        whose committed offset (after a successful checkpoint) is in `committed`. Returns
        the live sessions taken."""
        taken = 0
        for partition, sessions in self.store.take_partitions(partitions).items():
            taken += len(sessions.live)
            if partition in committed:  # they match it: kept if it is unchanged on return
                self._parked[partition] = Parked(committed[partition], sessions)
        return taken

    async def take_back(
        self, partitions: Sequence[int], committed: dict[int, int | None]
    ) -> dict[int, int]:
        """Adopt the parked sessions of each partition that came back with the committed
        offset they match (nobody committed it since: they are current, no changelog read);
        the rest are dropped. Records the offsets read in `committed`. Returns the sessions
        kept per partition adopted."""
        parked, self._parked = self._parked, {}
        read = await self.read_committed(partitions) if partitions else {}
        committed.update(read)
        kept: dict[int, int] = {}
        for partition in partitions:
            entry = parked.get(partition)
            if entry is None or partition not in read:
                continue
            if read[partition] == entry.committed:
                self.store.adopt(entry.sessions)
                kept[partition] = len(entry.sessions)
        self.metrics.kept_sessions.inc(sum(kept.values()))
        return kept

    async def restore(self, partitions: Sequence[int]) -> int:
        """Load the latest changelog state of every session of `partitions`."""
        if not partitions:
            return 0
        by_partition = await self.read_changelog(partitions)
        count = sum(
            self._restore_partition(partition, latest) for partition, latest in by_partition.items()
        )
        self.metrics.restored_sessions.inc(count)
        return count

    def _restore_partition(self, partition: int, latest: Mapping[bytes, bytes]) -> int:
        count, newest = 0, -1
        for key, value in latest.items():
            try:
                entry = decode_state(value, partition)
            except ChangelogFormatError as error:
                log.error(
                    "unreadable changelog record skipped",
                    extra={"key": key.decode(errors="replace"), "error": str(error)},
                )
                continue
            self.store.restore(entry.state, entry.evicted_at)
            newest = max(newest, entry.state.last_activity)
            count += 1
        # Until its first records are folded, the partition's time is where the restored
        # sessions left off (not the wall clock: a backlog may wait).
        if newest >= 0:
            self._observe_time({partition: newest})
        return count
