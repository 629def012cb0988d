"""An IMAP session on a connected mailbox: connect, log in, select. Used by the
poller (ingress) and by the keyword writer (outbox), each with its own session."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import re
import ssl
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TypeVar

import aioimaplib
import structlog

from gateway import oauth
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
        if imap.starttls:
            await unless_lost(_start_tls(client, host), lost)
        await unless_lost(_log_in(client, imap), lost)
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
        await _close(client, imap, lost)


async def _start_tls(client: aioimaplib.IMAP4, host: str) -> None:
    """STARTTLS (RFC 3501 6.2.1): the connection made TLS, the certificate checked against
    the system's authorities and `host`, before anything secret crosses it.

    aioimaplib 2.0 has the command in its table but no call for it: it is sent through
    the protocol's `execute`, and the TLS transport given to the protocol, as its
    `connection_made` would. pyproject pins aioimaplib below 2.1, and the STARTTLS tests
    against Dovecot fail if those change."""
    if not client.has_capability("STARTTLS"):
        raise MailboxError("the server does not offer STARTTLS")
    protocol = client.protocol
    command = aioimaplib.Command("STARTTLS", protocol.new_tag(), loop=protocol.loop)
    answer = await asyncio.wait_for(protocol.execute(command), client.timeout)
    if answer.result != "OK":
        raise MailboxError(f"the server refused STARTTLS: {text(answer.lines)}")
    protocol.transport = await asyncio.get_running_loop().start_tls(
        protocol.transport, protocol, ssl.create_default_context(), server_hostname=host
    )
    await asyncio.wait_for(protocol.capability(), client.timeout)  # asked again, over TLS


async def _log_in(client: aioimaplib.IMAP4, imap: ImapSection) -> None:
    if imap.auth == "password":
        login = await client.login(imap.username, imap.secret())
        if login.result != "OK":
            raise MailboxError(f"the server refused the login: {text(login.lines)}")
        return
    if not client.has_capability("AUTH=XOAUTH2"):  # a server for passwords only, say
        raise MailboxError("the server does not offer XOAUTH2 (AUTH=XOAUTH2)")
    try:
        token = await oauth.access_token(imap)
        answer = await _xoauth2(client, imap.username, token)
        if answer.result != "OK":  # revoked, or expired early: one new token before giving up
            answer = await _xoauth2(
                client, imap.username, await oauth.access_token(imap, refused=token)
            )
    except oauth.TokenError as error:
        raise MailboxError(str(error)) from None
    if answer.result != "OK":
        raise MailboxError(f"the server refused the OAuth 2.0 token: {_refusal(answer.lines)}")


class _Sasl(aioimaplib.Command):  # type: ignore[misc]
    """AUTHENTICATE whose failure comes as a challenge: Dovecot and Google put the error
    in a `+` line and give their NO only after an empty answer to it, which
    aioimaplib's own xoauth2 never sends (it waits out its timeout instead)."""

    def __init__(self, protocol: aioimaplib.IMAP4ClientProtocol, *args: str) -> None:
        super().__init__("AUTHENTICATE", protocol.new_tag(), *args, loop=protocol.loop)
        self._protocol = protocol

    def append_to_resp(self, line: bytes, result: str = "Pending") -> None:
        super().append_to_resp(line, result)
        if result == "Pending" and line.startswith(b"+"):
            self._protocol.send("")  # the empty answer: "go on and say no"


async def _xoauth2(client: aioimaplib.IMAP4, user: str, token: str) -> aioimaplib.Response:
    """AUTHENTICATE XOAUTH2; the SASL string (the token, in base64) is kept out of
    aioimaplib's debug log, where its own xoauth2 hides only the token's plain form."""
    sasl = base64.b64encode(f"user={user}\1auth=Bearer {token}\1\1".encode()).decode()
    protocol = client.protocol
    answer: aioimaplib.Response = await asyncio.wait_for(
        protocol.execute(_Sasl(protocol, "XOAUTH2", sasl), scrub=sasl), client.timeout
    )
    if answer.result == "OK":
        protocol.state = aioimaplib.AUTH
    return answer


def _refusal(lines: list[bytes | bytearray]) -> str:
    """The server's NO, and the status its challenge gave (`invalid_token`, `401`...)."""
    said = [line for line in lines if not line.startswith(b"+")]
    status = None
    for line in lines:
        if line.startswith(b"+"):
            with contextlib.suppress(ValueError):
                challenge = json.loads(base64.b64decode(bytes(line[1:]).strip()))
                status = challenge.get("status") if isinstance(challenge, dict) else None
    return text(said) + (f" (status {status})" if isinstance(status, str) else "")


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


async def _close(client: aioimaplib.IMAP4, imap: ImapSection, lost: asyncio.Event) -> None:
    """Say goodbye if the server answers in time; close the link whatever happens (a stop
    cancelling the session while it says goodbye included). A link the server closed
    (its BYE) takes no goodbye: nobody would answer it."""
    try:
        if not lost.is_set():
            await asyncio.wait_for(unless_lost(_logout(client), lost), GOODBYE_SECONDS)
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
