"""Accept keeps megabytes of mail off the event loop every SMTP session shares."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.ingress.accept import GROUP_BYTES, Accept
from gateway.model import RawMail
from gateway.store.db import Database

INBOX = "support@example.com"
SIZE = 1_000_000  # dedup_key reads mail this size on the loop: every one arrives at once


def big(n: int) -> RawMail:
    head = f"Subject: big {n}\r\nMessage-ID: <big-{n}@example.org>\r\n\r\n".encode()
    return RawMail(INBOX, head + b"x" * (SIZE - len(head)), "smtp", "c@example.org", (INBOX,))


@pytest.fixture
async def traced(tmp_path: Path) -> AsyncIterator[tuple[Database, list[tuple[str, int]]]]:
    """A store, and each statement run on it from now on with the thread that ran it."""
    db = await Database.open(str(tmp_path / "gateway.db"))
    statements: list[tuple[str, int]] = []
    await db.trace(lambda sql: statements.append((sql[:40], threading.get_ident())))
    yield db, statements
    await db.close()


async def test_accept_inserts_the_raw_mail_off_the_loops_thread(
    traced: tuple[Database, list[tuple[str, int]]],
) -> None:
    db, statements = traced
    assert await Accept(db)(big(1)) is not None
    inserts = [thread for sql, thread in statements if sql.startswith("INSERT INTO raw_mail")]
    assert inserts and threading.get_ident() not in inserts


async def test_a_burst_over_the_byte_budget_is_committed_in_more_than_one_transaction(
    traced: tuple[Database, list[tuple[str, int]]],
) -> None:
    db, statements = traced
    door = Accept(db)
    ids = await asyncio.gather(*(door(big(n)) for n in range(GROUP_BYTES // SIZE + 2)))
    assert None not in ids and len(set(ids)) == len(ids)
    assert sum(sql == "COMMIT" for sql, _ in statements) >= 2
