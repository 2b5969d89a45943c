"""The daemon's interpreter settings (applied once by `session-worker run`)."""

from __future__ import annotations

import gc
import sys
from collections.abc import Iterator

import pytest

from worker.tuning import GC_THRESHOLDS, SWITCH_INTERVAL_S, tune_runtime


@pytest.fixture
def restored() -> Iterator[None]:
    thresholds, interval = gc.get_threshold(), sys.getswitchinterval()
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)
    sys.setswitchinterval(interval)


@pytest.mark.usefixtures("restored")
def test_tuning_raises_the_gc_thresholds_freezes_start_up_and_shortens_the_switch() -> None:
    tune_runtime()
    assert gc.get_threshold() == GC_THRESHOLDS
    assert gc.get_freeze_count() > 0
    assert sys.getswitchinterval() == pytest.approx(SWITCH_INTERVAL_S)
    assert SWITCH_INTERVAL_S < 0.005  # CPython's default, which it exists to shorten
