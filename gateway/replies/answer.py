"""The customer's answer in an agent's reply to an alert: what the agent wrote above it.

The alert starts with the marker line, so everything from it on is the alert,
however the client quoted it. Clients put a line or a block of their own above
what they quote, which names the gateway's internal sender: an attribution ("On …
wrote:", in the client's language) or Outlook's header block ("From: … Sent: …")
with its rule. Those go too, and so does the agent's signature (RFC 3676's "-- ").
Without the marker (a client that dropped it), the answer ends where quoting starts.

Each line is looked at a bounded number of times: time is linear in the text.
"""

from __future__ import annotations

import re

from gateway.replies.marker import is_marker

MAX_ANSWER_CHARS = 100_000  # the longest answer sent to a customer
# An attribution's first word and the verb it holds: "On … wrote:", "Am … schrieb …:",
# "Le … a écrit :", "El … escribió:", "Op … schreef …:", "Il giorno … ha scritto:",
# "Em … escreveu:", "Den … skrev …:".
_ATTRIBUTIONS = {
    "on": "wrote",
    "am": "schrieb",
    "le": "a écrit",
    "el": "escribió",
    "op": "schreef",
    "il": "ha scritto",
    "em": "escreveu",
    "den": "skrev",
}
# Outlook's header block: the sender's line, then one of the others, in the languages above.
_FROM = frozenset({"from", "von", "de", "van", "da", "från"})
_HEADERS = frozenset(
    {
        "sent", "date", "to", "cc", "subject",
        "gesendet", "datum", "an", "betreff",
        "envoyé", "à", "objet",
        "enviado", "enviado el", "fecha", "para", "asunto",
        "verzonden", "aan", "onderwerp",
        "inviato", "a", "oggetto", "data",
        "enviada", "assunto",
        "skickat", "till", "ämne",
    }
)  # fmt: skip
MAX_LABEL = 16  # a line's characters read for a header's name: the names are short
MAX_HEADER_LINES = 12  # a header block's lines, its long To: or Cc: wrapped
_QUOTING = re.compile(r"[\s>]*")  # one class: no backtracking
_DIGIT = re.compile(r"[0-9]")  # an attribution's date: a sentence that only starts "On" has none
# What quoted history can start with: quoting, a rule, a header name (bold), an attribution.
_FIRST = frozenset(">-_*" + "".join(word[0] + word[0].upper() for word in {*_ATTRIBUTIONS, *_FROM}))
_SIGNATURE = frozenset({"-- ", "--"})  # RFC 3676's delimiter, its space lost to some clients


def _unquoted(line: str) -> str:
    """The line without its quoting ("> > ") and its white space around."""
    match = _QUOTING.match(line)
    return line[match.end() if match else 0 :].strip()


def _is_attribution(text: str) -> bool:
    """Whether unquoted `text` is an attribution: its first word, its verb, a date, a colon."""
    first = text.split(maxsplit=1)[0].casefold() if text else ""
    verb = _ATTRIBUTIONS.get(first)
    return (
        verb is not None
        and text.endswith(":")
        and verb in text.casefold()
        and _DIGIT.search(text) is not None
    )


def _attribution_lines(lines: list[str], index: int) -> int:
    """How many lines from `index` on are an attribution (Gmail wraps it on two), else 0."""
    text = _unquoted(lines[index])
    if _is_attribution(text):
        return 1
    following = _unquoted(lines[index + 1]) if index + 1 < len(lines) else ""
    return 2 if following and _is_attribution(f"{text} {following}") else 0


def _label(line: str) -> str:
    """The header name a line starts with ("From", "*Von*", "De :"), or ""."""
    name, colon, _ = _unquoted(line)[:MAX_LABEL].partition(":")
    return name.strip(" *\u00a0").casefold() if colon else ""


def _is_header_block(lines: list[str], index: int) -> bool:
    """Whether Outlook's header block starts at `index`: From, then another header."""
    return (
        index + 1 < len(lines)
        and _label(lines[index]) in _FROM
        and _label(lines[index + 1]) in _HEADERS
    )


def _is_separator(line: str) -> bool:
    """Outlook's line above its header block: "-----Original Message-----", underscores."""
    text = _unquoted(line)
    if text.startswith("-----") and text.endswith("-----"):
        return bool(text.strip("- "))
    return len(text) >= 20 and not text.strip("_")


def _is_blank(line: str) -> bool:
    return not _unquoted(line)


def _quote_starts(lines: list[str], index: int) -> bool:
    """Whether quoted history starts at `index`, for a reply whose marker is gone."""
    line = lines[index]
    first = line.lstrip()[:1]
    if first not in _FIRST:
        return False  # most lines: no closer look
    return (
        first == ">"
        or _is_separator(line)
        or _is_header_block(lines, index)
        or _attribution_lines(lines, index) > 0
    )


def _skip_blank(lines: list[str], end: int) -> int:
    while end > 0 and _is_blank(lines[end - 1]):
        end -= 1
    return end


def _header_above(lines: list[str], end: int) -> int:
    """Where the answer ends when the quote starts at `end`: above the client's own
    attribution, or header block and rule, directly above it."""
    end = _skip_blank(lines, end)
    for span in (1, 2):
        if end >= span and _attribution_lines(lines, end - span) == span:
            return end - span
    for index in range(end - 1, max(end - MAX_HEADER_LINES, 0) - 1, -1):
        if _is_blank(lines[index]):
            break  # a header block has no blank line
        if _is_header_block(lines, index):
            end = _skip_blank(lines, index)
            break
    return end - 1 if end and _is_separator(lines[end - 1]) else end


def cut(text: str) -> str:
    """The agent's answer in `text`: above the marker (or the quote), without the client's
    attribution or header block, without the signature, trimmed; may be ""."""
    lines = text.splitlines()
    end = next((i for i, line in enumerate(lines) if is_marker(line)), None)
    if end is None:
        end = next((i for i in range(len(lines)) if _quote_starts(lines, i)), len(lines))
    end = _header_above(lines, end)
    signature = next((i for i in range(end) if lines[i] in _SIGNATURE), None)
    answer = lines[: end if signature is None else signature]
    return "\n".join(line.rstrip() for line in answer).strip("\n")
