"""RateWindow: the entries a plain list would hold, and a running sum equal to a re-sum."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from worker.parts.rates import RateWindow
from worker.rules import MAX_RATE_ENTRIES


def resum(entries: list[tuple[int, int]], now_ms: int, window_ms: int) -> int:
    return sum(size for ts, size in entries if now_ms - window_ms < ts <= now_ms)


def test_bytes_in_counts_the_half_open_interval() -> None:
    window = RateWindow([(1_000, 1), (5_000, 10), (10_999, 100), (11_000, 1_000), (11_001, 10_000)])
    # (now - 10000, now] with now = 11000: 1000 is out, 11000 is in, 11001 (future) is out.
    assert window.bytes_in(11_000, 10_000) == 1_110
    assert window.bytes_in(10_999, 10_000) == 111  # (999, 10999]: 1000 is in
    assert window.bytes_in(14_999, 10_000) == 11_110
    assert window.bytes_in(15_000, 10_000) == 11_100  # 5000 just left
    assert window.bytes_in(21_001, 10_000) == 0
    assert RateWindow().bytes_in(15_000, 10_000) == 0


def test_expire_keeps_only_entries_after_the_start_in_their_order() -> None:
    window = RateWindow([(5, 1), (2, 2), (9, 3), (3, 4)])
    window.expire(3)
    assert window.items() == [(5, 1), (9, 3)]
    assert window.bytes_in(9, 10) == 4


def test_add_past_the_cap_keeps_the_newest_sorted() -> None:
    window = RateWindow()
    for n in range(MAX_RATE_ENTRIES + 5):
        window.add(10_000 - n, n)
    items = window.items()
    assert len(window) == MAX_RATE_ENTRIES
    assert items == sorted(items)
    assert items[0] == (10_000 - MAX_RATE_ENTRIES + 1, MAX_RATE_ENTRIES - 1)


def test_wire_round_trip_and_equality() -> None:
    window = RateWindow([(1, 2), (3, 4)])
    assert window.to_wire() == [(1, 2), (3, 4)]
    assert RateWindow.from_wire([[1, 2], [3, 4]]) == window
    assert RateWindow.from_wire([[3, 4], [1, 2]]) != window


operations = st.lists(
    st.one_of(
        st.tuples(st.just("add"), st.integers(0, 2_000), st.integers(0, 2**40)),
        st.tuples(st.just("expire"), st.integers(-100, 2_100), st.just(0)),
        st.tuples(st.just("sum"), st.integers(-100, 2_100), st.integers(0, 1_500)),
    ),
    max_size=MAX_RATE_ENTRIES + 60,
)


@given(operations)
def test_the_running_sum_equals_a_re_sum(ops: list[tuple[str, int, int]]) -> None:
    """Whatever the order of adds, expiries and reads: the entries are those a plain list
    keeps (capped to the newest, sorted once trimmed) and every sum equals a re-sum."""
    window = RateWindow()
    model: list[tuple[int, int]] = []
    for op, a, b in ops:
        if op == "add":
            window.add(a, b)
            model.append((a, b))
            if len(model) > MAX_RATE_ENTRIES:
                model = sorted(model)[-MAX_RATE_ENTRIES:]
        elif op == "expire":
            window.expire(a)
            model = [e for e in model if e[0] > a]
        else:
            assert window.bytes_in(a, b) == resum(model, a, b)
        assert window.items() == model


in_time_order = st.lists(
    st.tuples(
        st.integers(0, 300),  # gap after the previous entry
        st.sampled_from([0, 0, 0, 0, -1, -250, -900]),  # a straggler now and then
        st.integers(0, 2**20),
        st.one_of(st.none(), st.integers(0, 1_200)),  # expire this far behind the newest
    ),
    max_size=200,
)


@given(in_time_order)
def test_expire_of_entries_in_time_order_equals_a_filter(
    ops: list[tuple[int, int, int, int | None]],
) -> None:
    """The live shape (expiring a prefix, stragglers behind it): entries, running sum and
    oldest stamp as a plain filter gives them, read through sums that use each."""
    window = RateWindow()
    model: list[tuple[int, int]] = []
    clock = 0
    for gap, straggle, size, behind in ops:
        clock += gap
        window.add(clock + straggle, size)
        model.append((clock + straggle, size))
        if behind is not None:
            window.expire(clock - behind)
            model = [e for e in model if e[0] > clock - behind]
        assert window.items() == model
        assert window.bytes_in(clock, 10**6) == resum(model, clock, 10**6)
        if model:
            oldest = min(ts for ts, _ in model)
            assert window.bytes_in(clock, clock - oldest + 1) == resum(
                model, clock, clock - oldest + 1
            )
            assert window.bytes_in(clock, clock - oldest) == resum(model, clock, clock - oldest)


def test_from_wire_keeps_the_running_sum_and_stamps() -> None:
    window = RateWindow.from_wire([[30, 4], [10, 2], [20, 1]])
    assert window.bytes_in(30, 1_000) == 7  # every entry inside: read from the sum
    assert window.bytes_in(30, 15) == 5
    window.expire(10)
    assert window.bytes_in(30, 1_000) == 5
