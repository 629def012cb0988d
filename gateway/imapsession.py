"""An IMAP session on a connected mailbox: connect, log in, select. Used by the
poller (ingress) and by the keyword writer (outbox), each with its own session."""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TypeVar

import aioimaplib
import structlog

from gateway.config import ImapSection

log = structlog.get_logger("gateway.imap")

TIMEOUT_SECONDS = 30.0
GOODBYE_SECONDS = 1.0  # LOGOUT is answered at once: a stop is not held by a server that hangs
T = TypeVar("T")

_UIDVALIDITY = re.compile(rb"\[UIDVALIDITY (\d+)\]")
_UIDNEXT = re.compile(rb"\[UIDNEXT (\d+)\]")
_PERMANENTFLAGS = re.compile(rb"\[PERMANENTFLAGS \(([^)]*)\)\]")


class MailboxError(Exception):
    """The server refused something (login, select...): said in a sentence."""


@dataclass
class Mailbox:
    client: aioimaplib.IMAP4
    uidvalidity: int
    uidnext: int
    keywords: bool  # PERMANENTFLAGS holds \\*: new keywords can be stored
    lost: asyncio.Event = field(default_factory=asyncio.Event)


@asynccontextmanager
async def open_mailbox(imap: ImapSection) -> AsyncIterator[Mailbox]:
    lost = asyncio.Event()
    host, port = imap.host, imap.port_number
    client: aioimaplib.IMAP4
    if imap.tls:
        client = aioimaplib.IMAP4_SSL(host=host, port=port, timeout=TIMEOUT_SECONDS)
    else:
        client = aioimaplib.IMAP4(host=host, port=port, timeout=TIMEOUT_SECONDS)
    client.protocol.conn_lost_cb = lambda _error: lost.set()  # IMAP4_SSL does not take it
    try:
        await unless_lost(client.wait_hello_from_server(), lost)
        login = await unless_lost(client.login(imap.username, imap.secret()), lost)
        if login.result != "OK":
            raise MailboxError(f"the server refused the login: {text(login.lines)}")
        selected = await unless_lost(client.select(imap.folder), lost)
        if selected.result != "OK":
            raise MailboxError(f"cannot open folder {imap.folder!r}: {text(selected.lines)}")
        uidvalidity = number(_UIDVALIDITY, selected.lines)
        if uidvalidity is None:
            raise MailboxError("the server gave no UIDVALIDITY")
        flags = next(
            (m.group(1) for line in selected.lines if (m := _PERMANENTFLAGS.search(bytes(line)))),
            b"",
        )
        yield Mailbox(
            client,
            uidvalidity,
            number(_UIDNEXT, selected.lines) or 1,
            b"\\*" in flags.split(),
            lost,
        )
    finally:
        await _close(client, imap)


class Interrupted(OSError):
    """What was awaited was cancelled because an event (stop, a lost link) came first."""


async def unless(work: Awaitable[T], event: asyncio.Event, reason: str) -> T:
    """The work's result; if `event` is set first, the work is cancelled and Interrupted raised."""
    task = asyncio.ensure_future(work)
    waiter = asyncio.ensure_future(event.wait())
    try:
        await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()
    if not task.done():
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task  # let its cleanup (closing a session, say) run
        raise Interrupted(reason)
    return task.result()


async def unless_lost(command: Awaitable[T], lost: asyncio.Event) -> T:
    """The command's answer; OSError as soon as the connection is gone instead of a timeout."""
    return await unless(command, lost, "the server closed the connection")


def number(pattern: re.Pattern[bytes], lines: list[bytes | bytearray]) -> int | None:
    for line in lines:
        found = pattern.search(bytes(line))
        if found:
            return int(found.group(1))
    return None


def name(imap: ImapSection) -> str:
    """How logs name the mailbox."""
    return f"{imap.username}@{imap.host}/{imap.folder}"


def text(lines: list[bytes | bytearray]) -> str:
    return " ".join(bytes(line).decode("utf-8", "replace") for line in lines).strip()


async def _close(client: aioimaplib.IMAP4, imap: ImapSection) -> None:
    """Say goodbye if the server answers in time; close the link whatever happens (a stop
    cancelling the session while it says goodbye included)."""
    try:
        await asyncio.wait_for(_logout(client), GOODBYE_SECONDS)
    except TimeoutError:
        log.warning("imap.logout_unanswered", mailbox=name(imap), waited=GOODBYE_SECONDS)
    except Exception:  # the link is gone already: nothing left to say goodbye on
        pass
    finally:
        transport = client.protocol.transport if client.protocol else None
        if transport is not None:
            transport.close()


async def _logout(client: aioimaplib.IMAP4) -> None:
    if client.has_pending_idle():
        client.idle_done()  # else the server answers nothing until DONE
    if client.get_state() in ("AUTH", "SELECTED"):
        # aioimaplib sends it once the command before (the IDLE) has its tagged answer.
        await client.logout()
