"""Alert messages (DESIGN §7), built with EmailMessage.

Customer text reaches headers only through `_one_line`, which removes every
control character, and addresses only through `Address`, which quotes: a
subject or name holding CR/LF cannot add a header or a recipient.

The alert's text reads the original's first PREFIX_BYTES only (its From, To and
Date, and the first lines of its text), and the original is attached as it came,
never parsed whole and written out again. That recursed once per nested part
(1,000 levels exceed Python's stack: the alert was never sent) and refolded long
headers with the email package's quadratic parser (an alert about 80,000
addresses in To took 87 s, on the event loop).
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass
from datetime import datetime
from email import policy
from email.errors import HeaderParseError
from email.generator import Generator
from email.headerregistry import Address
from email.message import EmailMessage, Message
from email.parser import BytesParser
from email.utils import format_datetime, parseaddr

from gateway.intake.facts import clean_text, header_text, parse_headers

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]+")
_PREVIEW_LINES = 8
# Enough for the headers and first lines of ordinary mail; parsing it costs up to 0.2 s
# when it is nothing but nested or tiny parts (the email parser's speed, not ours).
PREFIX_BYTES = 32 * 1024
FIELD_CHARS = 200  # a From or To line of the alert's text; the original has them all

# DESIGN §7 names one subject, "Assigned:", for every assignment; a reply says so instead.
TITLES = {"assigned": "Assigned", "reassigned": "Assigned", "reply": "New reply"}


def _one_line(text: str) -> str:
    return _CONTROL.sub(" ", text).strip()


@dataclass(frozen=True)
class AlertInput:
    event_id: int
    reason: str  # assigned, reassigned, reply
    how: str  # how it came to the agent: "by rule 'X'", "by round-robin", "by carol"
    conversation_id: int
    subject: str
    customer: str | None
    inbox: str
    agent_name: str
    agent_email: str
    sender: str  # the `from` of the gateway's alerts
    hostname: str
    mark: str  # the X-Gateway-Notification value
    raw: bytes  # the message the alert is about
    date: datetime
    full_size: int | None = None  # set when `raw` is only its header: the message's size


def message_id(event_id: int, hostname: str) -> str:
    """Derived from the event id, so a resent alert is recognisably the same one."""
    return f"<alert.{event_id}@{hostname}>"


def _preview(raw: bytes) -> list[str]:
    try:
        original = BytesParser(policy=policy.default).parsebytes(raw[:PREFIX_BYTES])
        body = original.get_body(preferencelist=("plain",))
        text = clean_text(str(body.get_content())) if body is not None else ""
    except Exception:  # broken MIME, an odd charset, nesting deeper than the stack
        text = ""
    lines = [_CONTROL.sub(" ", line).rstrip() for line in text.splitlines()]
    lines = [line for line in lines if line.strip()][:_PREVIEW_LINES]
    return [f"> {line}" for line in lines]


class _AsReceived(Message):
    """The original, headers and all, as one text payload: the generator writes it as it
    came, but for line endings (made the alert's own), 8-bit bytes included. It asks a
    message to write its own headers when it can, and these are in the payload."""

    def __init__(self, raw: bytes) -> None:
        super().__init__()
        self.set_payload(raw.decode("ascii", "surrogateescape"))

    def _write_headers(self, generator: Generator) -> None:
        pass


def _field(headers: Message, name: str) -> str:
    text = _one_line(header_text(headers, name) or "")
    return text if len(text) <= FIELD_CHARS else text[:FIELD_CHARS] + " ..."


def _too_large(full_size: int | None) -> list[str]:
    # Known from the store, never from a header: a sender cannot make mail look cut.
    if full_size is None:
        return []
    return [
        f"The message is {full_size:,} bytes, too large to attach: only its header is"
        " attached. Read it in the mailbox.",
        "",
    ]


def render(alert: AlertInput) -> EmailMessage:
    headers = parse_headers(alert.raw[:PREFIX_BYTES])
    subject = _one_line(alert.subject)
    msg = EmailMessage()
    msg["Subject"] = f"[#{alert.conversation_id}] {TITLES[alert.reason]}: {subject}"
    msg["From"] = alert.sender
    msg["To"] = Address(_one_line(alert.agent_name), addr_spec=alert.agent_email)
    customer = alert.customer and parseaddr(alert.customer)[1]
    if customer and "@" in customer:
        # Not a usable address: the agent replies from the conversation instead.
        # (The email package's address parser raises HeaderParseError, and recurses into
        # nested comments: a sender made of them came back from a hypothesis run.)
        with contextlib.suppress(ValueError, IndexError, HeaderParseError, RecursionError):
            msg["Reply-To"] = Address(addr_spec=_one_line(customer))
    msg["Date"] = format_datetime(alert.date)
    msg["Message-ID"] = message_id(alert.event_id, alert.hostname)
    msg["Auto-Submitted"] = "auto-generated"
    msg["X-Gateway-Conversation"] = str(alert.conversation_id)
    msg["X-Gateway-Notification"] = alert.mark

    if alert.reason == "reply":
        opening = f"The customer wrote again in conversation #{alert.conversation_id}, yours."
    else:
        opening = f"Conversation #{alert.conversation_id} was {alert.reason} to you {alert.how}."
    lines = [
        opening,
        "",
        f"From:    {_field(headers, 'From') or alert.customer or '(unknown)'}",
        f"To:      {_field(headers, 'To') or alert.inbox}",
        f"Subject: {subject}",
        f"Date:    {_field(headers, 'Date') or '(not given)'}",
        "",
        *_too_large(alert.full_size),
        *_preview(alert.raw),
        "",
        f"See it with: gateway show {alert.conversation_id}",
    ]
    msg.set_content("\n".join(lines) + "\n")
    msg.add_attachment(_AsReceived(alert.raw), filename="original.eml")
    return msg
