"""Dedupe bitmasks: bit i set when seqNo (high-water mark - i) was seen."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

from worker.events import Rendition
from worker.rules import DEDUPE_WINDOW

WINDOW_BITS: Final = (1 << DEDUPE_WINDOW) - 1


def mask_to_wire(mask: int) -> tuple[int, str]:
    """(bit length, the zero bits below it in hex): all ones, the usual mask, is (n, "0")."""
    length = mask.bit_length()
    return length, format(mask ^ ((1 << length) - 1), "x")


def mask_from_wire(length: int, holes_hex: str) -> int:
    """Reads `mask_to_wire`; raises ValueError for a mask the window cannot hold."""
    if not 0 <= length <= DEDUPE_WINDOW:  # also bounds the allocation a corrupt record asks
        raise ValueError(f"mask of {length!r} bits")
    if holes_hex == "0":  # all ones: the usual mask
        return (1 << length) - 1
    holes = int(holes_hex, 16)
    if holes >> length:
        raise ValueError("mask holes beyond its length")
    return ((1 << length) - 1) ^ holes


class RenditionMasks(tuple[Any, ...]):
    """Rendition name -> dedupe bitmask, packed (name, mask, name, mask, ...) in the order
    first set: half a dict. Immutable (methods return a new value); costs no bytes."""

    __slots__ = ()

    def any_has(self, bit: int) -> bool:
        """Whether any rendition has `bit` set."""
        return any(mask & bit for mask in self[1::2])

    def _shifted(self, shift: int) -> list[Any]:
        """Re-anchored `shift` seqNos higher, without the masks left empty."""
        if shift >= DEDUPE_WINDOW:
            return []  # nothing survives (and no huge shift)
        masks = list(self)
        for index in range(1, len(masks), 2):
            masks[index] = (masks[index] << shift) & WINDOW_BITS
        if 0 in masks:  # a rendition absent for the whole window: forget it
            it = iter(masks)
            masks = [x for pair in zip(it, it, strict=True) if pair[1] for x in pair]
        return masks

    def advanced(
        self, renditions: Sequence[Rendition], names: tuple[str, ...], shift: int
    ) -> tuple[RenditionMasks, int, int]:
        """`marked(renditions, 0, shift)` for a seqNo `shift` past the high-water mark;
        `names` are the renditions' names in their order. The usual case, the same names
        in the order held and no mask emptied by the shift, skips the search per name: each
        mask shifts and gains bit 0, and every rendition is new (bit 0 was shifted out)."""
        if shift >= DEDUPE_WINDOW or self[0::2] != names:
            return self.marked(renditions, 0, shift)
        masks = list(self)
        for index in range(1, len(masks), 2):
            mask = (masks[index] << shift) & WINDOW_BITS
            if not mask:  # the rendition would be forgotten, then set again at the end
                return self.marked(renditions, 0, shift)
            masks[index] = mask | 1
        added_bytes = 0
        for rendition in renditions:
            added_bytes += rendition["bytes"]
        return RenditionMasks(masks), len(names), added_bytes

    def marked(
        self, renditions: Sequence[Rendition], offset: int, shift: int = 0
    ) -> tuple[RenditionMasks, int, int]:
        """Re-anchored `shift` seqNos higher (the high-water mark moved), then bit `offset`
        set for each rendition; also how many renditions were new and their bytes."""
        masks = self._shifted(shift) if shift else list(self)
        bit = 1 << offset
        added = added_bytes = 0
        for rendition in renditions:
            name = rendition["name"]
            try:
                index = masks.index(name) + 1  # names are strs, masks ints: only a name matches
            except ValueError:
                masks += (name, bit)
            else:
                mask = masks[index]
                if mask & bit:
                    continue
                masks[index] = mask | bit
            added += 1
            added_bytes += rendition["bytes"]
        return RenditionMasks(masks), added, added_bytes

    def items(self) -> dict[str, int]:
        """Rendition name -> mask, in the order first set."""
        it = iter(self)
        return dict(zip(it, it, strict=True))

    def to_wire(self) -> list[Any]:
        """Format 2: flat [name, bit length, holes in hex, ...] (see `mask_to_wire`)."""
        flat: list[Any] = []
        it = iter(self)
        for name, mask in zip(it, it, strict=True):
            flat.append(name)
            flat += mask_to_wire(mask)
        return flat

    def to_wire_v1(self) -> dict[str, str]:
        """Format 1: {name: mask in hex}."""
        return {name: format(mask, "x") for name, mask in self.items().items()}

    @classmethod
    def from_wire(cls, flat: list[Any]) -> RenditionMasks:
        it = iter(flat)
        masks: list[Any] = []
        names: set[str] = set()
        for name, n, holes in zip(it, it, it, strict=True):
            if name.__class__ is not str:  # JSON strings are exactly str
                raise ValueError("a rendition name not a string")
            masks += name, mask_from_wire(n, holes)
            names.add(name)
        if 2 * len(names) != len(masks):  # never written: the last mask of a name wins
            return cls.of(dict(zip(masks[0::2], masks[1::2], strict=True)))
        return cls(masks)  # unique names (every record written): no dict in between

    @classmethod
    def from_wire_v1(cls, masks: dict[str, str]) -> RenditionMasks:
        return cls.of({name: int(mask, 16) for name, mask in masks.items()})

    @classmethod
    def of(cls, masks: dict[str, int]) -> RenditionMasks:
        """Raises ValueError for a name that is not a string (a corrupt record)."""
        if not all(isinstance(name, str) for name in masks):
            raise ValueError("a rendition name not a string")
        return cls(x for item in masks.items() for x in item)


NO_MASKS: Final = RenditionMasks()
