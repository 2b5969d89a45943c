"""The in-memory set of sessions owned by this worker: fold, coalesce, expire. Pure, no I/O.

The runner feeds it events and calls `tick(nows)` once per publish interval (each session
judged at the `now` of its input partition, see worker/clock.py); `tick` returns the states
that changed (to persist), the evicted and forgotten ones, and the snapshots that visibly
changed, rendered by the injected renderer (worker/publisher.py): the store keeps state, it
does not know what a snapshot looks like.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from worker.clock import everywhere
from worker.events import Event
from worker.health import is_active
from worker.publisher import Rendered, Snapshot, render_snapshot
from worker.rules import Rules
from worker.state import SessionState, expire_windows, fold, new_session

__all__ = ["PartitionSessions", "Renderer", "SessionStore", "Snapshot", "TickResult", "slot_of"]


class Renderer(Protocol):
    def __call__(self, state: SessionState, now_ms: int, rules: Rules, /) -> Rendered: ...


@dataclass(slots=True)
class TickResult:
    snapshots: list[Snapshot] = field(default_factory=list)
    changed: list[SessionState] = field(default_factory=list)
    """States to write to the changelog (live or just evicted)."""
    evicted: list[SessionState] = field(default_factory=list)
    forgotten: list[SessionState] = field(default_factory=list)
    """Evicted sessions past their TTL: their changelog keys get tombstones."""
    timed_out: list[SessionState] = field(default_factory=list)
    """Sessions just ended by the idle timeout (their snapshot need not change: see tick)."""


@dataclass(slots=True)
class PartitionSessions:
    """The sessions of some partitions, taken out of the store (see `take_partitions`)."""

    live: list[SessionState]
    evicted: dict[str, tuple[SessionState, int]]
    """Evicted sessions and when they were evicted."""

    def __len__(self) -> int:
        return len(self.live) + len(self.evicted)


def slot_of(session_id: str, slots: int) -> int:
    """The slot a session is refreshed in (stable within a process; str hashes are cached)."""
    return hash(session_id) % slots


class SessionStore:
    """Live sessions, plus a bounded archive of evicted ones so late events keep totals."""

    def __init__(self, rules: Rules, render: Renderer = render_snapshot) -> None:
        self.rules = rules
        self._render = render
        self.live: dict[str, SessionState] = {}
        """Read-only outside the store: it keeps `_members` in step with it."""
        self._members: list[dict[str, SessionState]] = []
        """The live sessions by slot, for the slot count last ticked with (built on the first
        tick with slots): a slice's tick visits its own slot, not every session."""
        self.evicted: dict[str, tuple[SessionState, int]] = {}
        self._dirty: set[str] = set()
        self._settled: set[str] = set()
        """Sessions whose published snapshot cannot change until their next event: health
        is null for good (no segment yet, ended, or inactive, which `now` only deepens) and
        the rates are 0 for good (windows empty, or inactive). A tick skips building them;
        it only times them out or evicts them. Runtime only: restored and kept sessions
        start unsettled (and settle again at their first tick)."""
        self.late_segments = 0
        """Segments too old for the dedupe window since start (a counter, for metrics)."""

    def __len__(self) -> int:
        return len(self.live)

    def get(self, session_id: str) -> SessionState | None:
        return self.live.get(session_id)

    def apply(self, event: Event, partition: int) -> SessionState:
        """Fold a valid event into its session, creating or reviving the session."""
        session_id = event.session_id
        state = self.live.get(session_id)
        if state is None:
            archived = self.evicted.pop(session_id, None)
            if archived is not None:
                state = archived[0]
            else:
                state = new_session(session_id, partition, event.timestamp)
            state.partition = partition
            self._add_live(state)
        late_before = state.late_segments
        fold(state, event)
        self.late_segments += state.late_segments - late_before
        self._dirty.add(session_id)
        self._settled.discard(session_id)
        return state

    def restore(self, state: SessionState, evicted_at: int | None) -> None:
        """Adopt a state read back from the changelog; it is republished on the next tick."""
        if evicted_at is None:
            self._add_live(state)
            state.published_hash = None
            self._settled.discard(state.session_id)
        else:
            self.evicted[state.session_id] = (state, evicted_at)

    def take_partitions(self, partitions: Iterable[int]) -> dict[int, PartitionSessions]:
        """Remove the given partitions' sessions, live and evicted, and return them by
        partition as they are (published hashes included): `adopt` puts them back unchanged.
        One pass over the store, however many partitions."""
        taken = {p: PartitionSessions([], {}) for p in partitions}
        for state in self.live.values():
            sessions = taken.get(state.partition)
            if sessions is not None:
                sessions.live.append(state)
        for session_id, entry in self.evicted.items():
            sessions = taken.get(entry[0].partition)
            if sessions is not None:
                sessions.evicted[session_id] = entry
        for sessions in taken.values():
            for state in sessions.live:
                self._remove_live(state.session_id)
                self._dirty.discard(state.session_id)
                self._settled.discard(state.session_id)
            for session_id in sessions.evicted:
                del self.evicted[session_id]
        return taken

    def adopt(self, sessions: PartitionSessions) -> None:
        """Take back sessions that `take_partitions` removed, as they were: nothing is
        republished unless it changes (a restored state, by contrast, is republished)."""
        for state in sessions.live:
            self._add_live(state)
        self.evicted.update(sessions.evicted)

    def sessions_in(self, partitions: Iterable[int]) -> Iterator[SessionState]:
        wanted = set(partitions)
        return (s for s in self.live.values() if s.partition in wanted)

    def _add_live(self, state: SessionState) -> None:
        self.live[state.session_id] = state
        if self._members:
            self._members[slot_of(state.session_id, len(self._members))][state.session_id] = state

    def _remove_live(self, session_id: str) -> None:
        del self.live[session_id]
        if self._members:
            self._members[slot_of(session_id, len(self._members))].pop(session_id, None)

    def _slot_members(self, slot: int, slots: int) -> dict[str, SessionState]:
        if len(self._members) != slots:
            self._members = [{} for _ in range(slots)]
            for session_id, state in self.live.items():
                self._members[slot_of(session_id, slots)][session_id] = state
        return self._members[slot]

    def _evict(self, state: SessionState, now_ms: int, result: TickResult) -> None:
        """Out of memory and metrics; kept in the archive (and changelog) until its TTL."""
        session_id = state.session_id
        self._settled.discard(session_id)
        self._remove_live(session_id)
        self.evicted[session_id] = (state, now_ms)
        result.evicted.append(state)
        result.changed.append(state)

    def tick(self, now: int | Mapping[int, int], slot: int = 0, slots: int = 1) -> TickResult:
        """Refresh the live sessions of `slot` (of `slots`; one slot: all of them), each at
        the `now` of its partition (one int: the same for all): publish changes, time out,
        evict; slot 0 also forgets past the TTL. A mapping must answer every partition
        asked (`clock.PartitionNows` computes them on first use).

        Slots let the runner spread the work of an interval over slices of it: a session is
        always in the same slot (by the hash of its id), so it is refreshed once per round."""
        rules = self.rules
        nows = everywhere(now) if isinstance(now, int) else now
        result = TickResult()
        if slots == 1:
            changed_ids, self._dirty = self._dirty, set()
            due = list(self.live.items())
        else:
            members = self._slot_members(slot, slots)
            changed_ids = self._dirty.intersection(members)
            self._dirty -= changed_ids
            due = list(members.items())
        settled, render = self._settled, self._render
        for session_id, state in due:
            now_ms = nows[state.partition]
            ended_at = state.ended_at
            if session_id in settled:
                # Its snapshot cannot have changed (see `_settled`): a time-out or an
                # eviction may be due, nothing else.
                if ended_at is not None:
                    if now_ms - ended_at > rules.retention_ms:
                        self._evict(state, now_ms, result)
                    continue
                if now_ms - state.last_activity <= rules.idle_timeout_ms:
                    continue
                settled.discard(session_id)  # times out below (its snapshot stays the same)
            # Also sessions that never had a segment (started, then nothing): else they would
            # stay live forever. Those show no issue (isHealthy stays null) but are evicted.
            if ended_at is None and now_ms - state.last_activity > rules.idle_timeout_ms:
                state.ended_at, state.timed_out = now_ms, True
                changed_ids.add(session_id)
                result.timed_out.append(state)
            expire_windows(state, now_ms, rules.rate_window_ms)
            snapshot, final = render(state, now_ms, rules)
            if final:
                settled.add(session_id)  # from the next tick on: what it shows now is final
            if snapshot is not None:
                result.snapshots.append(snapshot)
                changed_ids.add(session_id)
            elif (
                state.ended_at is not None
                and session_id not in changed_ids
                and now_ms - state.ended_at > rules.retention_ms
            ):
                self._evict(state, now_ms, result)
                continue
            if session_id in changed_ids:
                result.changed.append(state)
        if slot != 0:
            return result
        for session_id, (state, evicted_at) in list(self.evicted.items()):
            if nows[state.partition] - evicted_at > rules.evicted_ttl_ms:
                del self.evicted[session_id]
                result.forgotten.append(state)
        return result

    def active_count(self, now: int | Mapping[int, int]) -> int:
        """Live sessions judged by the health rules at `now` (see `tick`)."""
        nows = everywhere(now) if isinstance(now, int) else now
        rules = self.rules
        return sum(1 for s in self.live.values() if is_active(s, nows[s.partition], rules))
