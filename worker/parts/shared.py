"""Values shared between sessions: a fleet repeats a handful of ladders, names and kinds."""

from __future__ import annotations

from typing import Any, Final

import orjson

MAX_SHARED_VALUES: Final = 4096
"""Distinct rendition-name tuples, recent-name runs and profile lists remembered for sharing
between sessions (a fleet uses a handful of ladders; sharing saves ~2 KB per session).
Bounded: cleared when full, which only costs sharing, never correctness."""
_shared: dict[Any, Any] = {}
_SHARED_META: Final = frozenset({"profiles", "recording_spec"})
_SHARED_NAMES: Final = frozenset({"kind", "project_id"})
"""String metadata with few distinct values in a fleet: one copy for all its sessions."""


def share(key: Any, value: Any) -> Any:
    """An equal value already held by another session, else `value` (then remembered).

    Shared values are never mutated: the fold replaces them, it does not edit them."""
    found = _shared.get(key)
    if found is None:
        if len(_shared) >= MAX_SHARED_VALUES:
            _shared.clear()
        found = _shared[key] = value
    return found


def share_value(value: Any) -> Any:
    """`share` for a hashable value (rendition name tuples)."""
    return share(value, value)


def share_meta(name: str, value: Any) -> Any:
    """`share` for the metadata that sessions repeat verbatim (profile ladders, kinds,
    projects)."""
    if name in _SHARED_NAMES:
        return share((name, value), value)
    if name in _SHARED_META:
        return share((name, orjson.dumps(value)), value)
    return value


def share_meta_values(values: dict[str, Any]) -> dict[str, Any]:
    """`share_meta` for each of `values`, in place (one pass for a whole restored record:
    most of its fields are not shared)."""
    for name in _SHARED_NAMES:
        value = values.get(name)
        if value is not None:
            values[name] = share((name, value), value)
    for name in _SHARED_META:
        value = values.get(name)
        if value is not None:
            values[name] = share((name, orjson.dumps(value)), value)
    return values
