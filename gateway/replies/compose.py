"""The mail an agent's answer goes to the customer as, and the notice an agent gets
when their mail to the replies address was refused; built with EmailMessage.

An answer holds only what the agent wrote and attached: the text cut above the
alert's marker, never a line of the alert, its token, or an internal address. It
is From the inbox, in the agent's name, so the customer's next mail comes back to
the shared inbox and threads to it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime

import idna

from gateway import mailpolicy
from gateway.intake.facts import conversation_token

_RE = re.compile(r"re\s*:", re.IGNORECASE)
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]+")
MAX_REFERENCES = 20  # the thread's root and latest ids are enough for every client


@dataclass(frozen=True)
class Attachment:
    filename: str | None
    content_type: str  # maintype/subtype
    data: bytes


@dataclass(frozen=True)
class Answer:
    conversation_id: int
    subject: str  # the conversation's
    text: str
    agent_name: str
    inbox: str
    customer: str
    message_id: str  # <reply.EVENT@hostname>
    in_reply_to: str | None  # the customer's latest message's Message-ID, without <>
    references: tuple[str, ...]  # that message's References, without <>
    date: datetime
    attachments: tuple[Attachment, ...] = ()


def _one_line(text: str) -> str:
    return _CONTROL.sub(" ", text).strip()


def ascii_address(address: str) -> str:
    """The address with its domain in IDNA's ASCII form, as headers and SMTP take it;
    ValueError for a local part that is not ASCII (SMTPUTF8, which smarthosts may lack)."""
    local, _, domain = address.rpartition("@")
    if not local.isascii():
        raise ValueError(f"the customer's address {address!r} is not plain ASCII")
    try:
        return f"{local}@{idna.encode(domain, uts46=True).decode()}"
    except idna.IDNAError as error:
        raise ValueError(f"the customer's domain {domain!r} is not valid: {error}") from None


def answer_id(event_id: int, hostname: str) -> str:
    """Derived from the `replied` event: a resent answer is recognisably the same one."""
    return f"<reply.{event_id}@{hostname}>"


def answer_subject(subject: str, conversation_id: int) -> str:
    """`Re: <subject> [#ID]`: the token threads the customer's next mail even when their
    client drops In-Reply-To; a subject that has them is not given them twice."""
    subject = _one_line(subject)
    if not _RE.match(subject):
        subject = f"Re: {subject}".strip()
    if conversation_token(subject) != conversation_id:
        subject = f"{subject} [#{conversation_id}]"
    return subject


def build_answer(answer: Answer) -> bytes:
    msg = EmailMessage(policy=mailpolicy.DEFAULT)
    msg["From"] = Address(_one_line(answer.agent_name), addr_spec=answer.inbox)
    msg["To"] = Address(addr_spec=ascii_address(answer.customer))
    msg["Subject"] = answer_subject(answer.subject, answer.conversation_id)
    msg["Date"] = format_datetime(answer.date)
    msg["Message-ID"] = answer.message_id
    if answer.in_reply_to is not None:
        msg["In-Reply-To"] = f"<{answer.in_reply_to}>"
        chain = [*answer.references, answer.in_reply_to]
        if len(chain) > MAX_REFERENCES:
            chain = chain[:1] + chain[1 - MAX_REFERENCES :]
        msg["References"] = " ".join(f"<{item}>" for item in dict.fromkeys(chain))
    msg.set_content(answer.text + "\n")
    for item in answer.attachments:
        maintype, _, subtype = item.content_type.partition("/")
        msg.add_attachment(
            item.data,
            maintype=maintype or "application",
            subtype=subtype or "octet-stream",
            filename=_one_line(item.filename) if item.filename else None,
        )
    return msg.as_bytes(policy=mailpolicy.SMTP)


def notice_id(message_pk: int, hostname: str) -> str:
    """Derived from the message it is about (the agent's mail, or the answer): one notice
    a message, however often sent."""
    return f"<notice.{message_pk}@{hostname}>"


@dataclass(frozen=True)
class Notice:
    """A short word to an agent: their mail was refused, or their answer not delivered."""

    sender: str  # [notify] from
    agent_name: str
    agent_email: str
    title: str  # the subject
    text: str  # the body
    conversation_id: int | None
    message_id: str
    mark: str | None  # X-Gateway-Notification, when there is an event to sign
    date: datetime


def refusal(subject: str, reason: str, conversation_id: int | None) -> tuple[str, str]:
    """The title and text of the notice for an agent's mail that was refused."""
    about = f" about conversation #{conversation_id}" if conversation_id is not None else ""
    return (
        f"Not done: {_one_line(subject) or '(no subject)'}",
        f"Your mail{about} was not applied: {_one_line(reason)}\n\n"
        "Nothing changed and nothing was sent to the customer. Correct it and send it"
        " again, as a reply to the alert.\n",
    )


def undelivered(subject: str, customer: str, error: str) -> tuple[str, str]:
    """The title and text of the notice for an answer the customer's server never took."""
    return (
        f"Not delivered: {_one_line(subject)}",
        f"Your answer to {customer} could not be delivered, and the gateway has stopped"
        f" trying: {_one_line(error)}\n\nThe conversation keeps it; reach the customer"
        " another way.\n",
    )


def build_notice(notice: Notice) -> bytes:
    msg = EmailMessage(policy=mailpolicy.DEFAULT)
    msg["From"] = notice.sender
    msg["To"] = Address(_one_line(notice.agent_name), addr_spec=notice.agent_email)
    msg["Subject"] = _one_line(notice.title)
    msg["Date"] = format_datetime(notice.date)
    msg["Message-ID"] = notice.message_id
    msg["Auto-Submitted"] = "auto-replied"
    if notice.conversation_id is not None:
        msg["X-Gateway-Conversation"] = str(notice.conversation_id)
    if notice.mark is not None:
        msg["X-Gateway-Notification"] = notice.mark
    msg.set_content(notice.text)
    return msg.as_bytes(policy=mailpolicy.SMTP)
