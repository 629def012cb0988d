"""The gateway's email policy: the email package's, its header classes made once a name and
the headers it reads again parsed once."""

from __future__ import annotations

from email.headerregistry import HeaderRegistry

from hypothesis import given
from hypothesis import strategies as st

from gateway.mailpolicy import KEPT_HEADERS, REGISTRY

NAMES = st.sampled_from(["Subject", "From", "to", "Message-ID", "Date", "X-Anything", "CC"])


def test_a_header_name_has_one_class_whatever_its_case() -> None:
    assert REGISTRY["Subject"] is REGISTRY["subject"] is REGISTRY["SUBJECT"]
    assert REGISTRY["To"] is not REGISTRY["Subject"]


def reading(registry: HeaderRegistry, name: str, value: str) -> tuple[object, ...]:
    try:
        header = registry(name, value)
    except Exception as error:  # the email package's parser fails on some input
        return ("raised", type(error))
    return (str(header), [type(d) for d in header.defects], type(header).__mro__[1:])


@given(NAMES, st.text(max_size=200).map(lambda text: text.replace("\r", "").replace("\n", "")))
def test_a_header_reads_as_the_email_packages_registry_reads_it(name: str, value: str) -> None:
    theirs = reading(HeaderRegistry(), name, value)
    assert reading(REGISTRY, name, value) == theirs
    assert reading(REGISTRY, name, value) == theirs  # read again, kept


def test_a_header_read_again_is_parsed_once() -> None:
    first = REGISTRY("MIME-Version", "1.0")
    assert REGISTRY("mime-version", "1.0") is first
    assert REGISTRY("MIME-Version", "1.1") is not first


def test_the_headers_kept_are_bounded() -> None:
    first = REGISTRY("Subject", "the first of many")
    for n in range(KEPT_HEADERS):
        REGISTRY("Subject", f"another {n}")
    again = REGISTRY("Subject", "the first of many")
    assert again is not first and again == first
