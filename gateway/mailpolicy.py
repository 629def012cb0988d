"""The email package's policies, as the gateway reads and writes mail with them.

The same as `email.policy.default` and `email.policy.SMTP`, but for one thing:
their header registry makes the class that parses a header once for each header
name, where the email package's makes a new class for every header it reads or
sets. That was a third of the time an alert took to build (0.7 of 2.0 ms).
"""

from __future__ import annotations

from collections import OrderedDict
from email import policy
from email.headerregistry import BaseHeader, HeaderRegistry
from typing import Any

KEPT_HEADERS = 256  # parsed headers kept, the most recently used: an alert's own repeat


class HeaderClasses(HeaderRegistry):
    """A header registry that keeps the header classes it has made, one for each name."""

    def __init__(self) -> None:
        super().__init__()
        self._made: dict[str, type[BaseHeader]] = {}
        self._parsed: OrderedDict[tuple[str, str], BaseHeader] = OrderedDict()

    def __call__(self, name: str, value: Any) -> BaseHeader:
        """The header `name: value`, parsed once while it is among the most recent:
        a header is immutable, and most of an alert's (its From, To, MIME headers) are
        the same from one alert to the next."""
        if not isinstance(value, str):  # an Address, say: made into text by the header
            return super().__call__(name, value)
        key = (name.lower(), value)
        parsed = self._parsed.get(key)
        if parsed is None:
            parsed = self._parsed[key] = super().__call__(name, value)
            if len(self._parsed) > KEPT_HEADERS:
                self._parsed.popitem(last=False)
        else:
            self._parsed.move_to_end(key)
        return parsed

    def __getitem__(self, name: str) -> type[BaseHeader]:
        key = name.lower()  # as the registry looks names up
        made = self._made.get(key)
        if made is None:
            made = self._made[key] = super().__getitem__(name)
        return made


REGISTRY = HeaderClasses()
DEFAULT = policy.default.clone(header_factory=REGISTRY)
SMTP = policy.SMTP.clone(header_factory=REGISTRY)
