"""The LMTP door (RFC 2033): how an MTA on this host hands mail over (Postfix's `lmtp:`
transport, Exim's, Dovecot's), on a port or a unix socket.

The same relay as SMTP (the inboxes RCPT accepts, accept's commit before any
answer), with LMTP's difference: after DATA, one answer per recipient RCPT
accepted, in their order, each its inbox's, so that a store failing for one inbox
defers that recipient alone. LHLO instead of EHLO (aiosmtpd's LMTP session).
The MTA in front does the access control and rate limiting: a unix socket is
guarded by its file mode, a port by `smtp.allowed_networks`.
"""

from __future__ import annotations

from typing import Any

from aiosmtpd.lmtp import LMTP
from aiosmtpd.smtp import SMTP, Envelope, Session

from gateway.config import Settings
from gateway.ingress import users
from gateway.ingress.smtp import Relay, RelaySession, SmtpServer
from gateway.intake.facts import clean_text


class LmtpRelay(Relay):
    def _use(self, settings: Settings, known: dict[str, users.Hashed]) -> None:
        super()._use(settings, known)
        # The MTA in front is one client carrying everybody's mail: no per-client limits.
        self.limits.connections = 0
        self.limits.per_minute = 0

    def _allowed(self, session: Session) -> bool:
        # A unix socket's peer has no address: its file mode says who may connect.
        return not isinstance(session.peer, tuple) or super()._allowed(session)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        """One answer per recipient accepted, in order, each its inbox's."""
        named = self.recipients(envelope)
        answers = await self.store(session, envelope)
        return "\r\n".join(answers[named[clean_text(rcpt)]] for rcpt in envelope.rcpt_tos)


class LmtpSession(RelaySession, LMTP):
    """aiosmtpd's LMTP session (LHLO; HELO and EHLO refused), with the relay's own
    session behaviour (DATA read in pieces, the connection count, 552's code)."""

    def for_each_recipient(self, status: str) -> str:
        assert self.envelope is not None
        return "\r\n".join([status] * len(self.envelope.rcpt_tos))


class LmtpServer(SmtpServer):
    door = "lmtp"
    session_class = LmtpSession

    def endpoints(self) -> list[tuple[str, int] | str]:
        return self._settings.lmtp.endpoints()

    def options(self) -> dict[str, Any]:
        return {}  # no TLS and no AUTH: the MTA in front is on this host
