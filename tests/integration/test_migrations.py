"""A store made by an earlier version is brought up to date with its mail kept."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from gateway.store import queries
from gateway.store.db import Database, migrations


async def test_mail_stored_before_raw_mail_had_its_own_table_is_kept(tmp_path: Path) -> None:
    path = tmp_path / "gateway.db"
    old = sqlite3.connect(path, isolation_level=None)
    for version, script in migrations("sqlite"):
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


async def test_making_messages_and_outbox_again_keeps_their_rows_and_references(
    tmp_path: Path,
) -> None:
    path = tmp_path / "gateway.db"
    old = sqlite3.connect(path, isolation_level=None)
    old.execute("PRAGMA foreign_keys = ON")
    for version, script in migrations("sqlite"):
        if version >= 11:
            break
        old.executescript(f"BEGIN;\n{script}\nPRAGMA user_version = {version};\nCOMMIT;")
    at = "2026-11-30T00:00:00+00:00"
    old.execute(
        "INSERT INTO conversations (inbox, subject, thread_subject, created_at, last_message_at)"
        " VALUES ('support@example.com', 's', 's', ?, ?)",
        (at, at),
    )
    old.execute(
        "INSERT INTO messages (inbox, dedup_key, source, envelope_to, received_at, state,"
        " conversation_id, size) VALUES ('support@example.com', 'k', 'smtp', '[]', ?, 'routed',"
        " 1, 4)",
        (at,),
    )
    old.execute("INSERT INTO raw_mail (message, raw) VALUES (1, x'0d0a0d0a')")
    old.execute(
        "INSERT INTO events (conversation_id, at, kind, actor) VALUES (1, ?, 'received', 'x')",
        (at,),
    )
    old.execute(
        "INSERT INTO outbox (kind, event_id, conversation_id, payload, created_at, due_at)"
        " VALUES ('alert', 1, 1, '{}', ?, ?)",
        (at, at),
    )
    old.close()
    db = await Database.open(str(path))
    try:
        async with db.reading() as conn:
            stored = await queries.message(conn, 1)
            lines = await queries.messages_of(conn, 1)
            due = await queries.next_due(conn)
    finally:
        await db.close()
    assert stored is not None and stored.mail.raw == b"\r\n\r\n"
    assert [line.id for line in lines] == [1]
    assert due == at
    check = sqlite3.connect(path)
    assert check.execute("PRAGMA foreign_key_check").fetchall() == []
    raw_mail = check.execute("SELECT sql FROM sqlite_master WHERE name = 'raw_mail'").fetchone()
    assert "REFERENCES messages (id)" in raw_mail[0]  # not the old table's name
