"""A task cancelled in the middle of the store's work leaves the connection fit for the next.

aiosqlite runs each statement on its own thread: a cancelled await does not stop
a BEGIN already handed to it, and the transaction it opens must not outlive the
task that asked for it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path

import pytest

from gateway.store.db import Database, Tx

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("how", ["reading", "transaction"])
async def test_a_task_cancelled_while_its_transaction_begins_leaves_none_open(
    tmp_path: Path, how: str
) -> None:
    db = await Database.open(str(tmp_path / "gateway.db"))
    try:
        opened: Callable[[], AbstractAsyncContextManager[Tx]] = getattr(db, how)

        async def reads() -> None:
            async with opened() as tx:
                await tx.one("SELECT 1")

        for _ in range(20):  # the cancel lands before, during or after the BEGIN
            task = asyncio.create_task(reads())
            await asyncio.sleep(0)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            async with db.transaction() as tx:
                assert await tx.one("SELECT count(*) FROM events") is not None
    finally:
        await db.close()
