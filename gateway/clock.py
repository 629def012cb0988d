"""Time is passed in, so tests are exact; stored as ISO 8601 UTC text."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

Clock = Callable[[], datetime]


def utcnow() -> datetime:
    return datetime.now(UTC)


def stamp(moment: datetime) -> str:
    """ISO 8601 in UTC with a fixed width, so text order is time order in SQL."""
    return moment.astimezone(UTC).isoformat(timespec="microseconds")
