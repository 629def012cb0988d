"""Per-client limits: connections counted per address, messages by a refilling allowance."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from gateway.ingress.limits import ClientLimits


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_connections_are_counted_per_address_and_given_back() -> None:
    limits = ClientLimits(connections=2, per_minute=0)
    assert limits.connect("192.0.2.1") and limits.connect("192.0.2.1")
    assert not limits.connect("192.0.2.1")
    assert limits.connect("192.0.2.2")  # another address has its own share
    limits.disconnect("192.0.2.1")
    assert limits.connect("192.0.2.1")


def test_zero_turns_both_limits_off() -> None:
    limits = ClientLimits(connections=0, per_minute=0)
    assert all(limits.connect("192.0.2.1") for _ in range(1000))
    assert all(limits.message("192.0.2.1") for _ in range(100_000))


@given(
    per_minute=st.integers(1, 600),
    gaps=st.lists(st.floats(0, 120, allow_nan=False), min_size=1, max_size=300),
)
def test_no_client_gets_more_than_its_allowance_plus_what_refilled(
    per_minute: int, gaps: list[float]
) -> None:
    clock = Clock()
    limits = ClientLimits(connections=0, per_minute=per_minute, now=clock)
    taken: list[float] = []
    for gap in gaps:
        clock.now += gap
        if limits.message("192.0.2.1"):
            taken.append(clock.now)
    # Over any stretch of time, a full allowance plus the refill in that time, at most.
    for i, start in enumerate(taken):
        for j in range(i, len(taken)):
            assert j - i + 1 <= per_minute + (taken[j] - start) * per_minute / 60 + 1e-6


def test_a_client_that_waits_a_minute_has_its_whole_allowance_again() -> None:
    clock = Clock()
    limits = ClientLimits(connections=0, per_minute=3, now=clock)
    assert [limits.message("c") for _ in range(4)] == [True, True, True, False]
    clock.now += 20
    assert limits.message("c") and not limits.message("c")  # a third of a minute: one more
    clock.now += 60
    assert [limits.message("c") for _ in range(4)] == [True, True, True, False]


def test_memory_is_bounded_by_forgetting_clients_whose_allowance_is_full() -> None:
    clock = Clock()
    limits = ClientLimits(connections=0, per_minute=10, now=clock)
    for n in range(10_001):
        limits.message(f"client-{n}")
    clock.now += 61
    limits.message("one more")
    assert len(limits._buckets) == 1
