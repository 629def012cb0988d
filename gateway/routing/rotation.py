"""Round-robin: the next available agent after the last one served, cyclically."""

from __future__ import annotations

from collections.abc import Container, Iterator, Sequence

GLOBAL = "round_robin"


def team_key(team: str) -> str:
    return f"team:{team}"


def turn(order: Sequence[str], last: str | None) -> Iterator[str]:
    """The agents in the order their turns come, after the last one served.

    When the last one served is no longer in the order (the list changed), the
    turn starts again from the top.
    """
    start = order.index(last) + 1 if last in order else 0
    for step in range(len(order)):
        yield order[(start + step) % len(order)]


def next_agent(order: Sequence[str], last: str | None, available: Container[str]) -> str | None:
    """Unavailable agents are skipped, not lost: their turn comes when they are back."""
    return next((agent for agent in turn(order, last) if agent in available), None)
