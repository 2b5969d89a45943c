"""The newest segments the health rules look at: source durations and transcodes."""

from __future__ import annotations

from array import array
from typing import Any, Final, cast

from worker.parts.shared import share, share_value
from worker.rules import RECENT_SEGMENTS

NO_RATIO: Final = -1.0
"""A transcode without a transcodeTime (real ratios are >= 0)."""
_FULL: Final = 2 * RECENT_SEGMENTS
"""Numbers in a full packed array: [seqNo, value] per segment."""


class RecentDurations:
    """seqNo -> duration of the newest RECENT_SEGMENTS source segments, packed
    [seqNo, duration, ...] in arrival order. SeqNos are at most 2**53 - 1
    (events.MAX_JSON_INT): exact as float64."""

    __slots__ = ("_flat",)

    def __init__(self, items: dict[int, float] | None = None) -> None:
        flat = [x for item in items.items() for x in item] if items else []
        self._flat: array[float] = array("d", flat)

    def __len__(self) -> int:
        return len(self._flat) // 2

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RecentDurations) and self._flat == other._flat

    __hash__ = None  # type: ignore[assignment]  # mutable

    def __repr__(self) -> str:
        return f"RecentDurations({self.items()!r})"

    def add(self, seq_no: int, duration: float) -> None:
        """Remember a new source segment (never one already here), dropping the oldest seqNo
        when full; one older than all of a full window is not kept."""
        flat = self._flat
        if len(flat) < _FULL:
            flat.append(seq_no)
            flat.append(duration)
            if len(flat) == _FULL:
                self._flat = flat[:]  # exact size: it stays full
            return
        seqs = flat[0::2]
        oldest = min(seqs)
        if seq_no > oldest:  # else a dict would insert it, then delete it as the oldest
            index = 2 * seqs.index(oldest)
            del flat[index : index + 2]  # first: the array never grows
            flat.append(seq_no)
            flat.append(duration)

    def median_duration(self) -> float:
        """The median duration in seconds (statistics.median's result without its generic
        overhead: runs every tick); 0.0 without segments."""
        if not self._flat:
            return 0.0
        values = self._flat[1::2].tolist()
        values.sort()
        middle = len(values) // 2
        return values[middle] if len(values) % 2 else (values[middle - 1] + values[middle]) / 2

    def items(self) -> dict[int, float]:
        """seqNo -> duration, in arrival order."""
        it = iter(self._flat)
        return {int(seq_no): duration for seq_no, duration in zip(it, it, strict=True)}

    def to_wire(self) -> list[tuple[int, float]]:
        """The changelog form: [[seqNo, duration], ...]."""
        it = iter(self._flat)
        return [(int(seq_no), duration) for seq_no, duration in zip(it, it, strict=True)]

    @classmethod
    def from_wire(cls, entries: list[Any]) -> RecentDurations:
        """Written from a dict, so seqNos are unique; a repeated one keeps its first place
        and its last value, as reading it into a dict did."""
        flat: list[float] = []
        for seq_no, duration in entries:  # a loop: cheaper than a comprehension of pairs
            flat += seq_no, duration
        if len(set(flat[0::2])) != len(entries):
            return cls(dict(entries))
        durations = cls.__new__(cls)  # unique seqNos (every record written): no dict between
        durations._flat = array("d", flat)
        return durations


Names = tuple[str, ...]


def share_names_run(entries: tuple[Names, ...]) -> tuple[Names, ...]:
    """An equal run of names held by other sessions when all entries have one name tuple
    (keyed by that tuple and the count, not by the whole `entries`)."""
    if not entries or entries.count(entries[0]) != len(entries):
        return entries
    shared: tuple[Names, ...] = share(("recent_names", entries[0], len(entries)), entries)
    return shared


class RecentTranscodes:
    """seqNo -> (transcode ratio, rendition names) of the newest RECENT_SEGMENTS transcoded
    seqNos: packed [seqNo, ratio or NO_RATIO, ...] in arrival order, and the (shared) names
    of each entry in the same order. The names are immutable: when every entry has the same
    names (the usual case), sessions share them."""

    __slots__ = ("_flat", "_names")

    def __init__(self, items: dict[int, tuple[float | None, Names]] | None = None) -> None:
        self._flat: array[float] = array("d")
        self._names: tuple[Names, ...] = ()
        if items:
            entries = items.items()
            self._flat.extend(
                [x for s, (r, _) in entries for x in (s, NO_RATIO if r is None else r)]
            )
            self._names = share_names_run(tuple([n for _, (_, n) in entries]))

    def __len__(self) -> int:
        return len(self._names)

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, RecentTranscodes)
            and self._flat == other._flat
            and self._names == other._names
        )

    __hash__ = None  # type: ignore[assignment]  # mutable

    def __repr__(self) -> str:
        return f"RecentTranscodes({self.items()!r})"

    def add(self, seq_no: int, ratio: float, names: Names) -> None:
        """Record (ratio or NO_RATIO, names) for `seq_no`. A retry of a seqNo here keeps the
        union of the names (it may deliver renditions the first attempt lacked) and its
        ratio if it has one; when full, the oldest seqNo makes room for a newer one."""
        flat = self._flat
        recent_names = self._names
        seqs = flat[0::2]
        if seq_no in seqs:
            index = seqs.index(seq_no)
            previous = recent_names[index]
            if previous is not names:
                union = share_value(tuple(sorted(set(names) | set(previous))))
                self._names = share_names_run(
                    (*recent_names[:index], union, *recent_names[index + 1 :])
                )
            if ratio != NO_RATIO:
                flat[2 * index + 1] = ratio
            return
        if len(recent_names) < RECENT_SEGMENTS:
            flat.append(seq_no)
            flat.append(ratio)
            if len(flat) == _FULL:
                self._flat = flat[:]  # exact size: it stays full
            self._names = share_names_run((*recent_names, names))
            return
        oldest_seq_no = min(seqs)
        if seq_no < oldest_seq_no:
            return  # a dict would insert it, then delete it as the oldest
        oldest = seqs.index(oldest_seq_no)
        del flat[2 * oldest : 2 * oldest + 2]  # first: the array never grows
        flat.append(seq_no)
        flat.append(ratio)
        if recent_names.count(names) != RECENT_SEGMENTS:  # else all are `names`: unchanged
            self._names = share_names_run(
                (*recent_names[:oldest], *recent_names[oldest + 1 :], names)
            )

    def mean_ratio(self) -> float | None:
        """Mean transcode time / duration of the entries that have one; None if none has."""
        ratios = self._flat[1::2].tolist()
        if NO_RATIO in ratios:  # segments transcoded without a transcodeTime
            ratios = [r for r in ratios if r != NO_RATIO]
        if not ratios:
            return None
        return sum(ratios) / len(ratios)

    def missing(self, expected: frozenset[str]) -> frozenset[str] | set[str]:
        """The names of `expected` that some entry lacks."""
        recent_names = self._names
        if not recent_names:
            return frozenset()
        first = recent_names[0]
        if recent_names.count(first) == len(recent_names):
            # The usual case: every entry has the same (shared, so `is`-equal) names.
            return expected.difference(first)
        missing: set[str] = set()
        for names in set(recent_names):
            missing |= expected.difference(names)
        return missing

    def names(self) -> tuple[Names, ...]:
        """The rendition names of each entry, in arrival order (shared between sessions)."""
        return self._names

    def items(self) -> dict[int, tuple[float | None, Names]]:
        """seqNo -> (ratio or None, rendition names), in arrival order."""
        flat = self._flat
        return {
            int(s): (None if r == NO_RATIO else r, names)
            for s, r, names in zip(flat[0::2], flat[1::2], self._names, strict=True)
        }

    def to_wire(self) -> tuple[list[int], list[float | None], list[Names], list[int] | None]:
        """Format 2: seqNos, ratios (null without one), the distinct name tuples, and each
        entry's index among them (null when every entry has the one name tuple)."""
        flat, names = self._flat, self._names
        ratios = cast("list[float | None]", flat[1::2].tolist())
        if NO_RATIO in ratios:
            ratios = [None if r == NO_RATIO else r for r in ratios]
        seqs = list(map(int, flat[0::2]))
        if names and names.count(names[0]) == len(names):  # the usual case: one name tuple
            return seqs, ratios, [names[0]], None
        table = list(dict.fromkeys(names))
        return seqs, ratios, table, None if len(table) <= 1 else [table.index(n) for n in names]

    def to_wire_v1(self) -> list[tuple[int, float | None, Names]]:
        """Format 1: [[seqNo, ratio or null, names], ...]."""
        seqs, ratios, _, _ = self.to_wire()
        return list(zip(seqs, ratios, self._names, strict=True))

    @classmethod
    def from_wire(
        cls, seq_nos: list[int], ratios: list[float | None], table: list[Any], index: Any
    ) -> RecentTranscodes:
        """Reads `to_wire`; raises ValueError for entries without names."""
        names = [share_value(tuple(n)) for n in table]
        per_entry: tuple[Names, ...]
        if index is None:
            if seq_nos and len(names) != 1:
                raise ValueError("no rendition names")
            per_entry = (names[0],) * len(seq_nos) if seq_nos else ()
        else:
            per_entry = tuple([names[i] for i in index])
        if not len(set(seq_nos)) == len(seq_nos) == len(ratios) == len(per_entry):
            return cls.from_entries(seq_nos, ratios, list(per_entry))
        # Unique seqNos (every record written): packed directly, no dict in between.
        flat: list[Any] = [NO_RATIO] * (2 * len(seq_nos))
        flat[0::2] = seq_nos  # interleaved by slice assignment: no loop per entry
        flat[1::2] = ratios
        if None in ratios:  # transcodes without a transcodeTime (not in seqNos: corrupt)
            flat[1::2] = [NO_RATIO if ratio is None else ratio for ratio in ratios]
        transcodes = cls.__new__(cls)
        transcodes._flat = array("d", flat)
        transcodes._names = share_names_run(per_entry)
        return transcodes

    @classmethod
    def from_wire_v1(cls, entries: list[Any]) -> RecentTranscodes:
        return cls.from_entries(
            [s for s, _, _ in entries],
            [r for _, r, _ in entries],
            [share_value(tuple(n)) for _, _, n in entries],
        )

    @classmethod
    def from_entries(
        cls, seq_nos: list[int], ratios: list[float | None], names: list[Names]
    ) -> RecentTranscodes:
        """A repeated seqNo keeps its first place and its last value, as reading the entries
        into a dict did."""
        return cls(dict(zip(seq_nos, zip(ratios, names, strict=True), strict=True)))
