"""The text a person reads in a message: its plain text, else its HTML as text.

Nothing here raises, whatever the mail: broken MIME, charsets the codecs do not
know or are not text encodings, nesting deeper than the parser's recursion. The
worst case is empty text.
"""

from __future__ import annotations

import html
import re
from email.message import EmailMessage, Message
from email.parser import BytesParser

from gateway.mailpolicy import DEFAULT

# HTML's own white space, and NBSP, which mail editors write for every other space.
_SPACES = re.compile(r"[ \t\n\r\f\u00a0]+")  # one class, one run: no backtracking
# Comments, declarations, processing instructions (to their end, or the input's), and
# tags to their ">", where a quoted value may hold one. Each alternative starts with
# its own characters, each character has one way to match, and every tail is optional
# (a tag's ">" too): a match never fails once started, so nothing backtracks.
# Any other "<" is text, as browsers read it.
_MARKUP = re.compile(
    r"""<!--.*?(?:-->|\Z)|<[!?][^>]*>?|<(/?)([a-zA-Z][^\s/>]*)((?:[^>"']+|"[^"]*"|'[^']*')*)>?""",
    re.DOTALL,
)
_RAW_ENDS = {name: re.compile(rf"</{name}[^>]*>?", re.IGNORECASE) for name in ("script", "style")}
# A decimal reference past int()'s digit limit makes html.unescape raise; it is no character.
_HUGE_REFERENCE = re.compile(r"&#[0-9]{16,};?")
_HIDDEN = frozenset({"head", "title"})
_PARAGRAPHS = frozenset({"p", "h1", "h2", "h3", "h4", "h5", "h6"})
_BLOCKS = frozenset(
    {
        "address", "article", "aside", "blockquote", "caption", "center", "dd", "details",
        "div", "dl", "dt", "fieldset", "figcaption", "figure", "footer", "form", "header",
        "hr", "li", "main", "nav", "ol", "pre", "section", "summary", "table", "tbody",
        "tfoot", "thead", "tr", "ul",
    }
)  # fmt: skip
_CELLS = frozenset({"td", "th"})
_SHOWN = _HIDDEN | _PARAGRAPHS | _BLOCKS | _CELLS | {"body", "br"}  # what the others change
MAX_QUOTES = 20  # quote marks a line gets at most: hostile nesting must not square the text


class _Lines:
    """Lines of text as the HTML would show them, blockquotes quoted with "> "."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self._words: list[str] = []  # the line being read
        self._space = False  # white space was read after the last word
        self._blank = True  # the last line is blank (or there is none): blanks don't repeat
        self._hidden = 0
        self._quotes = 0
        self._pre = 0
        self._outlook_line = False  # the open <p> is Outlook's, one line each

    def _emit(self, text: str) -> None:
        text = text.rstrip()
        if not text and self._blank:
            return
        self.lines.append(("> " * min(self._quotes, MAX_QUOTES) + text).rstrip())
        self._blank = not text

    def _line_break(self) -> None:
        """The line read so far ends, even empty (<br>, a newline in <pre>)."""
        self._emit("".join(self._words))
        self._words = []
        self._space = False

    def _end_line(self) -> None:
        if self._words:
            self._line_break()

    def _block(self, tag: str) -> None:
        if tag in _PARAGRAPHS and not (tag == "p" and self._outlook_line):
            self._end_line()
            self._emit("")
        elif tag in _BLOCKS or tag in _PARAGRAPHS:
            self._end_line()

    def start(self, tag: str, attributes: str) -> None:
        if tag in _HIDDEN:
            self._hidden += 1
        elif tag == "body":
            self._hidden = 0  # a <head> left open ends here, as browsers read it
        elif tag == "br":
            self._line_break()
        elif tag in _CELLS:
            self._space = True
        if tag == "p":
            # Outlook writes each line as <p class=MsoNormal>, a blank one as one with &nbsp;
            self._outlook_line = "MsoNormal" in attributes
        self._block(tag)
        if tag == "blockquote":
            self._quotes += 1
        elif tag == "pre":
            self._pre += 1
        elif tag == "li":
            self._words, self._space = ["-"], True

    def end(self, tag: str) -> None:
        if tag in _HIDDEN:
            self._hidden = max(0, self._hidden - 1)
        if tag == "p" and self._outlook_line:
            self._line_break()  # Outlook's empty one is its blank line
        else:
            self._block(tag)
        if tag == "blockquote":
            self._quotes = max(0, self._quotes - 1)
        elif tag == "pre":
            self._pre = max(0, self._pre - 1)

    def data(self, data: str) -> None:
        if self._hidden:
            return
        if "&" in data:
            data = html.unescape(_HUGE_REFERENCE.sub("\ufffd", data))
        if self._pre:
            first, *others = data.split("\n")
            self._words.append(first)
            for line in others:
                self._line_break()
                self._words.append(line)
            return
        words = _SPACES.sub(" ", data)
        self._space = self._space or words.startswith(" ")
        if words.strip(" "):
            if self._space and self._words:
                self._words.append(" ")
            self._words.append(words.strip(" "))
            self._space = words.endswith(" ")

    def text(self) -> str:
        self._end_line()
        while self.lines and not self.lines[-1].strip("> "):
            self.lines.pop()
        return "\n".join(self.lines)


def html_to_text(markup: str) -> str:
    """The text of the HTML, lines as it shows them; quoted parts with "> " as mail quotes.

    Read with regular expressions that cannot backtrack, each searching on from where
    the last match ended, so time is linear in the input: the standard library's
    HTMLParser (3.11) takes time that grows with the square of some input's length
    (40,000 characters of "<a " took 14 s, of "x<y", 1 s).
    """
    lines = _Lines()
    at, size = 0, len(markup)
    while at < size:
        token = _MARKUP.search(markup, at)
        if token is None:
            lines.data(markup[at:])
            break
        if token.start() > at:
            lines.data(markup[at : token.start()])
        at = token.end()
        closing, name = token.group(1, 2)
        if name is None:  # a comment, declaration or processing instruction
            continue
        name = name.lower()
        if name in _RAW_ENDS and not closing:  # script and style: all to their end tag
            raw_end = _RAW_ENDS[name].search(markup, at)
            at = size if raw_end is None else raw_end.end()
        elif name not in _SHOWN:
            continue
        elif closing:
            lines.end(name)
        else:
            lines.start(name, token.group(3))
    return lines.text()


def _decoded(part: Message) -> str:
    """The part's text in its charset, else as UTF-8; LF line ends."""
    payload = part.get_payload(decode=True)
    if not isinstance(payload, bytes):
        return ""
    try:
        text = payload.decode(part.get_content_charset() or "utf-8", "replace")
    except Exception:  # a charset unknown, not a text encoding, or one the codecs trip on
        text = payload.decode("utf-8", "replace")
    return text.replace("\r\n", "\n").replace("\r", "\n")


def body_text(msg: EmailMessage) -> str:
    """The text a person reads: the first text/plain body, else the HTML body as text."""
    try:
        plain = msg.get_body(preferencelist=("plain",))
        if plain is not None:
            return _decoded(plain)
        html = msg.get_body(preferencelist=("html",))
        return html_to_text(_decoded(html)) if html is not None else ""
    except Exception:  # MIME the email package itself trips on, nesting past its recursion
        return ""


def message_text(raw: bytes, limit: int) -> tuple[str, bool]:
    """The text of the raw message, its first `limit` characters; whether it was cut."""
    try:
        msg = BytesParser(EmailMessage, policy=DEFAULT).parsebytes(raw)
        text = body_text(msg)
    except Exception:  # the parser's own failures: whatever the mail, no text is the worst
        return "", False
    return text[:limit], len(text) > limit


def attachments(raw: bytes) -> list[tuple[str, int]]:
    """Each attached file of the raw message: its name (as sent, "unnamed" without one)
    and its size decoded, in order. Broken MIME gives what could be read of it."""
    found: list[tuple[str, int]] = []
    try:
        msg = BytesParser(EmailMessage, policy=DEFAULT).parsebytes(raw)
        for part in msg.walk():
            if part.is_multipart():
                continue
            name = part.get_filename()
            if part.get_content_disposition() != "attachment" and not name:
                continue
            payload = part.get_payload(decode=True)
            found.append(
                (str(name or "unnamed"), len(payload) if isinstance(payload, bytes) else 0)
            )
    except Exception:  # the parser's own failures, as for the text
        pass
    return found
