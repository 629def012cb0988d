"""One poller per connected mailbox: new UIDs → accept, then IDLE (or poll) for more.

A message's identity in a mailbox is UIDVALIDITY/UID. The checkpoint (the last
UID taken) moves in the same transaction that stores the message, so a crash
never skips one, and dedup makes a refetch harmless. A UIDVALIDITY change means
the UIDs were renumbered: the folder is scanned again and dedup keeps what is
already stored from being routed twice.

New mail is listed with its sizes first and fetched in batches bounded in count
and bytes. A message over smtp.max_message_size is taken by its header alone,
its size kept with it (`RawMail.full_size`): routed and alerted like any other, and passed.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import re
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import TypeVar

import aioimaplib
import structlog

from gateway.alerts import queue_keywords
from gateway.clock import Clock, stamp, utcnow
from gateway.config import ImapSection, Inbox
from gateway.imapsession import (
    Interrupted,
    MailboxError,
    name,
    open_mailbox,
    text,
    unless,
    unless_lost,
)
from gateway.ingress.accept import Accept, Also
from gateway.leading import while_leading
from gateway.model import RawMail
from gateway.store import queries
from gateway.store.db import Database, Tx

log = structlog.get_logger("gateway.imap")
T = TypeVar("T")

BATCH = 50  # messages per fetch and commit
BATCH_BYTES = 8 * 1024 * 1024  # and bytes: one fetch of 20 x 10 MB held the loop for seconds
# UIDs whose sizes one FETCH lists. aioimaplib handles the lines of what it has received
# by recursion, a frame a line: a listing of thousands raised RecursionError, the session
# died, and a mailbox with a backlog that large was never read.
LIST_CHUNK = 200
IDLE_RENEW_SECONDS = 25 * 60  # servers may drop an IDLE after 30 minutes (RFC 2177)
TIMEOUT_SECONDS = 30.0
FIRST_RETRY_SECONDS = 1.0
MAX_RETRY_SECONDS = 300.0

_UID = re.compile(rb"\bUID (\d+)")
_SIZE = re.compile(rb"\bRFC822\.SIZE (\d+)")
_INTERNALDATE = re.compile(rb"INTERNALDATE \"([^\"]+)\"")


class MailboxPoller:
    def __init__(
        self,
        db: Database,
        inbox: Inbox,
        accept: Accept,
        *,
        max_size: int,
        clock: Clock = utcnow,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        assert inbox.imap is not None
        self._db = db
        self._inbox = inbox.address
        self._imap: ImapSection = inbox.imap
        self._accept = accept
        self._max_size = max_size  # smtp.max_message_size: larger mail is taken by its header
        self._clock = clock
        self._jitter = jitter
        self._stop = asyncio.Event()  # the daemon stops
        self._halt = asyncio.Event()  # polling stops: the daemon stops, or the lease is lost
        self.name = name(inbox.imap)
        self._log = log.bind(mailbox=self.name)  # every line names the mailbox it is about

    def stop(self) -> None:
        self._stop.set()
        self._halt.set()

    async def run(self) -> None:
        """Poll the mailbox. Daemons sharing a store (PostgreSQL) poll each mailbox from one
        process at a time: the one holding its lease; the others wait to take it over."""
        if not self._db.shared:
            return await self._poll()
        lease = self._db.sole(f"imap {self.name}")
        await while_leading(lease, self._stop, self._poll_while, self._log, "imap")

    async def _poll_while(self, lost: asyncio.Event) -> None:
        """Poll until the lease is `lost` (or the daemon stops)."""
        self._halt = lost
        if self._stop.is_set():
            lost.set()
        await self._poll()

    async def _poll(self) -> None:
        """Connect, take new mail, wait for more; reconnect with backoff on any failure."""
        delay = FIRST_RETRY_SECONDS
        with structlog.contextvars.bound_contextvars(inbox=self._inbox):
            while not self._halt.is_set():
                try:
                    await self._until_stopped(self._session())
                    delay = FIRST_RETRY_SECONDS
                except (OSError, TimeoutError, MailboxError, aioimaplib.Abort) as error:
                    wait = delay * (0.5 + self._jitter())  # jitter: mailboxes do not retry in step
                    self._log.warning(
                        "imap.unavailable",
                        reason=_sentence(error),
                        retry_in=round(wait, 1),
                    )
                    await self._sleep(wait)
                    delay = min(delay * 2, MAX_RETRY_SECONDS)
                except Exception:  # a bug: keep the daemon and the other mailboxes up
                    self._log.exception("imap.failed")
                    await self._sleep(delay)
                    delay = min(delay * 2, MAX_RETRY_SECONDS)

    async def _until_stopped(self, session: Awaitable[None]) -> None:
        """Run the session; on stop, cancel it wherever it waits (a slow login, say).

        Cancelling is safe: a message is acknowledged to nobody, and its
        checkpoint moves only with its commit, so it is fetched again next time.
        """
        try:
            await unless(session, self._halt, "stopping")
        except Interrupted:
            if not self._halt.is_set():
                raise  # the link was lost inside the session: back off and reconnect

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._halt.wait(), seconds)

    async def _session(self) -> None:
        async with open_mailbox(self._imap) as box:
            cursor = await self._cursor(box.uidvalidity, box.uidnext)
            idle = self._imap.mode == "idle" and box.client.has_capability("IDLE")
            self._log.info(
                "imap.connected",
                uidvalidity=box.uidvalidity,
                last_uid=cursor.last_uid,
                mode="idle" if idle else "poll",
                keywords=box.keywords,
            )
            while not self._halt.is_set() and not box.lost.is_set():
                cursor = await self._take_new(box.client, cursor, box.lost)
                if idle:
                    await self._idle(box.client, box.lost)
                else:
                    await self._sleep(self._imap.poll_interval)
                    if not box.lost.is_set():
                        await unless_lost(box.client.noop(), box.lost)
            if box.lost.is_set() and not self._halt.is_set():
                raise OSError("the connection was lost")

    async def _cursor(self, uidvalidity: int, uidnext: int) -> queries.Cursor:
        async with self._db.transaction() as conn:
            cursor = await queries.imap_cursor(conn, self._inbox, self._imap.folder)
            if cursor is None:
                # First contact: "new" leaves what is already there alone.
                start = uidnext - 1 if self._imap.initial_sync == "new" else 0
                cursor = queries.Cursor(uidvalidity, start, stamp(self._clock()))
                self._log.info(
                    "imap.first_contact",
                    initial_sync=self._imap.initial_sync,
                    skipped_below_uid=start + 1,
                )
            elif cursor.uidvalidity != uidvalidity:
                self._log.warning(
                    "imap.uidvalidity_changed",
                    was=cursor.uidvalidity,
                    now=uidvalidity,
                    action="rescan; dedup keeps routed mail once",
                )
                # Kept with the cursor: a restart halfway through the rescan still knows
                # which mail is the old one.
                rescan = uidnext if self._imap.initial_sync == "new" else None
                cursor = queries.Cursor(uidvalidity, 0, cursor.first_connected_at, rescan)
            await queries.set_imap_cursor(conn, self._inbox, self._imap.folder, cursor)
        return cursor

    async def _take_new(
        self, client: aioimaplib.IMAP4, cursor: queries.Cursor, lost: asyncio.Event
    ) -> queries.Cursor:
        found = await unless_lost(client.uid_search(f"UID {cursor.last_uid + 1}:*"), lost)
        if found.result != "OK":
            raise MailboxError(f"the search failed: {text(found.lines)}")
        # "n:*" always names the highest UID, even one at or below n.
        uids = sorted(
            {
                int(u)
                for line in found.lines[:-1]
                for u in line.split()
                if u.isdigit() and int(u) > cursor.last_uid
            }
        )
        for start in range(0, len(uids), LIST_CHUNK):
            chunk = ",".join(map(str, uids[start : start + LIST_CHUNK]))
            listed = await unless_lost(
                client.uid("fetch", chunk, "(UID RFC822.SIZE INTERNALDATE)"), lost
            )
            if listed.result != "OK":
                raise MailboxError(f"the listing failed: {text(listed.lines)}")
            for batch in _batches(_listing(listed.lines), self._max_size):
                cursor = await self._take(client, cursor, batch, lost)
        return cursor

    async def _take(
        self,
        client: aioimaplib.IMAP4,
        cursor: queries.Cursor,
        batch: list[_Listed],
        lost: asyncio.Event,
    ) -> queries.Cursor:
        """Fetch one batch and store it in one commit."""
        header_only = batch[0].size > self._max_size  # such a message comes alone
        # Its header, at most the size limit of it: stored, routed, and never asked again.
        part = f"BODY.PEEK[HEADER]<0.{self._max_size}>" if header_only else "BODY.PEEK[]"
        uids = [message.uid for message in batch]
        fetched = await unless_lost(
            client.uid("fetch", ",".join(map(str, uids)), f"(UID {part})"), lost
        )
        if fetched.result != "OK":
            raise MailboxError(f"the fetch failed: {text(fetched.lines)}")
        got = _bodies(fetched.lines)
        self._log.debug(
            "imap.batch",
            messages=len(batch),
            bytes=sum(map(len, got.values())),
            header_only=header_only,
        )
        unread = [uid for uid in uids if uid not in got]
        readable = [m for m in batch if not unread or m.uid < unread[0]]
        if readable:
            # A header alone keeps the message's size, so its alert says why it is cut.
            full_size = batch[0].size if header_only else None
            cursor = await self._store(
                cursor, [(m.uid, m.date, got[m.uid], full_size) for m in readable]
            )
        if unread:
            # Never move the checkpoint past a message not read: the next
            # session asks again (one expunged meanwhile is simply gone).
            raise MailboxError(f"message UID {unread[0]} could not be read; trying again")
        return cursor

    async def _store(
        self,
        cursor: queries.Cursor,
        fetched: list[tuple[int, datetime | None, bytes, int | None]],
    ) -> queries.Cursor:
        """Store a fetched batch in one commit, each message with its checkpoint."""
        taken: list[int] = []
        items: list[tuple[RawMail, Also | None]] = []
        # INTERNALDATE has whole seconds: the first contact's own second is new.
        first_contact = datetime.fromisoformat(cursor.first_connected_at).replace(microsecond=0)
        for uid, internaldate, raw, full_size in fetched:
            old = (
                cursor.rescan_below_uid is not None
                and uid < cursor.rescan_below_uid
                and internaldate is not None
                and internaldate < first_contact
            )
            if not old:  # after a renumbering, mail from before the first contact stays alone
                taken.append(uid)
                items.append(
                    (
                        RawMail(self._inbox, raw, "imap", None, (self._inbox,), full_size),
                        self._checkpoint(cursor, uid),
                    )
                )
        stored = await self._accept.together(items) if items else []
        for uid, message in zip(taken, stored, strict=True):
            self._log.info("imap.taken", uid=uid, message=message, duplicate=message is None)
        moved = cursor.moved_to(fetched[-1][0])
        if not taken or taken[-1] != fetched[-1][0]:
            async with self._db.transaction() as conn:
                await queries.set_imap_cursor(conn, self._inbox, self._imap.folder, moved)
        return moved

    def _checkpoint(self, cursor: queries.Cursor, uid: int) -> Also:
        moved = cursor.moved_to(uid)

        async def write(conn: Tx, key: str) -> None:
            await queries.set_imap_cursor(conn, self._inbox, self._imap.folder, moved)
            await queries.add_imap_source(
                conn, self._inbox, self._imap.folder, cursor.uidvalidity, uid, key
            )
            # A copy of mail already routed (it came over SMTP first) gets its keywords now.
            routed = await queries.conversation_of_key(conn, self._inbox, key)
            if routed is not None:
                await queue_keywords(conn, routed, stamp(self._clock()))

        return write

    async def _idle(self, client: aioimaplib.IMAP4, lost: asyncio.Event) -> None:
        """Wait in IDLE until the mailbox changes, the renewal time, stop, or a lost link."""
        idle = await asyncio.wait_for(
            unless_lost(client.idle_start(timeout=IDLE_RENEW_SECONDS), lost), TIMEOUT_SECONDS
        )
        push = asyncio.ensure_future(client.wait_server_push(timeout=IDLE_RENEW_SECONDS + 60))
        stop = asyncio.ensure_future(self._halt.wait())
        gone = asyncio.ensure_future(lost.wait())
        try:
            await asyncio.wait({push, stop, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (push, stop, gone):
                task.cancel()
        if lost.is_set() or self._halt.is_set():
            return  # the session ends here; closing it ends the IDLE too
        client.idle_done()
        await asyncio.wait_for(idle, TIMEOUT_SECONDS)


@dataclass(frozen=True)
class _Listed:
    """A new message as the listing names it, before it is fetched."""

    uid: int
    size: int  # RFC822.SIZE
    date: datetime | None  # INTERNALDATE


def _listing(lines: list[bytes | bytearray]) -> list[_Listed]:
    """The messages of a `UID RFC822.SIZE INTERNALDATE` FETCH response, in UID order.

    A FETCH line without a size is the server telling of another change (a flag
    set by the keyword writer, say), not an answer.
    """
    found = []
    for line in lines[:-1]:
        uid, size = _UID.search(line), _SIZE.search(line)
        if b"FETCH" not in line or uid is None or size is None:
            continue
        date = _INTERNALDATE.search(line)
        when: datetime | None = None
        if date is not None:
            try:
                when = datetime.strptime(date.group(1).decode(), "%d-%b-%Y %H:%M:%S %z")
            except ValueError:
                when = None
        found.append(_Listed(int(uid.group(1)), int(size.group(1)), when))
    return sorted(found, key=lambda message: message.uid)


def _batches(new: list[_Listed], max_size: int) -> Iterator[list[_Listed]]:
    """At most BATCH messages and BATCH_BYTES each (a larger message alone); a message
    over `max_size` alone too, since only its header is fetched."""
    batch: list[_Listed] = []
    total = 0
    for message in new:
        if message.size > max_size:
            if batch:
                yield batch
            yield [message]
            batch, total = [], 0
            continue
        if batch and (len(batch) == BATCH or total + message.size > BATCH_BYTES):
            yield batch
            batch, total = [], 0
        batch.append(message)
        total += message.size
    if batch:
        yield batch


def _bodies(lines: list[bytes | bytearray]) -> dict[int, bytes]:
    """UID → the fetched literal (the message, or its header) of a FETCH response."""
    found = {}
    for index, line in enumerate(lines[:-1]):
        if not isinstance(line, bytes) or b"FETCH" not in line:
            continue
        following = lines[index + 1]
        uid = _UID.search(line)
        if uid is not None and isinstance(following, bytearray):
            found[int(uid.group(1))] = bytes(following)
    return found


def _sentence(error: BaseException) -> str:
    if isinstance(error, ConnectionRefusedError):
        return "the server refused the connection (is it running?)"
    if isinstance(error, TimeoutError):
        return "the server did not answer in time"
    return str(error) or type(error).__name__
