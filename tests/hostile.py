"""The hostile corpus: small samples from tests/data/hostile/, big ones built here.

Megabytes are built on demand rather than kept in git. `deliver` speaks SMTP
itself after RCPT so that what reaches the server is exactly the sample,
dot-stuffed as RFC 5321 §4.5.2 says and nothing else (smtplib's `data` also
stuffs a dot after a bare LF, which the server rightly does not unstuff).
"""

from __future__ import annotations

import base64
import io
import re
import smtplib
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from tests.conftest import children

FOLDER = Path(__file__).parent / "data" / "hostile"
SIZE_LIMIT = 25_000_000  # the default max_message_size; the hostile tests run with it
INBOX = "support@example.com"


@dataclass(frozen=True)
class Sample:
    name: str
    raw: bytes
    recipients: tuple[str, ...] = (INBOX,)

    @property
    def stored(self) -> bytes:
        """What the store must hold: the DATA as sent, ending with the CRLF before the dot."""
        return self.raw if self.raw.endswith(b"\r\n") else self.raw + b"\r\n"

    @property
    def inboxes(self) -> set[str]:
        """The inboxes it is for: every recipient is an inbox or its +subaddress."""
        return {
            f"{local.split('+')[0]}@{domain}"
            for local, _, domain in (r.rpartition("@") for r in self.recipients)
        }


def _head(name: str, extra: bytes = b"") -> bytes:
    return (
        f"From: Hostile {name} <{name}@hostile.example>\r\n"
        f"To: {INBOX}\r\nSubject: hostile {name}\r\n"
        f"Message-ID: <{name}@hostile.example>\r\nMIME-Version: 1.0\r\n"
    ).encode() + extra


def _empty() -> Sample:
    return Sample("empty", b"")


def _line(length: int, name: str) -> Sample:
    # Over RFC 5321's 1,000 octets with its CRLF, as some mail is: kept, not bounced.
    return Sample(name, _head(name) + b"\r\n" + b"x" * length + b"\r\n")


def _header_line_1mb() -> Sample:
    name = "header-line-1mb"
    raw = _head(name) + b"X-Huge: " + b"h" * 1_000_000 + b"\r\n\r\nbody\r\n"
    return Sample(name, raw)


def _bare_lf_large() -> Sample:
    # One "line" to an SMTP server, since only CRLF ends a line on the wire.
    body = b"".join(b"line %d of a Unix file\n" % n for n in range(500))
    raw = _head("bare-lf-large").replace(b"\r\n", b"\n") + b"\n" + body
    return Sample("bare-lf-large", raw)


def _rcpt_aliases() -> Sample:
    recipients = tuple(f"support+{n}@example.com" for n in range(1000))
    return Sample("rcpt-1000", _head("rcpt-1000") + b"\r\nto a thousand aliases\r\n", recipients)


def _rcpt_two_inboxes() -> Sample:
    recipients = tuple(
        f"{inbox}+{n}@example.com" for n in range(500) for inbox in ("support", "sales")
    )
    raw = _head("rcpt-1000-two-inboxes") + b"\r\nto two inboxes, 500 aliases each\r\n"
    return Sample("rcpt-1000-two-inboxes", raw, recipients)


def _folded_addresses(name: str, count: int, domain: str) -> bytes:
    addresses = [f'"Person {n}" <p{n}@{domain}>' for n in range(count)]
    return (f"{name}: " + ",\r\n ".join(addresses) + "\r\n").encode()


def _to_cc_1000() -> Sample:
    name = "to-cc-1000"
    raw = (
        f"From: Hostile <{name}@hostile.example>\r\n".encode()
        + _folded_addresses("To", 1000, "to.example")
        + _folded_addresses("Cc", 1000, "cc.example")
        + f"Subject: hostile {name}\r\nMessage-ID: <{name}@hostile.example>\r\n\r\nhi\r\n".encode()
    )
    return Sample(name, raw)


def _to_many(count: int = 80_000) -> Sample:
    # The email package's address parser is quadratic in a header's length.
    name = f"to-{count}"
    raw = (
        f"From: Hostile <{name}@hostile.example>\r\n".encode()
        + _folded_addresses("To", count, "to.example")
        + f"Subject: hostile {name}\r\nMessage-ID: <{name}@hostile.example>\r\n\r\nhi\r\n".encode()
    )
    return Sample(name, raw)


def _references(count: int = 260_000) -> Sample:
    # More ids than SQLite binds in one statement (32,766 by default, 250,000 in Debian's).
    name = f"references-{count}"
    ids = b"\r\n ".join(b"<ref-%d@hostile.example>" % n for n in range(count))
    return Sample(name, _head(name) + b"References: " + ids + b"\r\n\r\na reply to it all\r\n")


def _subject_encoded_words(count: int = 60_000) -> Sample:
    # Decoding encoded words is quadratic in the header's length too.
    name = f"subject-encoded-{count}"
    words = b"\r\n ".join([b"=?utf-8?q?w=C3=B6rd?="] * count)
    raw = (
        f"From: Hostile <{name}@hostile.example>\r\nTo: {INBOX}\r\n".encode()
        + b"Subject: "
        + words
        + f"\r\nMessage-ID: <{name}@hostile.example>\r\n\r\nhi\r\n".encode()
    )
    return Sample(name, raw)


def _nested_comments(depth: int = 5000) -> Sample:
    # Comments nest (RFC 5322 §3.2.2); parsers that recurse into them run out of stack.
    name = "from-nested-comments"
    opening = b"\r\n ".join([b"(" * 500] * (depth // 500))
    closing = b"\r\n ".join([b")" * 500] * (depth // 500))
    raw = (
        f"From: {name}@hostile.example ".encode()
        + opening
        + b"comment"
        + closing
        + f"\r\nTo: {INBOX}\r\nSubject: hostile {name}\r\n".encode()
        + f"Message-ID: <{name}@hostile.example>\r\n\r\nhi\r\n".encode()
    )
    return Sample(name, raw)


def _header_bomb() -> Sample:
    name = "header-bomb-10000"
    headers = b"".join(
        b"Received: from relay%d.example by relay%d.example; Mon, 1 Jan 2024 00:00:00 +0000\r\n"
        % (n, n + 1)
        if n % 2
        else b"X-Bomb-%d: value %d\r\n" % (n, n)
        for n in range(10_000)
    )
    # Message-ID and Subject after the bomb: reading them must not cost a scan per header.
    raw = (
        headers
        + f"From: Hostile <{name}@hostile.example>\r\nTo: {INBOX}\r\n".encode()
        + f"Subject: hostile {name}\r\nMessage-ID: <{name}@hostile.example>\r\n".encode()
        + b"\r\nten thousand headers\r\n"
    )
    return Sample(name, raw)


def _nested_multipart(depth: int = 1000) -> Sample:
    name = f"nested-multipart-{depth}"
    parts = [_head(name)]
    parts += [
        b'Content-Type: multipart/mixed; boundary="level-%d"\r\n\r\n--level-%d\r\n' % (n, n)
        for n in range(depth)
    ]
    parts.append(b"Content-Type: text/plain\r\n\r\nat the bottom\r\n")
    parts += [b"--level-%d--\r\n" % n for n in reversed(range(depth))]
    return Sample(name, b"".join(parts))


def _nested_rfc822(depth: int = 1000) -> Sample:
    name = f"nested-rfc822-{depth}"
    inner = b"Content-Type: text/plain\r\n\r\nthe innermost message\r\n"
    for n in range(depth):
        inner = b"Content-Type: message/rfc822\r\n\r\nSubject: wrapper %d\r\n" % n + inner
    return Sample(name, _head(name) + inner)


def _wide_multipart(width: int = 10_000) -> Sample:
    name = f"wide-multipart-{width}"
    parts = b"".join(
        b"--w\r\nContent-Type: text/plain\r\n\r\npart %d\r\n" % n for n in range(width)
    )
    head = _head(name, b'Content-Type: multipart/mixed; boundary="w"\r\n\r\n')
    return Sample(name, head + parts + b"--w--\r\n")


def _attachment(name: str, content_type: bytes, payload: bytes) -> bytes:
    encoded = base64.encodebytes(payload).replace(b"\n", b"\r\n")
    return (
        _head(name, b'Content-Type: multipart/mixed; boundary="a"\r\n\r\n')
        + b"--a\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n"
        + b"--a\r\nContent-Type: "
        + content_type
        + b"\r\nContent-Transfer-Encoding: base64\r\n\r\n"
        + encoded
        + b"--a--\r\n"
    )


def _zip_bomb() -> Sample:
    # 200 MB of zeros that deflate to about 200 KB: nothing in the gateway may inflate it.
    buffer = io.BytesIO()
    with (
        zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as archive,
        archive.open("zeros.bin", "w", force_zip64=True) as member,
    ):
        chunk = bytes(1 << 20)
        for _ in range(200):
            member.write(chunk)
    name = "zip-bomb"
    return Sample(name, _attachment(name, b"application/zip", buffer.getvalue()))


def _base64_text(size: int = 20_000_000) -> Sample:
    # A text part that decodes to 15 MB of one repeated line: the alert's preview reads it.
    name = "base64-text-20mb"
    line = b"All work and no play makes a large attachment.\r\n"
    payload = line * (size * 3 // 4 // len(line))
    return Sample(name, _attachment(name, b"text/plain; charset=utf-8", payload))


def _oversize() -> Sample:
    name = "oversize"
    return Sample(name, _head(name) + b"\r\n" + (b"o" * 998 + b"\r\n") * 25_100)


def _oversize_one_line() -> Sample:
    name = "oversize-one-line"
    return Sample(name, _head(name) + b"\r\n" + b"o" * (SIZE_LIMIT + 100_000) + b"\r\n")


GENERATED: dict[str, Callable[[], Sample]] = {
    "empty": _empty,
    "line-1000": lambda: _line(1000, "line-1000"),
    "line-1mb": lambda: _line(1_000_000, "line-1mb"),
    "header-line-1mb": _header_line_1mb,
    "bare-lf-large": _bare_lf_large,
    "rcpt-1000": _rcpt_aliases,
    "rcpt-1000-two-inboxes": _rcpt_two_inboxes,
    "to-cc-1000": _to_cc_1000,
    "to-80000": _to_many,
    "references-260000": _references,
    "subject-encoded-60000": _subject_encoded_words,
    "from-nested-comments": _nested_comments,
    "header-bomb-10000": _header_bomb,
    "nested-multipart-1000": _nested_multipart,
    "nested-rfc822-1000": _nested_rfc822,
    "wide-multipart-10000": _wide_multipart,
    "zip-bomb": _zip_bomb,
    "base64-text-20mb": _base64_text,
    "oversize": _oversize,
    "oversize-one-line": _oversize_one_line,
}
# Only the size limit refuses mail (552 5.3.4), however its lines are cut.
REFUSED = {"oversize": 552, "oversize-one-line": 552}
FILES = {path.stem: path for path in sorted(FOLDER.glob("*.eml"))}
NAMES = sorted([*FILES, *GENERATED])
ACCEPTED = [name for name in NAMES if name not in REFUSED]


@lru_cache(maxsize=8)  # a few, not every megabyte sample for the whole session
def sample(name: str) -> Sample:
    return Sample(name, FILES[name].read_bytes()) if name in FILES else GENERATED[name]()


_LINE_START_DOT = re.compile(rb"(?:^|(?<=\r\n))\.")


def deliver(
    port: int, raw: bytes, recipients: Sequence[str], sender: str = "customer@example.org"
) -> tuple[int, bytes]:
    """Send `raw` as one SMTP transaction; the server's answer to the end of DATA."""
    wire = _LINE_START_DOT.sub(b"..", raw)
    if not wire.endswith(b"\r\n"):
        wire += b"\r\n"
    with smtplib.SMTP("127.0.0.1", port, timeout=120) as client:
        client.ehlo()
        code, text = client.mail(sender)
        if code != 250:
            return code, text
        for recipient in recipients:
            code, text = client.rcpt(recipient)
            if code != 250:
                return code, text
        code, text = client.docmd("DATA")
        if code != 354:
            return code, text
        client.send(wire + b".\r\n")
        return client.getreply()


def memory_mb(pid: int) -> tuple[int, int]:
    """(RSS, peak RSS) in MB of the daemon and its children (intake's parser process),
    from the kernel's accounting (VmRSS, VmHWM) of each."""
    rss = peak = 0
    for one in [pid, *children(pid)]:
        try:
            status = Path(f"/proc/{one}/status").read_text()
        except OSError:
            continue  # ended meanwhile
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        if "VmRSS" in fields:
            rss += int(fields["VmRSS"].split()[0]) // 1024
            peak += int(fields["VmHWM"].split()[0]) // 1024
    return rss, peak
