"""Failed seqNos not (yet) transcoded: what the health rule "failed in the last 10" reads."""

from __future__ import annotations

from typing import Any


class Failures(tuple[Any, ...]):
    """Immutable, packed (seqNo, ts, error, ...) in the order first failed; methods return a
    new value. Empty (shared) in most sessions; a tuple subclass costs no bytes."""

    __slots__ = ()

    @classmethod
    def of(cls, items: dict[int, tuple[int, str]]) -> Failures:
        """The failures seqNo -> (ts, error), in their order."""
        return cls(x for s, (ts, error) in items.items() for x in (s, ts, error))

    def has(self, seq_no: int) -> bool:
        return seq_no in self[0::3]

    def newest_seq_no(self, floor: int) -> int:
        """The newest failed seqNo, or `floor` if greater."""
        newest: int = max((floor, *self[0::3]))
        return newest

    def with_failure(self, seq_no: int, timestamp: int, error: str) -> Failures:
        """One more failure; for a seqNo already here the newer (ts, error) wins."""
        if not self.has(seq_no):
            return Failures((*self, seq_no, timestamp, error))
        items = self.items()
        if (timestamp, error) <= items[seq_no]:
            return self
        items[seq_no] = (timestamp, error)
        return Failures.of(items)

    def without(self, seq_no: int) -> Failures:
        """Without `seq_no` (it was transcoded)."""
        if not self.has(seq_no):
            return self
        return Failures.of({s: f for s, f in self.items().items() if s != seq_no})

    def newer_than(self, oldest: int) -> Failures:
        """Only the seqNos above `oldest`."""
        if not self or min(self[0::3]) > oldest:  # usually nothing to drop
            return self
        return Failures.of({s: f for s, f in self.items().items() if s > oldest})

    def items(self) -> dict[int, tuple[int, str]]:
        """seqNo -> (ts, error), in the order first failed."""
        it = iter(self)
        return {s: (ts, error) for s, ts, error in zip(it, it, it, strict=True)}

    def to_wire(self) -> tuple[Any, ...]:
        """Format 2: flat (seqNo, ts, error, ...)."""
        return tuple(self)

    def to_wire_v1(self) -> list[list[Any]]:
        """Format 1: [[seqNo, ts, error], ...]."""
        return [[s, ts, err] for s, (ts, err) in self.items().items()]

    @classmethod
    def from_wire(cls, flat: list[Any]) -> Failures:
        if not flat and isinstance(flat, list):
            return NO_FAILURES  # most sessions: shared, as a fold leaves them
        it = iter(flat)
        return cls.of({s: (ts, e) for s, ts, e in zip(it, it, it, strict=True)})

    @classmethod
    def from_wire_v1(cls, entries: list[Any]) -> Failures:
        return cls.of({s: (ts, err) for s, ts, err in entries})


NO_FAILURES = Failures()
