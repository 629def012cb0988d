"""Alerts: customer text never becomes a header or a recipient."""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Callable
from datetime import UTC, datetime
from email import message_from_bytes, policy
from email.message import EmailMessage

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.notify import render as rendering
from gateway.notify.render import AlertInput, render

ORIGINAL = b"From: c@example.org\r\nTo: support@example.com\r\nSubject: x\r\n\r\nhello\r\n"


def alert(subject: str, customer: str = "c@example.org", name: str = "Alice") -> AlertInput:
    return AlertInput(
        event_id=7,
        reason="assigned",
        how="by round-robin",
        conversation_id=3,
        subject=subject,
        customer=customer,
        inbox="support@example.com",
        agent_name=name,
        agent_email="alice@agents.test",
        sender="Gateway <gw@gw.test>",
        hostname="gw.test",
        mark="7.abc",
        raw=ORIGINAL,
        date=datetime(2026, 1, 2, tzinfo=UTC),
    )


def parse(data: bytes) -> EmailMessage:
    message = message_from_bytes(data, policy=policy.default)
    assert isinstance(message, EmailMessage)
    return message


def body(alert_input: AlertInput) -> str:
    text = parse(render(alert_input).data).get_body(preferencelist=("plain",))
    assert text is not None
    return str(text.get_content())


@given(subject=st.text(max_size=120), name=st.text(max_size=40))
def test_no_customer_text_adds_a_header(subject: str, name: str) -> None:
    data = render(alert(subject, name=name)).data
    parsed = parse(data)
    assert sorted(parsed.keys()) == sorted(
        [
            "Subject",
            "From",
            "To",
            "Reply-To",
            "Date",
            "Message-ID",
            "Auto-Submitted",
            "X-Gateway-Conversation",
            "X-Gateway-Notification",
            "MIME-Version",
            "Content-Type",
        ]
    )
    assert [a.addr_spec for a in parsed["To"].addresses] == ["alice@agents.test"]
    assert parsed["Message-ID"] == "<alert.7@gw.test>"


def test_bare_lf_never_leaves_in_an_alert() -> None:
    data = render(alert("x" * 2000)).data
    assert b"\n" not in data.replace(b"\r\n", b"")


def test_cr_lf_in_a_subject_or_name_becomes_a_space() -> None:
    data = render(alert("Hi\r\nBcc: evil@attacker.test", name="Al\nX-Evil: 1")).data
    parsed = parse(data)
    assert parsed["Bcc"] is None and parsed["X-Evil"] is None
    assert parsed["Subject"] == "[#3] Assigned: Hi Bcc: evil@attacker.test"


@pytest.mark.parametrize(
    "customer",
    # What facts made of `From: """@` and of `From: !"""@ (((...c)))`.
    ['"@"', '"!@ (' + "(" * 3000 + "c" + ")" * 3000 + '"'],
    ids=["unparseable", "comments-nested-3000-deep"],
)
def test_a_customer_address_the_parser_cannot_take_is_left_out_of_reply_to(customer: str) -> None:
    """Found by hypothesis: the email package raised HeaderParseError, or recursed too deep."""
    data = render(alert("hello", customer=customer)).data
    parsed = parse(data)
    assert "Reply-To" not in parsed and parsed["To"] == "Alice <alice@agents.test>"


def test_a_message_stored_by_its_header_alone_says_it_was_too_large_to_attach() -> None:
    cut = dataclasses.replace(alert("logs"), full_size=30_000_000)
    assert "30,000,000 bytes, too large to attach" in body(cut)


def test_a_sender_cannot_make_mail_look_too_large_with_a_header() -> None:
    forged = b"X-Gateway-Too-Large: 99999999\r\n" + ORIGINAL
    assert "too large" not in body(dataclasses.replace(alert("x"), raw=forged))


# Pieces of hostile originals: lines a MIME reader could take for the alert's own boundary
# (the first it would pick among them), mbox `From ` lines, bare LF and CR, 8-bit bytes.
FIRST = "=_first"
PIECES = [
    f"--{FIRST}\r\n".encode(),
    f"\r\n--{FIRST}--\r\n".encode(),
    b"--=_other\n",
    b"From someone Fri Jan  2 00:00:00 2026\n",
    b">From quoted\r\n",
    b"\n",
    b"\r",
    b"\r\n",
    b"\r\r\n",
    b"\n\r",
    b".\r\n",
    b"Subject: \xe9t\xe9\xff\x80\r\n",
    b"\x00",
]
originals = st.lists(st.one_of(st.sampled_from(PIECES), st.binary(max_size=20)), max_size=30).map(
    b"".join
)


def first_then_others() -> Callable[[], str]:
    """The alert's boundaries, FIRST first: a test can put it in the original."""
    return functools.partial(next, iter([FIRST, "=_second", "=_third"]))


def attachment(data: bytes) -> bytes:
    """The original attached, where a MIME reader finds it: the boundary and parts are the
    email parser's, the bytes those between the part's header and the close delimiter."""
    alert = parse(data)
    _, original = alert.iter_parts()
    assert original.get_content_type() == "message/rfc822"
    assert original.get_filename() == "original.eml"
    delimiter = f"\r\n--{alert.get_boundary()}".encode()
    _, _, last = data.split(delimiter + b"\r\n")
    _, content = last.split(b"\r\n\r\n", 1)
    assert content.endswith(delimiter + b"--\r\n")
    return content.removesuffix(delimiter + b"--\r\n")


@given(raw=originals, piece=st.integers(min_value=1, max_value=64))
def test_the_original_is_attached_as_it_came_but_for_line_endings(raw: bytes, piece: int) -> None:
    """Its line endings made CRLF a piece at a time, pieces cut anywhere (a megabyte,
    made small here so the cuts fall on the lines drawn)."""
    with_original = dataclasses.replace(alert("x"), raw=raw)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(rendering, "_PIECE_BYTES", piece)
        data = render(with_original, boundaries=first_then_others()).data
    assert attachment(data) == re.sub(rb"\r\n|\r|\n", b"\r\n", raw)


def test_a_boundary_found_in_the_original_is_not_used() -> None:
    raw = ORIGINAL + f"--{FIRST}\r\n".encode()
    data = render(dataclasses.replace(alert("x"), raw=raw), boundaries=first_then_others()).data
    assert parse(data).get_boundary() == "=_second"


def test_a_boundary_found_in_the_alert_text_is_not_used() -> None:
    data = render(alert(f"--{FIRST}"), boundaries=first_then_others()).data
    assert parse(data).get_boundary() == "=_second"
    assert attachment(data) == ORIGINAL


def test_an_original_with_8bit_bytes_is_attached_as_8bit() -> None:
    raw = b"From: c@example.org\r\nSubject: \xe9t\xe9\r\n\r\nh\xe9llo\r\n"
    data = render(dataclasses.replace(alert("x"), raw=raw)).data
    [original] = parse(data).iter_attachments()
    assert original["Content-Transfer-Encoding"] == "8bit"
    assert attachment(data) == raw
