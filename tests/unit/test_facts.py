"""Mail facts: decoding never fails, and the normalisations threads and rules rely on."""

from __future__ import annotations

from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from email.policy import SMTP

from hypothesis import given
from hypothesis import strategies as st

from gateway.addresses import normalize_address
from gateway.intake.facts import (
    clean_text,
    conversation_token,
    extract,
    facts_of,
    first_message_id,
    normalize_message_id,
    thread_subject,
)

PREFIXES = st.lists(
    st.sampled_from(["Re: ", "RE:", "Fwd: ", "FW: ", "AW: ", "SV: ", "Re[2]: "]), max_size=4
)


@given(st.binary(max_size=2000))
def test_extract_never_raises_on_arbitrary_bytes(raw: bytes) -> None:
    found = extract(raw, envelope_from=None)
    found.subject.encode("utf-8")  # storable as text, whatever came in


@given(st.text(max_size=200), st.text(max_size=40))
def test_extract_never_raises_on_arbitrary_headers(subject: str, name: str) -> None:
    raw = (f"From: {name} <x@example.org>\r\nSubject: {subject}\r\n\r\nbody\r\n").encode(
        "utf-8", "surrogatepass"
    )
    extract(raw).subject.encode("utf-8")


@given(PREFIXES, st.text(min_size=1, max_size=60).filter(lambda s: s.strip()))
def test_thread_subject_strips_reply_prefixes(prefixes: list[str], subject: str) -> None:
    assert thread_subject("".join(prefixes) + subject) == thread_subject(subject)


@given(st.text(max_size=80))
def test_thread_subject_is_idempotent(subject: str) -> None:
    once = thread_subject(subject)
    assert thread_subject(once) == once


def test_thread_subject_ignores_the_conversation_token() -> None:
    assert thread_subject("Re: [#12] Printer  JAMS") == "printer jams"
    assert conversation_token("Re: [#12] Assigned: x") == 12
    assert conversation_token("[#x] nope") is None


@given(st.from_regex(r"[a-z0-9.]{1,10}@[a-z0-9]{1,10}\.[a-z]{2,4}", fullmatch=True))
def test_message_id_normalisation_removes_brackets_and_white_space(ident: str) -> None:
    assert normalize_message_id(f"  <{ident[:3]} {ident[3:]}>  ") == ident
    assert normalize_message_id(ident) == ident


@given(
    local=st.from_regex(r"[a-z]{1,8}", fullmatch=True),
    tag=st.from_regex(r"[a-z0-9]{0,8}", fullmatch=True),
)
def test_address_normalisation_folds_case_and_drops_the_plus_tag(local: str, tag: str) -> None:
    assert normalize_address(f"{local.upper()}+{tag}@Example.COM") == f"{local}@example.com"


def test_encoded_subject_and_sender_are_decoded() -> None:
    message = EmailMessage()
    message["From"] = "Jörg <Joerg@Mail.Example.COM>"
    message["Subject"] = "Grüße, refund"
    message["Cc"] = "a@x.org, B <b@y.org>"
    message["In-Reply-To"] = "<one@x>"
    message["References"] = "<zero@x> <one@x>"
    message.set_content("x")
    found = extract(message.as_bytes(policy=SMTP))
    assert found.subject == "Grüße, refund"
    assert (found.sender, found.sender_name, found.sender_domain) == (
        "joerg@mail.example.com",
        "Jörg",
        "mail.example.com",
    )
    assert found.recipients == ("a@x.org", "b@y.org")
    assert found.references == ("one@x", "zero@x")


def test_the_sender_is_from_else_the_envelope_and_only_ever_an_address() -> None:
    assert extract(b"From: A <a@b.c>\r\n\r\n", "env@x.org").sender == "a@b.c"
    assert extract(b"From: not an address\r\n\r\n", "<Env@X.org>").sender == "env@x.org"
    assert extract(b"From: not an address\r\n\r\n", None).sender is None
    assert extract(b"Subject: x\r\n\r\n", "postmaster").sender is None


def test_auto_mail_is_recognised() -> None:
    base = b"From: a@b.c\r\nSubject: x\r\n"
    assert extract(base + b"Auto-Submitted: auto-replied\r\n\r\n").auto == "auto-submitted"
    assert extract(base + b"Auto-Submitted: no\r\n\r\n").auto is None
    assert extract(base + b"Precedence: junk\r\n\r\n").auto == "precedence"
    # Some auto-responders say so by this alone (Postfix's vacation, older Exchange).
    assert extract(base + b"Precedence: auto_reply\r\n\r\n").auto == "precedence"
    assert extract(base + b"\r\n", envelope_from="").auto == "bounce"
    assert extract(base + b"\r\n", envelope_from="a@b.c").auto is None


def test_hostile_subjects_are_handled_in_linear_time() -> None:
    # With a backtracking prefix pattern these took minutes (quadratic in the spaces).
    assert thread_subject("re" + " " * 200_000 + ":x") == "re"
    assert thread_subject("Re" + "[#1]" * 50_000 + "x").startswith("re")
    assert conversation_token("[#" + "9" * 30 + "]") is None


HEADERISH = st.lists(
    st.sampled_from(
        [
            *(b"From: a@b.c", b"Subject: hi", b"Message-ID: <x@y>", b" folded", b"\t", b""),
            *(b"\r", b"References: <r@s>", b"no colon", b"Content-Type: text/plain", b"\xff\x00"),
        ]
    ),
    max_size=12,
)


@given(HEADERISH, st.sampled_from([b"\r\n", b"\n"]), st.binary(max_size=300))
def test_the_body_is_never_parsed_and_facts_are_the_same(
    lines: list[bytes], newline: bytes, body: bytes
) -> None:
    raw = newline.join(lines) + newline + body
    whole = BytesParser(policy=policy.default).parsebytes(raw, headersonly=True)
    assert extract(raw) == facts_of(whole, None)


MESSAGE_IDS = st.lists(
    st.sampled_from(
        [
            *(b"Message-ID: <a@b>", b"message-id:<c@d>", b"MESSAGE-ID:   <e@f>", b" <folded@x>"),
            *(b"\tmore", b"Message-Id:", b"Message-ID : <space@before>", b": empty name"),
            *(b"From someone Tue", b"X-Other: 1", b"no colon", b"Message-ID: \xe9t\xe9@x"),
            *(b"", b"\r", b"Message-ID: <unterminated", b"Message-ID: <g@h>\rbare-cr"),
        ]
    ),
    max_size=10,
)


@given(MESSAGE_IDS, st.sampled_from([b"\r\n", b"\n"]), st.binary(max_size=50))
def test_the_fast_message_id_is_the_one_email_parses(
    lines: list[bytes], newline: bytes, body: bytes
) -> None:
    raw = newline.join(lines) + newline + body
    parsed = BytesParser(policy=policy.default).parsebytes(raw, headersonly=True)
    values = [clean_text(str(v)) for k, v in parsed.raw_items() if k.lower() == "message-id"]
    assert first_message_id(raw) == (values[0] if values else None)
