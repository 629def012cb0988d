"""Tests read the store as it is, whichever it is (tests/conftest.py runs the end-to-end
and integration tests on each).

`StoreReader` runs the tests' SQL, written as the store's is with `?` marks, blocking:
sqlite3 for a file, and for PostgreSQL asyncpg on a loop of its own thread (a test may
hold a running loop of its own).
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import asyncpg

from gateway.store.db import is_postgres
from gateway.store.postgres import WRITE_LOCK, numbered


class StoreReader:
    def __init__(self, database: str) -> None:
        self.database = database
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._conn: asyncpg.Connection | None = None
        self._lock = threading.Lock()

    def query(self, sql: str, args: tuple[Any, ...] = ()) -> list[Any]:
        """Rows by column name or position (sqlite3.Row or asyncpg.Record); a write is
        committed at once."""
        if not is_postgres(self.database):
            with sqlite3.connect(self.database, timeout=10) as conn:
                conn.row_factory = sqlite3.Row
                return list(conn.execute(sql, args))
        with self._lock:
            return self._run(self._fetch(sql, args))

    async def _fetch(self, sql: str, args: tuple[Any, ...]) -> list[Any]:
        if self._conn is None or self._conn.is_closed():
            self._conn = await asyncpg.connect(self.database)
        return list(await self._conn.fetch(numbered(sql), *args))

    def _run(self, coroutine: Any) -> Any:
        if self._loop is None:
            self._loop = asyncio.new_event_loop()
            self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
            self._thread.start()
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(30)

    def close(self) -> None:
        if self._loop is None:
            return
        if self._conn is not None:
            self._run(self._conn.close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        assert self._thread is not None
        self._thread.join(10)
        self._loop.close()
        self._loop = None


@contextmanager
def write_lock_held(database: str) -> Iterator[None]:
    """Another process holds up every writer meanwhile: SQLite's write lock; PostgreSQL's
    write lock, and the messages table (accept's inserts take no write lock there)."""
    if not is_postgres(database):
        blocker = sqlite3.connect(database, timeout=1)
        blocker.execute("PRAGMA busy_timeout = 0")
        blocker.execute("BEGIN EXCLUSIVE")
        try:
            yield
        finally:
            blocker.rollback()
            blocker.close()
        return
    holder = StoreReader(database)
    holder.query("BEGIN")
    holder.query("LOCK TABLE messages IN EXCLUSIVE MODE")
    holder.query("SELECT pg_advisory_xact_lock(?)", (WRITE_LOCK,))
    try:
        yield
    finally:
        holder.close()  # its session ends, its transaction and locks with it


def begins_a_write(sql: str) -> bool:
    """Whether a traced statement (`Database.trace`) begins a write transaction: SQLite's
    BEGIN IMMEDIATE, or the write lock every PostgreSQL writer takes first."""
    return sql == "BEGIN IMMEDIATE" or "pg_advisory_xact_lock" in sql
