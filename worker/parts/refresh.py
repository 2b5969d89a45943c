"""What a refresh remembers between ticks: runtime only, never in the changelog."""

from __future__ import annotations

from typing import Any


class RefreshCache:
    """Per session: the health verdict and the span of `now` it holds for (health.py), and
    the snapshot's static part, rendered once per change (session.py). Each is keyed by
    what it was computed from, so a stale entry is recomputed, never shown."""

    __slots__ = (
        "health_from",
        "health_issues",
        "health_rules",
        "health_until",
        "health_version",
        "meta",
        "recording",
        "tail",
    )

    def __init__(self) -> None:
        self.health_version = -1
        """The state's fold version the verdict was judged at (-1: none yet)."""
        self.health_rules: object = None
        self.health_from = 0
        self.health_until = 0
        """The verdict holds for `now` in [health_from, health_until) at that version."""
        self.health_issues: tuple[str, ...] | None = None
        self.meta: object = None
        self.recording: object = None
        """The (immutable, replaced on change) metadata and recording the tail is of."""
        self.tail: dict[str, Any] = {}
        """The snapshot's keys after createdAt (metadata, recording), in contract order."""
