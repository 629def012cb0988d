"""A store made by an earlier version is brought up to date with its mail kept."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from gateway.store import queries
from gateway.store.db import Database, _migrations


async def test_mail_stored_before_raw_mail_had_its_own_table_is_kept(tmp_path: Path) -> None:
    path = tmp_path / "gateway.db"
    old = sqlite3.connect(path, isolation_level=None)
    for version, script in _migrations():
        if version >= 7:
            break
        old.executescript(f"BEGIN;\n{script}\nPRAGMA user_version = {version};\nCOMMIT;")
    old.execute(
        "INSERT INTO messages (inbox, dedup_key, source, envelope_to, raw, received_at)"
        " VALUES ('support@example.com', 'k@x', 'smtp', '[]', ?, '2026-11-30T00:00:00+00:00')",
        (b"Subject: kept\r\n\r\nbody\r\n",),
    )
    old.close()
    db = await Database.open(str(path))
    try:
        async with db.reading() as conn:
            stored = await queries.message(conn, 1)
            pending = await queries.pending_messages(conn, 10, 1000)
    finally:
        await db.close()
    assert stored is not None
    assert stored.mail.raw == b"Subject: kept\r\n\r\nbody\r\n"
    assert [p.id for p in pending] == [1]
