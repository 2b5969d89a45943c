"""A rate window: the (timestamp, bytes) entries of one direction, with a running byte sum."""

from __future__ import annotations

from array import array
from collections.abc import Iterable
from typing import Any

from worker.rules import MAX_RATE_ENTRIES


def _pairs(flat: array[int]) -> list[tuple[int, int]]:
    it = iter(flat)
    return list(zip(it, it, strict=True))


class RateWindow:
    """Entries in arrival order (sorted once trimmed), packed [ts, size, ts, size, ...]: a
    fifth of the memory of tuples. The byte sum, oldest and newest stamp are kept as entries
    come and go, so a tick whose window holds every entry reads the sum, not the entries."""

    __slots__ = ("_flat", "_newest", "_oldest", "_total")
    _flat: array[int]
    _total: int
    _oldest: int
    _newest: int

    def __init__(self, entries: Iterable[tuple[int, int]] = ()) -> None:
        if entries:
            self._set([x for ts, size in entries for x in (ts, size)])
        else:  # most new windows: cheaper
            self._flat = array("q")
            self._total = self._oldest = self._newest = 0

    def _set(self, flat: list[int]) -> None:
        """Keep `flat` packed; its sum and stamps are read from the list (an array's slices
        box every number again: a restore builds 200k windows)."""
        self._flat = array("q", flat)
        if flat:
            stamps = flat[0::2]
            self._total = sum(flat[1::2])
            self._oldest = min(stamps)
            self._newest = max(stamps)
        else:
            self._total = self._oldest = self._newest = 0

    def __len__(self) -> int:
        return len(self._flat) // 2

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RateWindow) and self._flat == other._flat

    __hash__ = None  # type: ignore[assignment]  # mutable

    def __repr__(self) -> str:
        return f"RateWindow({self.items()!r})"

    def add(self, timestamp: int, size: int) -> None:
        """Append an entry; past MAX_RATE_ENTRIES keep the newest ones, sorted."""
        flat = self._flat
        if not flat:
            self._oldest = self._newest = timestamp
        elif timestamp < self._oldest:
            self._oldest = timestamp
        elif timestamp > self._newest:
            self._newest = timestamp
        flat.append(timestamp)
        flat.append(size)
        self._total += size
        if len(flat) > 2 * MAX_RATE_ENTRIES:
            entries = sorted(_pairs(flat))
            del entries[: len(entries) - MAX_RATE_ENTRIES]
            self._set([x for entry in entries for x in entry])

    def expire(self, start_ms: int) -> None:
        """Drop entries stamped at or before `start_ms`: they never count again for a later
        `now` (into an array of the exact size: appending grows one with room to spare)."""
        flat = self._flat
        if not flat or self._oldest > start_ms:
            return
        # Entries arrive mostly in time order: the expired ones are then a prefix, found
        # by a short walk, and the rest is checked for stragglers in C (a slice's min).
        end = 0
        size = len(flat)
        while end < size and flat[end] <= start_ms:
            end += 2
        if end == size:
            self._flat = array("q")
            self._total = self._oldest = self._newest = 0
            return
        rest = flat[end:]
        oldest = min(rest[0::2])
        if oldest > start_ms:
            self._flat = rest
            self._total -= sum(flat[1:end:2])
            self._oldest = oldest
            return
        it = iter(flat)
        kept = [entry for entry in zip(it, it, strict=True) if entry[0] > start_ms]
        self._flat = array("q", [x for entry in kept for x in entry])
        self._total = sum([size for _, size in kept])
        if kept:  # the newest stays: it is after the start
            self._oldest = min(kept)[0]

    def bytes_in(self, now_ms: int, window_ms: int) -> int:
        """Bytes of the entries stamped in (now - window, now]."""
        start = now_ms - window_ms
        if not self._flat or (self._oldest > start and self._newest <= now_ms):
            return self._total
        it = iter(self._flat)
        # A list comprehension sums faster than a generator.
        return sum([size for ts, size in zip(it, it, strict=True) if start < ts <= now_ms])

    def items(self) -> list[tuple[int, int]]:
        """The (ts, size) entries, in their order."""
        return _pairs(self._flat)

    def to_wire(self) -> list[tuple[int, int]]:
        """The changelog form: [[ts, size], ...] (orjson writes the tuples as arrays)."""
        return _pairs(self._flat)

    @classmethod
    def from_wire(cls, entries: list[Any]) -> RateWindow:
        """Reads `to_wire`; raises ValueError or TypeError for an entry that is not a pair
        of integers."""
        flat: list[int] = []
        for ts, size in entries:  # a loop: cheaper than a comprehension of pairs
            flat += ts, size
        window = cls.__new__(cls)
        window._set(flat)
        return window
