"""Alert messages (DESIGN §7), built with EmailMessage.

Customer text reaches headers only through `_one_line`, which removes every
control character, and addresses only through `Address`, which quotes: a
subject or name holding CR/LF cannot add a header or a recipient.
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass
from datetime import datetime
from email import policy
from email.headerregistry import Address
from email.message import EmailMessage
from email.parser import BytesParser
from email.utils import format_datetime, parseaddr

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]+")
_PREVIEW_LINES = 8

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


def message_id(event_id: int, hostname: str) -> str:
    """Derived from the event id, so a resent alert is recognisably the same one."""
    return f"<alert.{event_id}@{hostname}>"


def _preview(original: EmailMessage) -> list[str]:
    try:
        body = original.get_body(preferencelist=("plain",))
        text = body.get_content() if body is not None else ""
    except Exception:  # broken MIME or an unknown charset: the alert goes out without it
        text = ""
    lines = [_CONTROL.sub(" ", line).rstrip() for line in str(text).splitlines()]
    lines = [line for line in lines if line.strip()][:_PREVIEW_LINES]
    return [f"> {line}" for line in lines]


def render(alert: AlertInput) -> EmailMessage:
    original = BytesParser(policy=policy.default).parsebytes(alert.raw)
    subject = _one_line(alert.subject)
    msg = EmailMessage()
    msg["Subject"] = f"[#{alert.conversation_id}] {TITLES[alert.reason]}: {subject}"
    msg["From"] = alert.sender
    msg["To"] = Address(_one_line(alert.agent_name), addr_spec=alert.agent_email)
    customer = alert.customer and parseaddr(alert.customer)[1]
    if customer and "@" in customer:
        # Not a usable address: the agent replies from the conversation instead.
        with contextlib.suppress(ValueError, IndexError):
            msg["Reply-To"] = Address(addr_spec=_one_line(customer))
    msg["Date"] = format_datetime(alert.date)
    msg["Message-ID"] = message_id(alert.event_id, alert.hostname)
    msg["Auto-Submitted"] = "auto-generated"
    msg["X-Gateway-Conversation"] = str(alert.conversation_id)
    msg["X-Gateway-Notification"] = alert.mark

    def field(name: str) -> str:
        try:
            return _one_line(str(original.get(name, "")))
        except Exception:  # an unparseable header: say nothing rather than fail the alert
            return ""

    if alert.reason == "reply":
        opening = f"The customer wrote again in conversation #{alert.conversation_id}, yours."
    else:
        opening = f"Conversation #{alert.conversation_id} was {alert.reason} to you {alert.how}."
    lines = [
        opening,
        "",
        f"From:    {field('From') or alert.customer or '(unknown)'}",
        f"To:      {field('To') or alert.inbox}",
        f"Subject: {subject}",
        f"Date:    {field('Date') or '(not given)'}",
        "",
        *_preview(original),
        "",
        f"See it with: gateway show {alert.conversation_id}",
    ]
    msg.set_content("\n".join(lines) + "\n")
    msg.add_attachment(original, filename="original.eml")
    return msg
