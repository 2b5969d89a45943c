"""Interpreter settings for the daemon: fewer, cheaper collections; a quicker GIL hand-over.

The store holds millions of GC-tracked objects (states, windows, metadata). With CPython's
default thresholds (700, 10, 10) the short-lived objects of every batch and checkpoint
(decoded events, snapshot dicts, outbox records) survive a young collection, get promoted,
and trigger full collections that walk the whole store: a third of the CPU and 100+ ms
loop stalls at 10k sessions (bench/, docs/performance.md). Reference counting frees almost
everything here; the cycle collector only has to catch the rare cycle, so it can run less.
"""

from __future__ import annotations

import gc
import sys
from typing import Final

GC_THRESHOLDS: Final = (50_000, 20, 10)
"""Young collections every 50k net allocations (default 700): a batch's garbage is freed by
reference counting before it can be promoted. Full collections still follow heap growth."""


SWITCH_INTERVAL_S: Final = 0.001
"""How long a thread that wants the GIL waits before it asks the running one to drop it
(CPython's default: 5 ms). The HTTP server's thread needs the GIL several times per answer
while the consume loop holds it folding a backlog: at 5 ms each, `/readyz` answered in
6.5-9.7 ms (p50) and up to 59 ms; at 1 ms in 2.7-4.2 ms and up to 50 ms (docs/performance.md).
Costs nothing while no other thread wants the GIL."""


def tune_runtime() -> None:
    """Freeze what start-up allocated (modules, settings) out of every future collection,
    raise the GC thresholds, shorten the GIL switch interval. Call once, before the worker
    starts."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
    sys.setswitchinterval(SWITCH_INTERVAL_S)
