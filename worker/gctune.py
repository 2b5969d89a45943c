"""Garbage-collector settings for the daemon: fewer, cheaper collections.

The store holds millions of GC-tracked objects (states, windows, metadata). With CPython's
default thresholds (700, 10, 10) the short-lived objects of every batch and checkpoint
(decoded events, snapshot dicts, outbox records) survive a young collection, get promoted,
and trigger full collections that walk the whole store: a third of the CPU and 100+ ms
loop stalls at 10k sessions (bench/, docs/performance.md). Reference counting frees almost
everything here; the cycle collector only has to catch the rare cycle, so it can run less.
"""

from __future__ import annotations

import gc
from typing import Final

GC_THRESHOLDS: Final = (50_000, 20, 10)
"""Young collections every 50k net allocations (default 700): a batch's garbage is freed by
reference counting before it can be promoted. Full collections still follow heap growth."""


def tune_gc() -> None:
    """Freeze what start-up allocated (modules, settings) out of every future collection,
    then raise the thresholds. Call once, before the worker starts."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
