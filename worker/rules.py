"""Tunable thresholds of the fold, rates, health and lifecycle (semantics.md defaults)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

DEDUPE_WINDOW: Final = 1024
"""Seqnos remembered below the high-water mark; older ones are duplicates or too late.

1024 two-second segments tolerate ~34 minutes of reordering in 128 bytes per bitmask.
"""

RECENT_SEGMENTS: Final = 10
"""How many of the newest seqNos the health rules look at (semantics.md: "last 10")."""

MAX_RATE_ENTRIES: Final = 512
"""Hard cap on rate-window entries per direction, so a flood cannot grow a session."""


@dataclass(frozen=True, slots=True)
class Rules:
    rate_window_ms: int = 10_000
    inactive_after_ms: int = 60_000
    """Without a newer segment.ingested for this long, a session is inactive (not judged)."""
    stall_min_ms: int = 10_000
    stall_duration_factor: float = 3.0
    slow_transcode_ratio: float = 1.0
    max_transcode_lag_segments: int = 5
    retention_ms: int = 5 * 60_000
    idle_timeout_ms: int = 60 * 60_000
    evicted_ttl_ms: int = 24 * 60 * 60_000
    """How long an evicted session's totals are kept so a late event cannot reset them."""
