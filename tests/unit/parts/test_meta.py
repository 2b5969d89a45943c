"""SessionMeta: last write wins per field by event timestamp."""

from __future__ import annotations

from worker.parts.meta import EMPTY_META


def test_last_write_wins_per_field() -> None:
    meta = EMPTY_META.with_values(10, {"name": "a", "kind": "k"})
    assert meta.items() == {"name": (10, "a"), "kind": (10, "k")}
    assert meta.stamps == 10  # one stamp for all: packed
    assert meta.with_values(9, {"name": "old"}) is meta
    newer = meta.with_values(11, {"name": "b", "user_id": "u"})
    assert newer.items() == {"name": (11, "b"), "kind": (10, "k"), "user_id": (11, "u")}


def test_wire_round_trip() -> None:
    meta = EMPTY_META.with_values(10, {"name": "a"}).with_values(12, {"record": True})
    wire = {name: list(pair) for name, pair in meta.to_wire().items()}
    assert type(meta).from_wire(wire) == meta
