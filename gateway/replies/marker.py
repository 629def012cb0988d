"""The line that starts an alert: what an agent writes above it is the answer."""

from __future__ import annotations

MARKER = "##- Reply above this line to answer the customer -##"
# What is left of the marker's start once quoting and white space are gone: clients
# quote it ("> "), turn its spaces into NBSP (from HTML) and may rewrap its end.
_KEY = "".join(MARKER.split()[:5]).casefold()


def is_marker(line: str) -> bool:
    """Whether `line` is the marker, however quoted, spaced, cased or rewrapped."""
    return _KEY in "".join(line.split()).casefold()  # quoting (">") before it is no matter
