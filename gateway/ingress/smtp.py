"""The SMTP relay: aiosmtpd's protocol served on the daemon's own event loop.

Refusals happen as early as SMTP allows: 554 at MAIL/RCPT for a client outside
`allowed_networks` (as Postfix does with delayed rejection), 550 at RCPT for an
address that is no inbox, 552 for an oversized message (aiosmtpd enforces SIZE).
"""

from __future__ import annotations

import asyncio
import ipaddress
import weakref
from collections.abc import Callable
from typing import Any, AnyStr

import structlog
from aiosmtpd.smtp import SMTP, Envelope, Session

from gateway.addresses import normalize_address
from gateway.config import Settings
from gateway.errors import GatewayError, StoreUnavailable
from gateway.ingress.accept import Accept
from gateway.intake.facts import clean_text
from gateway.model import RawMail

log = structlog.get_logger("gateway.smtp")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class Relay:
    """aiosmtpd handler: hooks are looked up by exact name (handle_MAIL, handle_RCPT...)."""

    def __init__(self, settings: Settings, accept: Accept) -> None:
        self._accept = accept
        self._inboxes = settings.inbox_map()
        self._networks: list[Network] = settings.smtp.networks()
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self.closing = False

    def _allowed(self, session: Session) -> bool:
        peer = session.peer
        if not isinstance(peer, tuple) or not peer:
            return False
        try:
            address = ipaddress.ip_address(str(peer[0]).split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
            address = address.ipv4_mapped
        return any(address in network for network in self._networks)

    def _refusal(self, session: Session) -> str | None:
        if self.closing:
            return "421 4.3.2 Shutting down, try again later"
        if not self._allowed(session):
            return "554 5.7.1 Your address may not send mail through this gateway"
        return None

    async def handle_MAIL(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        mail_options: list[str],
    ) -> str:
        refusal = self._refusal(session)
        if refusal:
            return refusal
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_RCPT(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        refusal = self._refusal(session)
        if refusal:
            return refusal
        if normalize_address(address) not in self._inboxes:
            return f"550 5.1.1 <{address}>: no inbox here by that address"
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        raw = envelope.original_content
        if not isinstance(raw, bytes | bytearray):
            return "451 4.3.0 No message content was received"
        # aiosmtpd hands over 8-bit envelope addresses as surrogates: make them storable.
        mail_from = clean_text(envelope.mail_from or "")
        sender = "" if mail_from in ("<>", "") else mail_from
        by_inbox: dict[str, list[str]] = {}
        for rcpt in envelope.rcpt_tos:
            inbox = self._inboxes[normalize_address(rcpt)]
            by_inbox.setdefault(inbox, []).append(clean_text(rcpt))
        self._in_flight += 1
        self._idle.clear()
        try:
            for inbox, recipients in by_inbox.items():
                await self._accept(RawMail(inbox, bytes(raw), "smtp", sender, tuple(recipients)))
        except StoreUnavailable as error:
            log.error("smtp.store_failed", error=str(error), peer=str(session.peer))
            return "451 4.3.0 The message could not be stored; please try again later"
        except Exception:  # not the sender's fault, and never a traceback on the wire
            log.exception("smtp.accept_failed", peer=str(session.peer))
            return "451 4.3.0 The message could not be stored; please try again later"
        finally:
            self._in_flight -= 1
            if self._in_flight == 0:
                self._idle.set()
        return "250 2.0.0 OK: queued"

    async def drained(self) -> None:
        """Wait for the DATA transactions in flight to be answered."""
        await self._idle.wait()


class _Session(SMTP):
    """aiosmtpd's session, with the enhanced status code RFC 3463 gives a too-big message."""

    async def push(self, status: AnyStr) -> None:
        if isinstance(status, str) and status.startswith("552 Error:"):
            await super().push("552 5.3.4 Message too big for this gateway")
        else:
            await super().push(status)


class SmtpServer:
    """Listening sockets and open sessions, on the daemon's loop."""

    def __init__(self, settings: Settings, relay: Relay) -> None:
        self._settings = settings
        self._relay = relay
        self._servers: list[asyncio.Server] = []
        self._sessions: weakref.WeakSet[SMTP] = weakref.WeakSet()

    def _protocol(self) -> SMTP:
        session = _Session(
            self._relay,
            data_size_limit=self._settings.smtp.max_message_size,
            # Stored as bytes, never decoded here: international addresses are fine.
            enable_SMTPUTF8=True,
            hostname=self._settings.gateway.hostname,
            ident="inbox gateway",
            loop=asyncio.get_running_loop(),
        )
        self._sessions.add(session)
        return session

    async def start(self) -> list[tuple[str, int]]:
        loop = asyncio.get_running_loop()
        bound = []
        factory: Callable[[], Any] = self._protocol
        for host, port in self._settings.smtp.endpoints():
            try:
                server = await loop.create_server(factory, host, port)
            except OSError as error:
                await self.stop(0)
                raise GatewayError(
                    f"cannot listen for SMTP on {host}:{port}: {error.strerror or error}"
                ) from None
            self._servers.append(server)
            for sock in server.sockets:
                address = sock.getsockname()
                bound.append((str(address[0]), int(address[1])))
                log.info("smtp.listening", host=address[0], port=address[1])
        return bound

    async def stop(self, grace: float) -> None:
        """Stop listening, let DATA in flight finish (up to `grace` s), close the rest."""
        self._relay.closing = True
        for server in self._servers:
            server.close()
        try:
            await asyncio.wait_for(self._relay.drained(), grace)
        except TimeoutError:
            log.warning("smtp.drain_timeout", seconds=grace)
        for session in list(self._sessions):
            if session.transport is not None:
                session.transport.close()
