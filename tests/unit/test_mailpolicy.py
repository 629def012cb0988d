"""The gateway's email policy: the email package's, its header classes made once a name."""

from __future__ import annotations

from email.headerregistry import HeaderRegistry

from hypothesis import given
from hypothesis import strategies as st

from gateway.mailpolicy import REGISTRY

NAMES = st.sampled_from(["Subject", "From", "to", "Message-ID", "Date", "X-Anything", "CC"])


def test_a_header_name_has_one_class_whatever_its_case() -> None:
    assert REGISTRY["Subject"] is REGISTRY["subject"] is REGISTRY["SUBJECT"]
    assert REGISTRY["To"] is not REGISTRY["Subject"]


@given(NAMES, st.text(max_size=200).map(lambda text: text.replace("\r", "").replace("\n", "")))
def test_a_header_reads_as_the_email_packages_registry_reads_it(name: str, value: str) -> None:
    theirs = HeaderRegistry()(name, value)
    ours = REGISTRY(name, value)
    assert str(ours) == str(theirs)
    assert [type(d) for d in ours.defects] == [type(d) for d in theirs.defects]
    assert type(ours).__mro__[1:] == type(theirs).__mro__[1:]
