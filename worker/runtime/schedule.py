"""When to publish and when to checkpoint: a pure policy, `now` passed in, no clock reads.

Every publish interval the changed snapshots go out; the interval is cut into `slices`, each
refreshing one slot of the sessions, so the loop stops for a fraction of the work at a time.
Every commit interval a *round* begins: one changelog slot per slice is written, and the
round's last slice commits. While catching up (far behind), every session is ticked at once
and only with the checkpoints: a backlog's intermediate snapshots are stale on arrival.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Step:
    """What one write holds."""

    slot: int | None
    """The slot of sessions to tick; None: every session."""
    commits: bool
    """A checkpoint: changelog, dead letters and offsets (for a slice: the round's last)."""
    begins_round: bool = False
    """The round starts with this slice: the offsets it will commit are captured now."""
    changelog_slot: int | None = None
    """The changelog slot this slice of a round writes (None: none)."""


class Schedule:
    """Decides, for a monotonic `now`, whether a write is due and what it holds."""

    def __init__(
        self,
        publish_interval_s: float,
        commit_interval_s: float | None,
        slices: int,
        now: float,
    ) -> None:
        self.publish_interval_s = publish_interval_s
        self.commit_interval_s = max(publish_interval_s, commit_interval_s or publish_interval_s)
        """None or the publish interval: every publish is a checkpoint (exactly-once mode)."""
        self.slices = slices
        self.changelog_slots = max(1, round(self.commit_interval_s * slices / publish_interval_s))
        """Slices per commit interval: a round writes one changelog slot per slice, so the
        changelog work is spread evenly over the interval (50 at the defaults)."""
        self._slice_s = publish_interval_s / slices
        self._next_slice = now + self._slice_s
        self._next_commit = now + self.commit_interval_s
        self._slot = 0
        self._slot_ticked = [float("-inf")] * slices
        """When each slot was last refreshed: its next refresh waits at least one interval
        from then, so a session publishes at most once per interval."""
        self._round_next: int | None = None
        """The changelog slot the round in progress writes next; None: no round."""

    @property
    def in_round(self) -> bool:
        return self._round_next is not None

    def wait_s(self, now: float, most_s: float = 0.5) -> float:
        """How long a fetch may wait for records before the next slice is due."""
        return min(max(0.0, self._next_slice - now), most_s)

    def next(self, now: float, catching_up: bool) -> Step | None:
        """The write due at `now`, if any; the schedule moves on as if it were done."""
        commit_due = now >= self._next_commit
        slice_due = now >= self._next_slice
        if catching_up or self.slices == 1:
            if not (commit_due or (slice_due and not catching_up)):
                if slice_due:  # skipped while catching up: look again a slice later
                    self._next_slice = now + self._slice_s
                return None
            if commit_due:
                self._next_commit = now + self.commit_interval_s
            return self.tick_all(now, commits=commit_due)
        if not slice_due:
            return None
        begins = commit_due and self._round_next is None
        if begins:
            self._round_next = 0
            self._next_commit = now + self.commit_interval_s
        slot = self._slot
        step = Step(slot, commits=False, begins_round=begins, changelog_slot=self._round_next)
        if self._round_next is not None:
            self._round_next += 1
            if self._round_next == self.changelog_slots:
                self._round_next = None
                step = Step(slot, True, begins, step.changelog_slot)
        self._slot_ticked[slot] = now
        # On the schedule, not `now + slice`: a late slice does not delay the rest of the
        # round; each slot still waits an interval since its last refresh.
        self._slot = (slot + 1) % self.slices
        self._next_slice = max(
            self._next_slice + self._slice_s,
            self._slot_ticked[self._slot] + self.publish_interval_s,
        )
        return step

    def tick_all(self, now: float, commits: bool) -> Step:
        """Every session is ticked at `now` (a checkpoint ends any round in progress)."""
        self._slot_ticked = [now] * self.slices
        self._slot = 0
        self._next_slice = now + self.publish_interval_s
        if commits:
            self._round_next = None
        return Step(None, commits)
