"""The single door: dedup, make the raw message durable, wake intake.

Whoever calls `accept` answers its sender only after it returns: that is what
"accepted means durable" rests on. Callers that arrive while a commit is being
made durable wait for the next one, which carries all of them (group commit):
one fsync serves a whole burst, and still no caller hears back before its own
message is on disk.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import structlog

from gateway.clock import Clock, stamp, utcnow
from gateway.errors import StatementFailed, StoreUnavailable
from gateway.intake.facts import dedup_key
from gateway.model import RawMail
from gateway.store import queries
from gateway.store.db import Database, Tx

log = structlog.get_logger("gateway.accept")

Also = Callable[[Tx, str], Awaitable[None]]  # (connection, dedup key)

# Messages per commit. SQLite binds at most 32,766 values; each message takes 7.
GROUP_LIMIT = 256
# Raw bytes per commit, unless one caller's mail alone is more: a caller waits for its own
# mail and at most this much of others' to be written, and sqlite3 copies each value it
# binds holding the GIL, which the loop's thread needs too.
GROUP_BYTES = 8 * 1024 * 1024
OFF_LOOP_BYTES = 1024 * 1024


@dataclass
class _Unit:
    """Mail that must be committed together, and the caller waiting for its ids."""

    mails: list[tuple[RawMail, str]]  # (mail, dedup key)
    also: list[Also | None]
    done: asyncio.Future[list[int | None]]

    @property
    def size(self) -> int:
        return sum(len(mail.raw) for mail, _ in self.mails)


class Accept:
    def __init__(
        self, db: Database, *, clock: Clock = utcnow, on_stored: Callable[[], None] = lambda: None
    ) -> None:
        self._db = db
        self._clock = clock
        self.on_stored = on_stored
        self._waiting: deque[_Unit] = deque()
        self._writer: asyncio.Task[None] | None = None

    def busy(self) -> bool:
        """Mail is being committed or waits to be: a burst is on."""
        return self._writer is not None and not self._writer.done()

    async def __call__(self, mail: RawMail, also: Also | None = None) -> int | None:
        """The stored message's id; None when it was a duplicate (stored before).

        `also` writes more in the same transaction, duplicate or not: the IMAP
        poller's checkpoint moves exactly when the message is durable.
        """
        return (await self.together([(mail, also)]))[0]

    async def together(self, items: Sequence[tuple[RawMail, Also | None]]) -> list[int | None]:
        """Store every item in one transaction (all of them or none); their ids."""
        unit = _Unit(
            mails=[(mail, await _dedup_key(mail.raw)) for mail, _ in items],
            also=[also for _, also in items],
            done=asyncio.get_running_loop().create_future(),
        )
        self._waiting.append(unit)
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write())
        ids = await unit.done
        for (mail, key), stored in zip(unit.mails, ids, strict=True):
            if stored is None:
                log.info("message.duplicate", inbox=mail.inbox, dedup_key=key, source=mail.source)
            else:
                log.debug("message.accepted", id=stored, inbox=mail.inbox, source=mail.source)
        return ids

    async def _write(self) -> None:
        """Commit what waits, group after group, until nothing does."""
        while self._waiting:
            group = [self._waiting.popleft()]
            count, size = len(group[0].mails), group[0].size
            while self._waiting:
                unit = self._waiting[0]
                if count + len(unit.mails) > GROUP_LIMIT or size + unit.size > GROUP_BYTES:
                    break
                count, size = count + len(unit.mails), size + unit.size
                group.append(self._waiting.popleft())
            try:
                results = await self._commit(group)
            except StatementFailed as error:
                _fail(group, f"the message could not be stored: {error}")
                continue
            except StoreUnavailable as error:
                _fail(group, str(error))
                continue
            except asyncio.CancelledError:
                _fail(group, "the gateway stopped before the message was stored")
                raise
            except Exception as error:  # a bug: each caller answers for it (SMTP: 451)
                for unit in group:
                    if not unit.done.done():
                        unit.done.set_exception(error)
                continue
            for unit, ids in zip(group, results, strict=True):
                if not unit.done.done():  # its caller may have gone meanwhile
                    unit.done.set_result(ids)
            if any(stored is not None for ids in results for stored in ids):
                self.on_stored()

    async def _commit(self, group: list[_Unit]) -> list[list[int | None]]:
        # Not ordered with the writers that route: new mail's rows are its own (a message
        # is kept once by its unique key), and no commit of mail waits on a routing one.
        async with self._db.transaction(ordered=False) as conn:
            flat = [mail for unit in group for mail in unit.mails]
            ids = await queries.insert_messages(conn, flat, stamp(self._clock()))
            results = []
            for unit in group:
                results.append(ids[: len(unit.mails)])
                ids = ids[len(unit.mails) :]
                for (_, key), also in zip(unit.mails, unit.also, strict=True):
                    if also is not None:
                        await also(conn, key)
        return results


async def _dedup_key(raw: bytes) -> str:
    # A header block of megabytes (a header bomb at the size limit) takes most of a
    # second to read: off the loop, which every SMTP session and intake share.
    if len(raw) <= OFF_LOOP_BYTES:
        return dedup_key(raw)
    return await asyncio.to_thread(dedup_key, raw)


def _fail(group: list[_Unit], reason: str) -> None:
    for unit in group:
        if not unit.done.done():
            unit.done.set_exception(StoreUnavailable(reason))
