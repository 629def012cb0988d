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

Nor does the email package write the original out: the alert is flattened with
an empty last part, and the original's bytes are put in it. The generator wrote
it with str and regex calls over the whole of it, each holding the GIL for tens
of milliseconds on a 25 MB message, and the event loop's thread waited for the
GIL that long although the alert was built in a thread of its own. Here each
call over the original covers a megabyte or so.
"""

from __future__ import annotations

import contextlib
import re
import secrets
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from email.errors import HeaderParseError
from email.headerregistry import Address
from email.message import EmailMessage, Message
from email.parser import BytesParser
from email.utils import format_datetime, parseaddr

from gateway import mailpolicy
from gateway.intake.facts import clean_text, header_text, parse_headers
from gateway.mailtext import message_text
from gateway.offload import WorkerLost, WorkerProcess
from gateway.replies.commands import HELP
from gateway.replies.marker import MARKER

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]+")
_PREVIEW_LINES = 8
# Enough for the headers and first lines of ordinary mail; parsing it costs up to 0.2 s
# when it is nothing but nested or tiny parts (the email parser's speed, not ours).
PREFIX_BYTES = 32 * 1024
# An answerable alert shows the whole text, as far as this: a long mail's first pages.
TEXT_CHARS = 20_000
TEXT_PREFIX_BYTES = 256 * 1024  # of the original parsed for it: at worst 8x the preview's time
FIELD_CHARS = 200  # a From or To line of the alert's text; the original has them all
# A call over this much of the original holds the GIL a millisecond or two.
_PIECE_BYTES = 1 << 20

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
    # replies+TOKEN@... when agents answer by replying (DESIGN §12); None: to the customer
    reply_to: str | None = None
    link: str | None = None  # the conversation in the web inbox, when there is one


def message_id(event_id: int, hostname: str) -> str:
    """Derived from the event id, so a resent alert is recognisably the same one."""
    return f"<alert.{event_id}@{hostname}>"


def _preview(raw: bytes) -> list[str]:
    try:
        original = BytesParser(policy=mailpolicy.DEFAULT).parsebytes(raw[:PREFIX_BYTES])
        body = original.get_body(preferencelist=("plain",))
        text = clean_text(str(body.get_content())) if body is not None else ""
    except Exception:  # broken MIME, an odd charset, nesting deeper than the stack
        text = ""
    lines = [_CONTROL.sub(" ", line).rstrip() for line in text.splitlines()]
    lines = [line for line in lines if line.strip()][:_PREVIEW_LINES]
    return [f"> {line}" for line in lines]


def _whole_text(raw: bytes) -> list[str]:
    """The customer's text, as far as TEXT_CHARS go, saying where it was cut."""
    text, cut = message_text(raw[:TEXT_PREFIX_BYTES], TEXT_CHARS)
    lines = [_CONTROL.sub(" ", line).rstrip() for line in text.strip("\n").splitlines()]
    if cut or len(raw) > TEXT_PREFIX_BYTES:
        lines += ["", "[The rest of the text is in the message attached.]"]
    return lines


@dataclass(frozen=True)
class Alert:
    message_id: str
    data: bytes  # as sent: CRLF lines, the original attached as it came


def new_boundary() -> str:
    # "=_" is in no quoted-printable or base64 text: only the text as written can hold it.
    return "=_" + secrets.token_hex(16)


def _boundary(raw: bytes, text: str, boundaries: Callable[[], str]) -> str:
    """A multipart boundary found in neither the original nor the alert's text."""
    while True:
        boundary = boundaries()
        if boundary not in text and boundary.encode() not in raw:
            return boundary


def _crlf(raw: bytes) -> Iterator[bytes]:
    """`raw` with CRLF line endings (CR, LF and CRLF alike), a piece at a time."""
    start = 0
    while start < len(raw):
        end = start + _PIECE_BYTES
        if raw[end - 1 : end + 1] == b"\r\n":  # a CRLF is never cut in two
            end += 1
        piece = raw[start:end]
        if b"\r" in piece:
            piece = piece.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        yield piece.replace(b"\n", b"\r\n")
        start = end


def _with_original(alert: EmailMessage, boundary: str, raw: bytes) -> bytes:
    """The alert flattened, `raw` put in its last part, which is empty: the generator
    ends the alert with that part's header, then the close delimiter."""
    close = f"\r\n--{boundary}--\r\n".encode()
    flat = alert.as_bytes(policy=mailpolicy.SMTP)
    if not flat.endswith(close):
        raise ValueError("the alert does not end with its close delimiter")
    return b"".join([flat.removesuffix(close), *_crlf(raw), close])


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


def render(alert: AlertInput, boundaries: Callable[[], str] = new_boundary) -> Alert:
    headers = parse_headers(alert.raw[:PREFIX_BYTES])
    subject = _one_line(alert.subject)
    msg = EmailMessage(policy=mailpolicy.DEFAULT)
    msg["Subject"] = f"[#{alert.conversation_id}] {TITLES[alert.reason]}: {subject}"
    msg["From"] = alert.sender
    msg["To"] = Address(_one_line(alert.agent_name), addr_spec=alert.agent_email)
    customer = alert.customer and parseaddr(alert.customer)[1]
    if alert.reply_to is not None:
        msg["Reply-To"] = Address(addr_spec=alert.reply_to)
    elif customer and "@" in customer:
        # Not a usable address: the agent replies from the conversation instead.
        # (The email package's address parser raises HeaderParseError, and recurses into
        # nested comments: a sender made of them came back from a hypothesis run.)
        with contextlib.suppress(ValueError, IndexError, HeaderParseError, RecursionError):
            msg["Reply-To"] = Address(addr_spec=_one_line(customer))
    msg["Date"] = format_datetime(alert.date)
    msg["Message-ID"] = own_id = message_id(alert.event_id, alert.hostname)
    msg["Auto-Submitted"] = "auto-generated"
    msg["X-Gateway-Conversation"] = str(alert.conversation_id)
    msg["X-Gateway-Notification"] = alert.mark

    if alert.reason == "reply":
        opening = f"The customer wrote again in conversation #{alert.conversation_id}, yours."
    else:
        opening = f"Conversation #{alert.conversation_id} was {alert.reason} to you {alert.how}."
    about = [
        f"From:    {_field(headers, 'From') or alert.customer or '(unknown)'}",
        f"To:      {_field(headers, 'To') or alert.inbox}",
        f"Subject: {subject}",
        f"Date:    {_field(headers, 'Date') or '(not given)'}",
        "",
        *_too_large(alert.full_size),
    ]
    where = [f"Open it in the web inbox: {alert.link}", ""] if alert.link else []
    if alert.reply_to is None:
        lines = [
            opening,
            "",
            *where,
            *about,
            *_preview(alert.raw),
            "",
            f"See it with: gateway show {alert.conversation_id}",
        ]
    else:  # something to answer: all the customer wrote, below the line the answer ends at
        lines = [
            MARKER,
            "",
            opening,
            "",
            *where,
            *about,
            *_whole_text(alert.raw),
            "",
            HELP,
        ]
    text = "\n".join(lines) + "\n"
    boundary = _boundary(alert.raw, text, boundaries)
    msg.set_content(text)
    msg.make_mixed(boundary=boundary)
    msg.add_attachment(
        b"", maintype="message", subtype="rfc822", cte="8bit", filename="original.eml"
    )
    return Alert(own_id, _with_original(msg, boundary, alert.raw))


def render_each(inputs: Sequence[AlertInput]) -> list[Alert | Exception]:
    """Each alert, or the exception building it raised."""
    built: list[Alert | Exception] = []
    for alert in inputs:
        try:
            built.append(render(alert))
        except Exception as error:  # this alert fails and is retried, the others go on
            built.append(error)
    return built


class BuilderLost(WorkerLost):
    """The alert builder died or overran its time on this alert; it was replaced."""


class ProcessRenderer(WorkerProcess[AlertInput, Alert]):
    """The daemon's alert builder: a process beside the loop, on a core of its own.

    An alert costs about 1.8 ms to build (the email package's header objects),
    more than sending it; built in a thread, it held the GIL the loop needed to
    send the one before. Its preview may parse up to 32 KB of the original (0.2 s
    when that is nothing but nested parts), and a hang is cut short here.
    """

    work = staticmethod(render_each)
    timeout = 20.0  # far past the slowest alert seen (0.2 s), well inside the outbox's lease
    lost = BuilderLost
    title = "gateway-alerts"
    worker = "the alert builder process"
    doing = "building the alert"
    item = "alert"
