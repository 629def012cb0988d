"""The single door: dedup, make the raw message durable, wake intake.

Whoever calls `accept` answers its sender only after it returns: that is what
"accepted means durable" rests on.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Awaitable, Callable

import aiosqlite
import structlog

from gateway.clock import Clock, stamp, utcnow
from gateway.errors import StoreUnavailable
from gateway.intake.facts import dedup_key, parse_headers
from gateway.model import RawMail
from gateway.store import queries
from gateway.store.db import Database

log = structlog.get_logger("gateway.accept")

Also = Callable[[aiosqlite.Connection, str], Awaitable[None]]  # (connection, dedup key)


class Accept:
    def __init__(
        self, db: Database, *, clock: Clock = utcnow, on_stored: Callable[[], None] = lambda: None
    ) -> None:
        self._db = db
        self._clock = clock
        self._on_stored = on_stored

    async def __call__(self, mail: RawMail, also: Also | None = None) -> int | None:
        """The stored message's id; None when it was a duplicate (stored before).

        `also` writes more in the same transaction, duplicate or not: the IMAP
        poller's checkpoint moves exactly when the message is durable.
        """
        key = dedup_key(parse_headers(mail.raw), mail.raw)
        try:
            async with self._db.transaction() as conn:
                stored = await queries.insert_message(conn, mail, key, stamp(self._clock()))
                if also is not None:
                    await also(conn, key)
        except sqlite3.Error as error:
            raise StoreUnavailable(f"the message could not be stored: {error}") from None
        if stored is None:
            log.info("message.duplicate", inbox=mail.inbox, dedup_key=key, source=mail.source)
        else:
            log.debug("message.accepted", id=stored, inbox=mail.inbox, source=mail.source)
            self._on_stored()
        return stored
