"""RenditionMasks and the mask wire form."""

from __future__ import annotations

import pytest

from worker.events import Rendition
from worker.parts.masks import NO_MASKS, RenditionMasks, mask_from_wire, mask_to_wire
from worker.rules import DEDUPE_WINDOW


def renditions(*names: str) -> list[Rendition]:
    return [{"name": name, "bytes": 10} for name in names]


def test_marked_counts_only_new_bits() -> None:
    masks, added, added_bytes = NO_MASKS.marked(renditions("a", "b"), 0)
    assert (masks.items(), added, added_bytes) == ({"a": 1, "b": 1}, 2, 20)
    again, added, _ = masks.marked(renditions("a", "c"), 0)
    assert (again.items(), added) == ({"a": 1, "b": 1, "c": 1}, 1)
    assert again.any_has(1)
    assert not again.any_has(2)


def test_a_shift_moves_the_bits_and_forgets_empty_masks() -> None:
    masks = RenditionMasks.of({"a": 1, "b": 1 << (DEDUPE_WINDOW - 1)})
    shifted, added, _ = masks.marked(renditions("c"), 0, shift=1)
    assert (shifted.items(), added) == ({"a": 2, "c": 1}, 1)
    jumped, _, _ = masks.marked(renditions("c"), 0, shift=DEDUPE_WINDOW)
    assert jumped.items() == {"c": 1}


def test_mask_wire_form() -> None:
    assert mask_to_wire(0b1111) == (4, "0")
    assert mask_to_wire(0b1011) == (4, "4")
    for mask in (0, 1, 0b1011, (1 << DEDUPE_WINDOW) - 1):
        assert mask_from_wire(*mask_to_wire(mask)) == mask
    with pytest.raises(ValueError, match="bits"):
        mask_from_wire(DEDUPE_WINDOW + 1, "0")
    with pytest.raises(ValueError, match="holes"):
        mask_from_wire(2, "4")


def test_wire_round_trips_in_both_formats() -> None:
    masks = RenditionMasks.of({"a": 0b101, "b": 1})
    assert masks.to_wire() == ["a", 3, "2", "b", 1, "0"]
    assert RenditionMasks.from_wire(masks.to_wire()) == masks
    assert masks.to_wire_v1() == {"a": "5", "b": "1"}
    assert RenditionMasks.from_wire_v1(masks.to_wire_v1()) == masks
    with pytest.raises(ValueError, match="not a string"):
        RenditionMasks.of({1: 1})  # type: ignore[dict-item]


def test_from_wire_reads_a_repeated_name_as_a_dict_did() -> None:
    """Never written, but a record that has one keeps the name's first place, last mask."""
    masks = RenditionMasks.from_wire(["a", 1, "0", "b", 2, "0", "a", 2, "1"])
    assert masks.items() == {"a": 2, "b": 3}
    with pytest.raises(ValueError, match="not a string"):
        RenditionMasks.from_wire([5, 1, "0"])
