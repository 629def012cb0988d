"""The text a person reads in a message: HTML made text, the body a reader sees, and
hostile mail read without raising."""

from __future__ import annotations

from email.message import EmailMessage
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.mailtext import body_text, html_to_text, message_text

HOSTILE = Path(__file__).parent.parent / "data" / "hostile"


def mail(*parts: tuple[str, str, str]) -> bytes:
    """A message of (subtype, charset, text) parts: one part alone, more as alternatives."""
    msg = EmailMessage()
    msg["From"] = "ann@example.org"
    msg["Subject"] = "late order"
    for subtype, charset, text in parts:
        if msg.is_multipart() or msg.get_content_type() != "text/plain" or msg.get_payload():
            msg.add_alternative(text, subtype=subtype, charset=charset)
        else:
            msg.set_content(text, subtype=subtype, charset=charset)
    return msg.as_bytes()


def test_block_elements_make_lines() -> None:
    html = "<div>one</div><div>two<br>three</div><table><tr><td>a</td><td>b</td></tr></table>"
    assert html_to_text(html) == "one\ntwo\nthree\na b"


def test_paragraphs_are_apart_but_outlooks_one_line_paragraphs_are_lines() -> None:
    assert html_to_text("<p>one</p><p>two</p>") == "one\n\ntwo"
    outlook = '<p class="MsoNormal">one</p><p class="MsoNormal">two</p>'
    assert html_to_text(outlook) == "one\ntwo"


def test_outlooks_empty_paragraph_is_a_blank_line() -> None:
    html = (
        "<p class=MsoNormal>one</p><p class=MsoNormal><o:p>&nbsp;</o:p></p><p class=MsoNormal>two"
    )
    assert html_to_text(html) == "one\n\ntwo"


def test_a_blockquote_quotes_each_of_its_lines_and_nested_ones_twice() -> None:
    html = "<div>me</div><blockquote><div>you</div><div>said</div><blockquote>it</blockquote>"
    assert html_to_text(html + "</blockquote>") == "me\n> you\n> said\n> > it"


def test_list_items_are_dashed_lines() -> None:
    assert html_to_text("<ul><li>tea</li><li> milk </li></ul>") == "- tea\n- milk"


def test_preformatted_text_keeps_its_lines_as_thunderbird_quotes_plain_text() -> None:
    html = '<blockquote type="cite"><pre class="moz-quote-pre">one\n  two\n</pre></blockquote>'
    assert html_to_text(html) == "> one\n>   two"


def test_a_numeric_reference_too_long_for_a_number_is_no_character() -> None:
    assert html_to_text("a&#" + "1" * 5000 + ";b") == "a\ufffdb"


def test_scripts_styles_and_head_are_dropped() -> None:
    html = (
        "<html><head><title>T</title><style>p {color: red}</style></head>"
        "<body><script>alert(1)</script>Hello</body></html>"
    )
    assert html_to_text(html) == "Hello"


def test_a_head_left_open_ends_where_the_body_starts() -> None:
    assert html_to_text("<html><head><title>T</title><body>Hello</body>") == "Hello"


def test_deep_quoting_is_shown_at_most_20_deep() -> None:
    assert html_to_text("<blockquote>" * 100 + "deep") == "> " * 20 + "deep"


def test_entities_are_decoded_and_links_are_their_text() -> None:
    html = 'Fish &amp; chips &lt;3 &#8364;5 <a href="https://x.example/">the menu</a>'
    assert html_to_text(html) == "Fish & chips <3 €5 the menu"


def test_inline_white_space_collapses_to_one_space() -> None:
    assert html_to_text("  Hello \n\t  <b>dear</b>\n   Ann  ") == "Hello dear Ann"


def test_no_more_than_one_blank_line_in_a_row() -> None:
    html = "<p>one</p><p>&nbsp;</p><br><br><br><div><br></div><p>two</p>"
    assert html_to_text(html) == "one\n\ntwo"


@given(st.text(max_size=300))
def test_any_html_converts_without_raising(html: str) -> None:
    assert "\n\n\n" not in html_to_text(html)


@pytest.mark.parametrize(
    "html",
    [
        "<blockquote>" * 100_000 + "deep",
        "<" * 200_000,
        "<!--" + "x" * 200_000,
        "<a " * 100_000,
        "&" * 200_000,
    ],
)
def test_hostile_html_converts_without_raising(html: str) -> None:
    html_to_text(html)


def test_an_html_only_message_gives_its_text() -> None:
    raw = mail(("html", "utf-8", "<p>Hello</p><p>my order is <b>late</b>.</p>"))
    assert message_text(raw, 1000) == ("Hello\n\nmy order is late.", False)


def test_a_multipart_alternative_gives_its_plain_text() -> None:
    raw = mail(("plain", "utf-8", "Plain words.\n"), ("html", "utf-8", "<p>HTML words</p>"))
    assert message_text(raw, 1000) == ("Plain words.\n", False)


def test_the_text_is_decoded_with_its_charset_and_lines_end_in_lf() -> None:
    raw = (
        b"Content-Type: text/plain; charset=iso-8859-1\r\nContent-Transfer-Encoding: 8bit\r\n"
        b"\r\nCaf\xe9 cr\xe8me\r\nplease\rnow\n"
    )
    assert message_text(raw, 1000) == ("Caf\u00e9 cr\u00e8me\nplease\nnow\n", False)


def test_an_unknown_charset_reads_as_utf8() -> None:
    raw = (
        b"From: ann@example.org\r\nContent-Type: text/plain; charset=x-nonesuch\r\n"
        b"Content-Transfer-Encoding: 8bit\r\n\r\nCaf\xc3\xa9 \xff\r\n"
    )
    assert message_text(raw, 1000) == ("Caf\u00e9 \ufffd\n", False)


def test_a_charset_that_is_no_text_encoding_reads_as_utf8() -> None:
    raw = b"Content-Type: text/plain; charset=zlib_codec\r\n\r\nnot compressed\r\n"
    assert message_text(raw, 1000) == ("not compressed\n", False)


def test_a_message_without_text_gives_nothing() -> None:
    raw = b"Content-Type: image/png\r\nContent-Transfer-Encoding: base64\r\n\r\niVBORw0K\r\n"
    assert message_text(raw, 1000) == ("", False)


def test_the_text_is_cut_at_the_limit_and_says_so() -> None:
    raw = mail(("plain", "utf-8", "0123456789\n"))
    assert message_text(raw, 4) == ("0123", True)
    assert message_text(raw, 11) == ("0123456789\n", False)


@pytest.mark.parametrize("path", sorted(HOSTILE.glob("*.eml")), ids=lambda path: path.name)
def test_hostile_mail_gives_text_or_nothing_without_raising(path: Path) -> None:
    text, _ = message_text(path.read_bytes(), 100_000)
    text.encode("utf-8")


def test_deeply_nested_mime_gives_nothing_without_raising() -> None:
    head = b"".join(
        b'Content-Type: multipart/mixed; boundary="b%d"\r\n\r\n--b%d\r\n' % (i, i)
        for i in range(5000)
    )
    assert message_text(head + b"Content-Type: text/plain\r\n\r\ndeep\r\n", 100) in {
        ("", False),
        ("deep\n", False),
    }


def test_body_text_of_a_message_nested_past_the_recursion_limit_is_empty() -> None:
    msg = EmailMessage()
    msg.set_content("deep")
    for _ in range(3000):
        outer = EmailMessage()
        outer.make_mixed()
        outer.attach(msg)
        msg = outer
    assert body_text(msg) == ""
