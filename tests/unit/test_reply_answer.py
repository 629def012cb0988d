"""The customer's answer in an agent's reply to an alert (DESIGN §12): the marker line
however a client quotes it, and what is cut below and around it."""

from __future__ import annotations

from html import escape

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.mailtext import html_to_text
from gateway.replies.answer import cut
from gateway.replies.marker import MARKER, is_marker


@pytest.mark.parametrize(
    "line",
    [
        MARKER,
        f"> {MARKER}",
        f"> > {MARKER}",
        f">>{MARKER}",
        f" >  > \t{MARKER}  ",
        MARKER.replace(" ", "\u00a0"),
        "##- REPLY ABOVE THIS LINE to answer",  # rewrapped by the client
        "##-  Reply  above this\u00a0line",
    ],
)
def test_the_marker_is_known_however_quoted_spaced_or_cased(line: str) -> None:
    assert is_marker(line)


@pytest.mark.parametrize(
    "line", ["", "> Reply above this line", "## Reply above this", "Thanks, I replied above."]
)
def test_other_lines_are_not_the_marker(line: str) -> None:
    assert not is_marker(line)


ANSWER = "Hi Ann,\n\nYour order ships today.\n\nBob"
ALERT = f"{MARKER}\n\nHello, my order 4711 is late.\nAnn\n\nAssigned to bob by rule 'orders'.\n"
GATEWAY = "Support gateway <alerts@gw.example.com>"


def quoted(text: str) -> str:
    return "".join(f"> {line}\n" if line else ">\n" for line in text.splitlines())


def test_a_gmail_plain_text_reply_gives_the_agents_text() -> None:
    reply = f"{ANSWER}\n\nOn Mon, 1 Dec 2026 at 10:00, {GATEWAY} wrote:\n\n{quoted(ALERT)}"
    assert cut(reply) == ANSWER


def test_gmails_attribution_wrapped_over_two_lines_goes_too() -> None:
    reply = f"{ANSWER}\n\nOn Mon, 1 Dec 2026 at 10:00, {GATEWAY}\nwrote:\n\n{quoted(ALERT)}"
    assert cut(reply) == ANSWER


@pytest.mark.parametrize(
    "attribution",
    [
        f"Am Mo., 1. Dez. 2026 um 10:00 Uhr schrieb {GATEWAY}:",
        f"Le lun. 1 d\u00e9c. 2026 \u00e0 10:00, {GATEWAY} a \u00e9crit\u00a0:",
        f"El lun, 1 dic 2026 a las 10:00, {GATEWAY} escribi\u00f3:",
        f"Op ma 1 dec. 2026 om 10:00 schreef {GATEWAY}:",
        f"Il giorno lun 1 dic 2026 alle ore 10:00 {GATEWAY} ha scritto:",
        f"Em seg., 1 de dez. de 2026 \u00e0s 10:00, {GATEWAY} escreveu:",
        f"Den 1 dec. 2026 kl. 10:00 skrev {GATEWAY}:",
    ],
)
def test_a_localized_attribution_above_the_marker_goes_too(attribution: str) -> None:
    assert cut(f"{ANSWER}\n\n{attribution}\n\n{quoted(ALERT)}") == ANSWER


def test_a_gmail_html_reply_gives_the_agents_text() -> None:
    html = (
        '<div dir="ltr"><div>Hi Ann,</div><div><br></div><div>Your order ships today.</div>'
        '<div><br></div><div>Bob</div></div><br><div class="gmail_quote">'
        '<div dir="ltr" class="gmail_attr">On Mon, 1 Dec 2026 at 10:00, Support gateway &lt;'
        '<a href="mailto:alerts@gw.example.com">alerts@gw.example.com</a>&gt; wrote:<br></div>'
        '<blockquote class="gmail_quote" style="margin:0px 0px 0px 0.8ex;border-left:1px solid '
        'rgb(204,204,204);padding-left:1ex">##- Reply above this line to answer the customer -##'
        "<br><br>Hello, my order 4711 is late.<br>Ann<br><br>Assigned to bob by rule 'orders'."
        "<br></blockquote></div>"
    )
    assert cut(html_to_text(html)) == ANSWER


OUTLOOK_HTML = (
    "<html><head><style>p.MsoNormal {{margin:0in;}}</style></head><body lang=EN-US>"
    "<div class=WordSection1><p class=MsoNormal>Hi Ann,<o:p></o:p></p>"
    "<p class=MsoNormal><o:p>&nbsp;</o:p></p>"
    "<p class=MsoNormal>Your order ships today.<o:p></o:p></p>"
    "<p class=MsoNormal><o:p>&nbsp;</o:p></p><p class=MsoNormal>Bob<o:p></o:p></p>"
    "<p class=MsoNormal><o:p>&nbsp;</o:p></p>"
    "<div><div style='border:none;border-top:solid #E1E1E1 1.0pt;padding:3.0pt 0in 0in 0in'>"
    "<p class=MsoNormal><b>{from_}</b> Support gateway &lt;alerts@gw.example.com&gt; <br>"
    "<b>{sent}</b> Monday, December 1, 2026 10:00 AM<br><b>{to}</b> Bob &lt;bob@example.com&gt;"
    "<br><b>{subject}</b> [#12] late order<o:p></o:p></p></div></div>"
    "<p class=MsoNormal><o:p>&nbsp;</o:p></p>"
    "<p class=MsoNormal>##- Reply above this line to answer the customer -##<o:p></o:p></p>"
    "<p class=MsoNormal>Hello, my order 4711 is late.<o:p></o:p></p></div></body></html>"
)


@pytest.mark.parametrize(
    "labels",
    [
        ("From:", "Sent:", "To:", "Subject:"),
        ("Von:", "Gesendet:", "An:", "Betreff:"),
        ("Da:", "Inviato:", "A:", "Oggetto:"),
        ("Fr\u00e5n:", "Skickat:", "Till:", "\u00c4mne:"),
    ],
    ids=["english", "german", "italian", "swedish"],
)
def test_an_outlook_html_reply_gives_the_agents_text(labels: tuple[str, ...]) -> None:
    from_, sent, to, subject = labels
    html = OUTLOOK_HTML.format(from_=from_, sent=sent, to=to, subject=subject)
    assert cut(html_to_text(html)) == ANSWER


def test_an_outlook_web_reply_with_its_rule_gives_the_agents_text() -> None:
    html = (
        "<div>Hi Ann,</div><div><br></div><div>Your order ships today.</div><div><br></div>"
        '<div>Bob</div><hr style="display:inline-block;width:98%" tabindex="-1">'
        '<div id="divRplyFwdMsg" dir="ltr"><font face="Calibri, sans-serif">'
        "<b>De&nbsp;:</b> Support gateway &lt;alerts@gw.example.com&gt;<br>"
        "<b>Envoy\u00e9&nbsp;:</b> lundi 1 d\u00e9cembre 2026 10:00<br>"
        "<b>\u00c0&nbsp;:</b> Bob &lt;bob@example.com&gt;<br><b>Objet&nbsp;:</b> [#12] late order"
        "</font><div>&nbsp;</div></div><div>##- Reply above this line to answer the customer -##"
        "</div><div>Hello, my order 4711 is late.</div>"
    )
    assert cut(html_to_text(html)) == ANSWER


@pytest.mark.parametrize(
    "separator", ["-----Original Message-----", "_" * 32], ids=["original", "underscores"]
)
def test_an_outlook_plain_text_reply_gives_the_agents_text(separator: str) -> None:
    reply = (
        f"{ANSWER}\n\n{separator}\nFrom: {GATEWAY} \nSent: Monday, December 1, 2026 10:00 AM\n"
        f"To: Bob <bob@example.com>\nSubject: [#12] late order\n\n{ALERT}"
    )
    assert cut(reply) == ANSWER


def test_an_apple_mail_plain_text_reply_gives_the_agents_text() -> None:
    reply = f"{ANSWER}\n\n> On 1 Dec 2026, at 10:00, {GATEWAY} wrote:\n> \n{quoted(ALERT)}"
    assert cut(reply) == ANSWER


def test_an_apple_mail_html_reply_gives_the_agents_text() -> None:
    html = (
        '<html><head><meta http-equiv="content-type" content="text/html; charset=utf-8"></head>'
        '<body style="overflow-wrap: break-word;">Hi Ann,<div><br></div>'
        "<div>Your order ships today.</div><div><br></div>"
        '<div>Bob<br id="lineBreakAtBeginningOfMessage"><div><br><blockquote type="cite">'
        "<div>On 1 Dec 2026, at 10:00, Support gateway &lt;alerts@gw.example.com&gt; wrote:</div>"
        '<br class="Apple-interchange-newline"><div><div>'
        "##- Reply above this line to answer the customer -##<br><br>"
        "Hello, my order 4711 is late.<br></div></div></blockquote></div><br></div></body></html>"
    )
    assert cut(html_to_text(html)) == ANSWER


def test_a_thunderbird_plain_text_reply_gives_the_agents_text() -> None:
    reply = f"{ANSWER}\n\nOn 12/1/26 10:00, Support gateway wrote:\n{quoted(ALERT)}"
    assert cut(reply) == ANSWER


def test_a_thunderbird_html_reply_quoting_the_plain_alert_gives_the_agents_text() -> None:
    html = (
        "<html><body><p>Hi Ann,</p><p>Your order ships today.</p><p>Bob<br></p>"
        '<div class="moz-cite-prefix">On 12/1/26 10:00, Support gateway wrote:<br></div>'
        '<blockquote type="cite"><pre class="moz-quote-pre" wrap="">'
        f"{ALERT}</pre></blockquote></body></html>"
    )
    assert cut(html_to_text(html)) == ANSWER


def test_the_agents_signature_goes() -> None:
    for delimiter in ("-- ", "--"):
        signed = f"{ANSWER}\n{delimiter}\nBob Smith\nExample Support\n"
        assert cut(f"{signed}\nOn 12/1/26 10:00, Support gateway wrote:\n{quoted(ALERT)}") == (
            ANSWER
        )


def test_a_reply_that_is_only_a_signature_is_empty() -> None:
    assert cut(f"-- \nBob Smith\n{quoted(ALERT)}") == ""


def test_a_line_that_only_starts_like_the_delimiter_is_no_signature() -> None:
    assert cut(f"Hi Ann,\n-- see below\n---\nBob\n{MARKER}\n") == "Hi Ann,\n-- see below\n---\nBob"


def test_without_the_marker_the_answer_ends_at_the_first_quoted_line() -> None:
    assert cut(f"{ANSWER}\n> Hello, my order 4711 is late.\nmore\n") == ANSWER


def test_without_the_marker_the_answer_ends_at_an_attribution() -> None:
    reply = f"{ANSWER}\n\nOn Mon, 1 Dec 2026 at 10:00, {GATEWAY} wrote:\nHello, my order\n"
    assert cut(reply) == ANSWER


def test_without_the_marker_the_answer_ends_at_an_outlook_header_block() -> None:
    reply = f"{ANSWER}\n\nFrom: {GATEWAY}\nSent: Monday\nTo: bob@example.com\n\nHello\n"
    assert cut(reply) == ANSWER


def test_a_sentence_that_starts_like_an_attribution_but_has_no_date_is_kept() -> None:
    reply = "On second thought, here is what I wrote:\nThe box ships today.\n"
    assert cut(reply) == reply.strip()


def test_lines_lose_their_trailing_white_space_and_the_text_its_blank_edges() -> None:
    assert cut(f"\n \nHi Ann,  \n\nBye.\t\n\n{MARKER}\n") == "Hi Ann,\n\nBye."


def test_a_reply_with_nothing_above_the_marker_is_empty() -> None:
    assert cut(f"\n{quoted(ALERT)}") == ""


def test_a_reply_that_is_all_answer_is_kept_whole() -> None:
    assert cut("Hi Ann,\nfrom tomorrow on, we ship daily.\nBob\n") == (
        "Hi Ann,\nfrom tomorrow on, we ship daily.\nBob"
    )


SENTINEL = "Zq9-below-the-marker"
ABOVE = st.text(max_size=300).filter(lambda text: SENTINEL not in text)
BELOW = st.tuples(st.text(max_size=100), st.text(max_size=100)).map(
    lambda parts: parts[0] + SENTINEL + parts[1]
)


@given(ABOVE, BELOW)
def test_nothing_below_the_marker_is_ever_in_the_answer(above: str, below: str) -> None:
    answer = cut(f"{above}\n{MARKER}\n{below}")
    assert SENTINEL not in answer
    written = {line.rstrip() for line in above.splitlines()}
    assert all(line in written for line in answer.split("\n") if line)


@given(ABOVE, BELOW)
def test_nothing_below_a_quoted_marker_is_ever_in_the_answer(above: str, below: str) -> None:
    answer = cut(f"{above}\n{quoted(MARKER + chr(10) + below)}")
    assert SENTINEL not in answer
    written = {line.rstrip() for line in above.splitlines()}
    assert all(line in written for line in answer.split("\n") if line)


@given(ABOVE, BELOW)
def test_nothing_below_the_marker_in_html_is_ever_in_the_answer(above: str, below: str) -> None:
    paragraphs = "".join(f"<p>{escape(line)}</p>" for line in above.splitlines())
    quote = "<br>".join(escape(line) for line in [MARKER, *below.splitlines()])
    assert SENTINEL not in cut(html_to_text(f"{paragraphs}<blockquote>{quote}</blockquote>"))


@pytest.mark.parametrize(
    "text",
    [
        "On 1 2 " * 300_000,
        ("On 1\n" * 300_000),
        "> " * 1_000_000,
        "From: x\n" * 300_000,
        "-----" * 300_000,
        ("a\n" * 300_000) + MARKER,
    ],
)
def test_hostile_text_is_cut_without_raising(text: str) -> None:
    cut(text)
