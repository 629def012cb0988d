"""Raw bytes → MailFacts, with the standard `email` package, tolerant of broken mail.

Every header is read from its raw text, and decoded defensively: where the
decoder raises, the raw text stands. Nothing here raises for a malformed
message; the worst case is empty facts.

The header registry's parser (encoded words, addresses) slices off the rest of
the value at every token, so its time grows with the square of a header's length
(80,000 addresses in To took 70 s and 1.2 GB; 60,000 encoded words in a Subject,
over 15 minutes), and it recurses into nested comments. It is only ever given a
header's first PARSE_CHARS characters: more than a subject or the recipients a
rule looks for need.
"""

from __future__ import annotations

import hashlib
import re
from email import policy
from email.headerregistry import Address, AddressHeader, BaseHeader
from email.message import EmailMessage, Message
from email.parser import BytesParser
from email.utils import getaddresses

from gateway import mailpolicy
from gateway.addresses import normalize_domain
from gateway.model import MailFacts

_ID = re.compile(r"<([^<>]*)>")
_WS = re.compile(r"\s+")
# compat32 only splits the header block: at its end the feed parser reads the
# Content-Type, and policy.default would parse it with the registry (recursive in
# comments, quadratic in length). Every header is read raw below.
_HEADER_PARSER = BytesParser(policy=policy.compat32)
# Applied to text whose white space is already single spaces, so no two parts of
# the pattern compete for the same characters (linear time on hostile subjects).
_REPLY_PREFIX = re.compile(
    r"^(?:(?:re|fwd?|aw|sv|wg|tr|antw|vs)(?: ?(?:\[[0-9]+\]|\([0-9]+\)))? ?[:\uff1a] ?)+",
    re.IGNORECASE,
)
_TOKEN = re.compile(r"\[#([0-9]{1,18})\]")  # 18 digits: always a valid SQLite integer
THREAD_SUBJECT_CHARS = 1000
PARSE_CHARS = 16 * 1024
# A thread is found by its parent (In-Reply-To) or by its root (References' first);
# a long chain's middle adds nothing, and SQLite binds 32,766 values (by default).
MAX_REFERENCES = 100


_HEADER_END = re.compile(rb"\r?\n\r?\n")


def header_block(raw: bytes) -> bytes:
    """The header section: nothing here needs the body, which may be megabytes."""
    if raw.startswith((b"\r\n", b"\n")):
        return b""
    end = _HEADER_END.search(raw)
    return raw if end is None else raw[: end.end()]


def parse_headers(raw: bytes) -> Message:
    return _HEADER_PARSER.parsebytes(header_block(raw), headersonly=True)


def clean_text(text: str) -> str:
    """Make header text storable: undecodable bytes become UTF-8 or Latin-1 characters."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        pass
    try:
        data = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a lone surrogate no byte stands for (decoded, not raw)
        return text.encode("utf-8", "replace").decode("utf-8")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("cp1252", "replace")


def _raw_values(msg: Message, name: str) -> list[str]:
    wanted = name.lower()
    return [clean_text(str(value)) for key, value in msg.raw_items() if key.lower() == wanted]


_REGISTRY = mailpolicy.REGISTRY  # policy.default's, its header classes kept
_LINE_BREAK = re.compile(r"[\r\n]")  # unfolding, as policy.default does before parsing


def _parsed(name: str, value: str) -> BaseHeader:
    """The header registry's reading of the value's first PARSE_CHARS characters."""
    return _REGISTRY(name, _LINE_BREAK.sub("", value[:PARSE_CHARS]))


def header_text(msg: Message, name: str) -> str | None:
    """The first `name` header, decoded (RFC 2047, or raw 8-bit as UTF-8 else Latin-1)."""
    wanted = name.lower()
    raw = next((str(v) for k, v in msg.raw_items() if k.lower() == wanted), None)
    if raw is None:
        return None
    # 8-bit bytes arrive as surrogates; the email package would turn them into U+FFFD.
    if clean_text(raw) != raw:
        return _WS.sub(" ", clean_text(raw)[:PARSE_CHARS]).strip()
    try:
        value = str(_parsed(name, raw))
    except Exception:  # the header parser itself failed on this input
        value = raw[:PARSE_CHARS]
    return _WS.sub(" ", clean_text(value)).strip()


def _address_list(values: list[str]) -> str:
    """Every `values` as one list, cut to PARSE_CHARS after a whole address."""
    text = ", ".join(values)
    if len(text) <= PARSE_CHARS:
        return text
    cut = text[:PARSE_CHARS]
    comma = cut.rfind(",")
    return cut[:comma] if comma > 0 else cut


def _is_address(spec: str) -> bool:
    """Whether `spec` is an address mail could be sent to (a bare local part is not)."""
    return "@" in spec and not spec.startswith("@")


def _addresses(msg: Message, name: str) -> list[tuple[str, str]]:
    """(display name, addr-spec) pairs of the `name` headers, from their first PARSE_CHARS."""
    text = _address_list(_raw_values(msg, name))
    if not text:
        return []
    pairs: list[tuple[str, str]]
    try:
        header = _parsed(name, text)
        found: tuple[Address, ...] = header.addresses if isinstance(header, AddressHeader) else ()
        pairs = [(a.display_name, a.addr_spec) for a in found]
    except Exception:  # unparseable: fall back to the permissive old parser
        try:
            pairs = getaddresses([text])
        except RecursionError:  # it recurses into nested comments
            pairs = []
    return [
        (clean_text(display), clean_text(spec).strip())
        for display, spec in pairs
        if _is_address(spec)
    ]


def normalize_message_id(text: str) -> str | None:
    """The text between < and >, white space removed; the whole text when unbracketed."""
    found = _ID.search(text)
    value = found.group(1) if found else text
    value = _WS.sub("", value)
    return value or None


def message_ids(text: str) -> list[str]:
    return [v for v in (_WS.sub("", m) for m in _ID.findall(text)) if v]


def _references(msg: Message) -> tuple[str, ...]:
    """In-Reply-To's ids, then References' root and last ones: at most MAX_REFERENCES."""
    replying = [i for value in _raw_values(msg, "In-Reply-To") for i in message_ids(value)]
    chain = [i for value in _raw_values(msg, "References") for i in message_ids(value)]
    if len(chain) > MAX_REFERENCES:
        chain = chain[:1] + chain[1 - MAX_REFERENCES :]
    unique = dict.fromkeys(replying + chain)  # in order, each once
    return tuple(unique)[:MAX_REFERENCES]


# A header line as the email package's feed parser tells one: a name (any printable
# but ':', possibly empty) and a colon, an mbox "From " line, or a continuation.
_HEADER_LINE = re.compile(rb"From |[\x21-\x39\x3b-\x7e]*:|[\t ]")
_LINE = re.compile(rb"[^\r\n]*(?:\r\n|\r|\n)?")


def first_message_id(raw: bytes) -> str | None:
    """The first Message-ID header's raw value, exactly as `email` would give it.

    Accept needs only this of every message, before its 250: the feed parser's
    rules for where headers end and how they fold, without building a Message
    (a fifth of the time accept spends per message).
    """
    lines = [m.group() for m in _LINE.finditer(header_block(raw)) if m.group()]
    for index, line in enumerate(lines):
        if not _HEADER_LINE.match(line):
            return None  # the headers end here (the parser files a defect)
        name, colon, value = line.partition(b":")
        if not colon or name.lower() != b"message-id" or line[:1] in b" \t":
            continue
        folded = [value.lstrip(b" \t")]
        for following in lines[index + 1 :]:
            if following[:1] not in (b" ", b"\t"):
                break
            folded.append(following)
        text = b"".join(folded).rstrip(b"\r\n").decode("ascii", "surrogateescape")
        return clean_text(text)
    return None


def dedup_key(raw: bytes) -> str:
    """Message-ID where there is one; the raw message's SHA-256 stands in otherwise."""
    found = first_message_id(raw)
    message_id = normalize_message_id(found) if found is not None else None
    return message_id or "sha256:" + hashlib.sha256(raw).hexdigest()


def thread_subject(subject: str) -> str:
    """The subject as threads compare it: no Re:/Fwd:/AW:/SV:, no [#ID], folded."""
    subject = _WS.sub(" ", _TOKEN.sub(" ", subject[: THREAD_SUBJECT_CHARS * 4])).strip()
    subject = _REPLY_PREFIX.sub("", subject)
    return subject.strip().casefold()[:THREAD_SUBJECT_CHARS]


def conversation_token(subject: str) -> int | None:
    found = _TOKEN.search(subject)
    return int(found.group(1)) if found else None


def _token(msg: Message, name: str) -> str | None:
    """A header that holds tokens or a date, never encoded words, as written: reading it
    through the header registry would cost more than the rest of the message."""
    values = _raw_values(msg, name)
    return _WS.sub(" ", values[0]).strip() if values else None


def _automatic(msg: Message, envelope_from: str | None) -> str | None:
    def raw(name: str) -> str | None:
        value = _token(msg, name)
        return value.lower() if value is not None else None

    if envelope_from == "":
        return "bounce"
    content_type = raw("Content-Type") or ""
    if "multipart/report" in content_type and "delivery-status" in content_type:
        return "bounce"
    if not (raw("Auto-Submitted") or "no").startswith("no"):
        return "auto-submitted"
    if raw("Precedence") in {"bulk", "junk", "list", "auto_reply"}:
        return "precedence"
    if raw("X-Autoreply") is not None or raw("X-Autorespond"):
        return "auto-reply"
    return None


def extract(raw: bytes, envelope_from: str | None = None) -> MailFacts:
    """Decode what routing and threading need. Never raises on a malformed message."""
    msg = parse_headers(raw)
    return facts_of(msg, envelope_from)


def facts_of(msg: Message | EmailMessage, envelope_from: str | None) -> MailFacts:
    senders = _addresses(msg, "From")
    envelope = (envelope_from or "").strip("<>").lower()
    if senders:
        sender_name, sender = senders[0][0], senders[0][1].lower()
    elif _is_address(envelope):
        sender_name, sender = "", envelope
    else:
        sender_name, sender = "", None  # nobody to answer: routed to nobody either
    domain = sender.rpartition("@")[2] if sender and "@" in sender else None
    id_values = _raw_values(msg, "Message-ID")
    return MailFacts(
        message_id=normalize_message_id(id_values[0]) if id_values else None,
        sender=sender,
        sender_name=sender_name,
        sender_domain=normalize_domain(domain) if domain else None,
        subject=header_text(msg, "Subject") or "",
        recipients=tuple(
            spec.lower() for name in ("To", "Cc") for _, spec in _addresses(msg, name)
        ),
        references=_references(msg),
        auto=_automatic(msg, envelope_from),
        notification=_token(msg, "X-Gateway-Notification"),
        date=_token(msg, "Date"),
    )
