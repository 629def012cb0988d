"""The SMTP relay: aiosmtpd's protocol served on the daemon's own event loop.

Refusals happen as early as SMTP allows: 421 at the greeting to a client over
its connection limit (and to everyone while the gateway stops), 554 at MAIL/RCPT
for a client outside `allowed_networks` (as Postfix does with delayed
rejection), 451 at MAIL beyond a client's messages a minute, 550 at RCPT for an
address that is no inbox, 552 for an oversized message (aiosmtpd enforces
SIZE). STARTTLS when a certificate is configured; AUTH PLAIN/LOGIN only after
it, against the users file. Anything unexpected answers 451 with a reference the
log line carries too: an exception's text never goes to the client.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import errno
import functools
import ipaddress
import os
import secrets
import stat
import weakref
from collections.abc import Callable
from typing import Any, AnyStr, cast

import structlog
from aiosmtpd.smtp import MISSING, SMTP, Envelope, Session

from gateway.addresses import normalize_address
from gateway.config import Settings
from gateway.errors import GatewayError, StoreUnavailable
from gateway.ingress import users
from gateway.ingress.accept import Accept
from gateway.ingress.limits import ClientLimits
from gateway.ingress.smtpdata import TooBig, read_data
from gateway.intake.facts import clean_text
from gateway.model import RawMail

log = structlog.get_logger("gateway.smtp")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

# Per session. Mail commands are bounded by the client's rate instead; the rest
# cannot keep a session alive forever, nor guess passwords at leisure.
COMMAND_LIMITS = {"*": 50, "MAIL": 10**9, "RCPT": 10**9, "DATA": 10**9, "RSET": 10**9, "AUTH": 5}


class Pipelining:
    """An aiosmtpd handler's EHLO that offers PIPELINING (RFC 2920): aiosmtpd reads one
    command line at a time and answers it before reading the next, so a client's group of
    MAIL, RCPT and DATA is answered in order; a DATA after no accepted RCPT gets 503."""

    async def handle_EHLO(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        session.host_name = hostname  # the 5-argument hook's contract: aiosmtpd leaves it to us
        return [*responses[:-1], "250-PIPELINING", responses[-1]]


class Relay(Pipelining):
    """aiosmtpd handler: hooks are looked up by exact name (handle_MAIL, handle_RCPT...)."""

    def __init__(self, settings: Settings, accept: Accept) -> None:
        self._accept = accept
        # Per transaction, the inboxes its recipients named when RCPT accepted them: a
        # reload before DATA cannot take back what was promised.
        self._routes: weakref.WeakKeyDictionary[Envelope, dict[str, list[str]]] = (
            weakref.WeakKeyDictionary()
        )
        self.limits = ClientLimits(0, 0)
        self.reload(settings)
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self.closing = False

    def reload(self, settings: Settings) -> None:
        """Inboxes, allowed networks, users and limits, from the next command on."""
        self.prepare(settings)()

    def prepare(self, settings: Settings) -> Callable[[], None]:
        """`reload` in two: the users file is read now (in a thread, at a SIGHUP), and put
        to use by the call returned (on the loop)."""
        return functools.partial(self._use, settings, settings.smtp.users())

    def _use(self, settings: Settings, known: dict[str, users.Hashed]) -> None:
        self._inboxes = settings.inbox_map()
        self._networks: list[Network] = settings.smtp.networks()
        self._users = known
        self.limits.connections = settings.smtp.max_connections_per_client
        self.limits.per_minute = settings.smtp.max_messages_per_minute_per_client

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
            return CLOSING
        if not self._allowed(session):
            return "554 5.7.1 Your address may not send mail through this gateway"
        return None

    def greeting_refusal(self, client: str) -> str | None:
        """Why a new connection from `client` is turned away before its greeting; None: it
        is counted in."""
        if self.closing:
            return CLOSING
        if not self.limits.connect(client):
            return "421 4.7.0 Too many connections from your address; try again later"
        return None

    def closed(self, client: str) -> None:
        """A connection from `client` counted in has ended."""
        self.limits.disconnect(client)

    async def handle_AUTH(
        self, server: SMTP, session: Session, envelope: Envelope, args: list[str]
    ) -> str | None:
        """PLAIN or LOGIN (aiosmtpd has checked TLS and the mechanism), verified off the loop."""
        credentials = await _credentials(server, args)
        if credentials is None:
            return None  # the exchange was answered already (aborted, bad base64)
        name, password = credentials
        if not await asyncio.to_thread(users.verify, self._users, name, password):
            # The name, never the password: logs are read by more people than the users file.
            log.warning("smtp.auth_failed", user=name, peer=str(session.peer))
            return "535 5.7.8 Authentication credentials invalid"
        session.authenticated = True
        log.info("smtp.authenticated", user=name, peer=str(session.peer))
        return "235 2.7.0 Authentication successful"

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
        if not self.limits.message(client_of(session.peer)):
            log.warning("smtp.rate_limited", peer=str(session.peer))
            return "451 4.7.1 Too many messages from your address; try again in a minute"
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
        inbox = self._inboxes.get(normalize_address(address))
        if inbox is None:
            return f"550 5.1.1 <{address}>: no inbox here by that address"
        routes = self._routes.setdefault(envelope, {})
        routes.setdefault(inbox, []).append(clean_text(address))
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        """250 once the message is stored for every inbox its recipients named; else the
        first refusal (the sender sends it again; what was stored is kept once)."""
        answers = await self.store(session, envelope)
        return next((a for a in answers.values() if not a.startswith("250")), QUEUED)

    async def store(self, session: Session, envelope: Envelope) -> dict[str, str]:
        """Store the message once for each inbox its recipients named at RCPT; each
        inbox's answer (250 once committed, 451 when it could not be)."""
        raw = envelope.original_content
        by_inbox = self._routes.pop(envelope)  # a KeyError here is a bug: 451, never a loss
        if not isinstance(raw, bytes | bytearray):
            return dict.fromkeys(by_inbox, "451 4.3.0 No message content was received")
        # aiosmtpd hands over 8-bit envelope addresses as surrogates: make them storable.
        mail_from = clean_text(envelope.mail_from or "")
        sender = "" if mail_from in ("<>", "") else mail_from
        self._in_flight += 1
        self._idle.clear()
        answers = {}
        try:
            for inbox, recipients in by_inbox.items():
                mail = RawMail(inbox, bytes(raw), "smtp", sender, tuple(recipients))
                try:
                    await self._accept(mail)
                except StoreUnavailable as error:
                    log.error("smtp.store_failed", error=str(error), peer=str(session.peer))
                    answer = "451 4.3.0 The message could not be stored; please try again later"
                except Exception as error:  # answered, so that the next transaction can start
                    answer = internal_error(error, peer=str(session.peer))
                else:
                    answer = QUEUED
                answers[inbox] = answer
        finally:
            self._in_flight -= 1
            if self._in_flight == 0:
                self._idle.set()
        return answers

    def recipients(self, envelope: Envelope) -> dict[str, str]:
        """Each recipient RCPT accepted (as stored) → the inbox it named."""
        return {
            recipient: inbox
            for inbox, recipients in self._routes.get(envelope, {}).items()
            for recipient in recipients
        }

    async def drained(self) -> None:
        """Wait for the DATA transactions in flight to be answered."""
        await self._idle.wait()

    async def handle_exception(self, error: Exception) -> str:
        """aiosmtpd's answer to anything a hook (or aiosmtpd itself) raised."""
        return internal_error(error)


CLOSING = "421 4.3.2 Shutting down, try again later"
QUEUED = "250 2.0.0 OK: queued"


def internal_error(error: BaseException, **fields: str) -> str:
    """The 451 for a bug: not the sender's fault, worth a retry, and with a reference
    that finds the traceback in the log."""
    ref = secrets.token_hex(6)
    log.error("smtp.internal_error", ref=ref, exc_info=error, **fields)
    return f"451 4.3.0 Internal error, reference {ref}; please try again later"


def client_of(peer: object) -> str:
    """The client's address, without its port: what per-client limits count."""
    return str(peer[0]) if isinstance(peer, tuple) and peer else str(peer)


async def _credentials(server: SMTP, args: list[str]) -> tuple[str, bytes] | None:
    """(name, password) from an AUTH exchange; None once the client was answered."""
    if args[0].upper() == "PLAIN":
        blob = await _response(server, args, "")
        if blob is None:
            return None
        parts = blob.split(b"\0")
        if len(parts) != 3:
            await server.push("501 5.5.2 Cannot split the PLAIN response")
            return None
        return parts[1].decode("utf-8", "replace"), parts[2]
    login = await _response(server, args, "Username:")
    if login is None:
        return None
    password = await server.challenge_auth("Password:")
    if password is MISSING:
        return None
    return login.decode("utf-8", "replace"), bytes(password)


async def _response(server: SMTP, args: list[str], challenge: str) -> bytes | None:
    """The initial response given with AUTH, or the answer to a challenge."""
    if len(args) == 1:
        answer = await server.challenge_auth(challenge)
        return None if answer is MISSING else bytes(answer)
    try:
        return base64.b64decode(args[1], validate=True)
    except ValueError:
        await server.push("501 5.5.2 Cannot decode base64")
        return None


# aiosmtpd's own reply to a SIZE over the limit declared at MAIL is answered with RFC 3463's
# enhanced code instead. It is matched by text, aiosmtpd having no hook for it: pyproject
# pins aiosmtpd's tested versions, and tests/unit/test_library_hooks.py fails if it changes.
TOO_BIG_REPLIES = ("552 Error:",)
TOO_BIG = "552 5.3.4 Message too big for this gateway"
# The session's read buffer: a command line or a piece of DATA (smtpdata.py) at a time.
BUFFER_BYTES = 64 * 1024


class RelaySession(SMTP):
    """aiosmtpd's session, with the enhanced status code RFC 3463 gives a too-big message,
    a 421 instead of the greeting when the relay turns the connection away, the
    per-client connection count kept, and DATA read in pieces (smtpdata.py)."""

    _connected = False
    _refused = False
    _counted = False
    _client = ""

    # aiosmtpd sizes its read buffer by this: as DATA is read here, it bounds no mail line
    # (bare-LF mail is one long line, and lines over RFC 5321's 1,000 octets exist: only
    # the size limit refuses mail). Command lines keep aiosmtpd's own 512-octet limit.
    line_length_limit = BUFFER_BYTES

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # The first call is the connection, before aiosmtpd's greeting (STARTTLS makes a
        # second). A refused connection never becomes a session: aiosmtpd is not told of it.
        if not self._connected:
            self._connected = True
            self._client = client_of(transport.get_extra_info("peername"))
            refusal = self.event_handler.greeting_refusal(self._client)
            if refusal is not None:
                self._refused = True
                cast(asyncio.WriteTransport, transport).write(refusal.encode() + b"\r\n")
                transport.close()
                return
            self._counted = True
        super().connection_made(transport)

    def connection_lost(self, error: Exception | None) -> None:
        if self._refused:  # aiosmtpd never heard of it: nothing of its to end
            return
        if self._counted:
            self._counted = False
            self.event_handler.closed(self._client)
        super().connection_lost(error)

    async def push(self, status: AnyStr) -> None:
        if isinstance(status, str) and status.startswith(TOO_BIG_REPLIES):
            await super().push(TOO_BIG)
        else:
            await super().push(status)

    def for_each_recipient(self, status: str) -> str:
        """The answer DATA gives when the message as a whole is refused (LMTP: one a
        recipient)."""
        return status

    async def smtp_DATA(self, arg: str) -> None:
        # aiosmtpd's own DATA, with its checks in its order and its texts, but the section
        # read by smtpdata.py from the session's reader (`_reader`, pinned and guarded by
        # tests/unit/test_library_hooks.py).
        if await self.check_helo_needed() or await self.check_auth_needed("DATA"):
            return
        assert self.envelope is not None
        if not self.envelope.rcpt_tos:
            await self.push("503 Error: need RCPT command")
            return
        if arg:
            await self.push("501 Syntax: DATA")
            return
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        try:
            content = await read_data(self._reader, self.data_size_limit)
        except TooBig:
            status = self.for_each_recipient(TOO_BIG)
        else:
            self.envelope.original_content = self.envelope.content = content
            status = await self.event_handler.handle_DATA(self, self.session, self.envelope)
        self.envelope = Envelope()
        await self.push(status)


class SmtpServer:
    """Listening sockets and open sessions, on the daemon's loop."""

    door = "smtp"  # the word its log lines and errors use
    session_class: type[SMTP] = RelaySession

    def __init__(self, settings: Settings, relay: Relay) -> None:
        self._settings = settings
        self._relay = relay
        self._servers: list[asyncio.Server] = []
        self._paths: list[str] = []  # the unix sockets made, removed at the stop
        self._sessions: weakref.WeakSet[SMTP] = weakref.WeakSet()

    def endpoints(self) -> list[tuple[str, int] | str]:
        return list(self._settings.smtp.endpoints())

    def options(self) -> dict[str, Any]:
        """What aiosmtpd's session is made with, beside the shared settings."""
        smtp = self._settings.smtp
        return {
            "tls_context": smtp.tls_context(),
            "auth_required": smtp.require_auth,
            "auth_require_tls": True,
        }

    def _protocol(self, options: dict[str, Any]) -> SMTP:
        session = self.session_class(
            self._relay,
            data_size_limit=self._settings.smtp.max_message_size,
            # Stored as bytes, never decoded here: international addresses are fine.
            enable_SMTPUTF8=True,
            hostname=self._settings.gateway.hostname,
            ident="inbox gateway",
            timeout=self._settings.smtp.timeout,
            command_call_limit=COMMAND_LIMITS,
            loop=asyncio.get_running_loop(),
            **options,
        )
        self._sessions.add(session)
        return session

    async def start(self, *, shared: bool = False) -> list[tuple[str, int] | str]:
        """Listen on every endpoint: (host, port) as bound, or a unix socket's path.
        `shared`: daemons sharing a store share its TCP ports too (SO_REUSEPORT: the kernel
        spreads the connections over them)."""
        loop = asyncio.get_running_loop()
        bound: list[tuple[str, int] | str] = []
        factory: Callable[[], Any] = functools.partial(self._protocol, self.options())
        for endpoint in self.endpoints():
            try:
                if isinstance(endpoint, str):
                    server = await self._unix(factory, endpoint)
                else:
                    server = await loop.create_server(factory, *endpoint, reuse_port=shared)
            except OSError as error:
                await self.stop(0)
                where = endpoint if isinstance(endpoint, str) else "{}:{}".format(*endpoint)
                raise GatewayError(
                    f"cannot listen for {self.door.upper()} on {where}: {error.strerror or error}"
                ) from None
            self._servers.append(server)
            if isinstance(endpoint, str):
                bound.append(endpoint)
                log.info(f"{self.door}.listening", socket=endpoint)
                continue
            for sock in server.sockets:
                address = sock.getsockname()
                bound.append((str(address[0]), int(address[1])))
                log.info(f"{self.door}.listening", host=address[0], port=address[1])
        return bound

    async def _unix(self, factory: Callable[[], Any], path: str) -> asyncio.Server:
        """A unix socket at `path` (one left by a process that died is replaced, one another
        process listens on is not), which its group may use: the MTA's user is put in the
        gateway's group to hand mail over."""
        with contextlib.suppress(FileNotFoundError):
            if stat.S_ISSOCK(os.lstat(path).st_mode):
                if await _listened(path):
                    raise OSError(errno.EADDRINUSE, "another process listens on it")
                os.unlink(path)
        server = await asyncio.get_running_loop().create_unix_server(factory, path)
        os.chmod(path, 0o660)
        self._paths.append(path)
        return server

    async def stop(self, grace: float) -> None:
        """Answer new connections 421, let DATA in flight finish (up to `grace` s), close."""
        self._relay.closing = True
        try:
            await asyncio.wait_for(self._relay.drained(), grace)
        except TimeoutError:
            log.warning(f"{self.door}.drain_timeout", seconds=grace)
        for server in self._servers:
            server.close()
        for session in list(self._sessions):
            if session.transport is not None:
                session.transport.close()
        for path in self._paths:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)


async def _listened(path: str) -> bool:
    """Whether a live process accepts connections on the unix socket at `path`."""
    try:
        _, writer = await asyncio.wait_for(asyncio.open_unix_connection(path), 5)
    except (OSError, TimeoutError):
        return False
    writer.close()
    return True
