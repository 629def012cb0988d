"""Alerts: customer text never becomes a header or a recipient."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from email import message_from_bytes, policy

import pytest
from hypothesis import given
from hypothesis import strategies as st

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


@given(subject=st.text(max_size=120), name=st.text(max_size=40))
def test_no_customer_text_adds_a_header(subject: str, name: str) -> None:
    data = render(alert(subject, name=name)).as_bytes(policy=policy.SMTP)
    parsed = message_from_bytes(data, policy=policy.default)
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
    data = render(alert("x" * 2000)).as_bytes(policy=policy.SMTP)
    assert b"\n" not in data.replace(b"\r\n", b"")


def test_cr_lf_in_a_subject_or_name_becomes_a_space() -> None:
    message = render(alert("Hi\r\nBcc: evil@attacker.test", name="Al\nX-Evil: 1"))
    data = message.as_bytes(policy=policy.SMTP)
    parsed = message_from_bytes(data, policy=policy.default)
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
    data = render(alert("hello", customer=customer)).as_bytes(policy=policy.SMTP)
    parsed = message_from_bytes(data, policy=policy.default)
    assert "Reply-To" not in parsed and parsed["To"] == "Alice <alice@agents.test>"


def test_a_message_stored_by_its_header_alone_says_it_was_too_large_to_attach() -> None:
    cut = dataclasses.replace(alert("logs"), full_size=30_000_000)
    assert "30,000,000 bytes, too large to attach" in render(cut).get_body().get_content()


def test_a_sender_cannot_make_mail_look_too_large_with_a_header() -> None:
    forged = b"X-Gateway-Too-Large: 99999999\r\n" + ORIGINAL
    body = render(dataclasses.replace(alert("x"), raw=forged)).get_body().get_content()
    assert "too large" not in body
