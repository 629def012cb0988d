"""The customer's answer in an agent's reply to an alert (DESIGN §12): the marker line
however a client quotes it, and what is cut below and around it."""

from __future__ import annotations

import pytest

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
