"""The token in an alert's Reply-To: which alert an agent's mail answers, and to whom
it was sent, signed so that it cannot be made up.

TOKEN is `EVENT-SIGNATURE`: the alert's event id, and 100 bits of an HMAC over the
event id and the agent's id with the store's secret, in lower-case base32 (letters and
digits, which every local part holds and no mail system changes; a server that folds
the local part's case keeps it valid). The agent is not in the token but in the
signature: a token checks out only with the From of the agent it was sent to.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from collections.abc import Iterable
from dataclasses import dataclass

from gateway.addresses import normalize_address

_SIGNATURE_CHARS = 20  # 100 bits of base32
_TOKEN = re.compile(r"([0-9]{1,18})-([a-z2-7]{20})", re.ASCII)


def _signature(secret: bytes, event_id: int, agent: str) -> str:
    digest = hmac.new(secret, f"reply|{event_id}|{agent}".encode(), hashlib.sha256).digest()
    return base64.b32encode(digest).decode().lower()[:_SIGNATURE_CHARS]


def make(secret: bytes, event_id: int, agent: str) -> str:
    return f"{event_id}-{_signature(secret, event_id, agent)}"


def reply_address(replies: str, token: str) -> str:
    """replies@host → replies+TOKEN@host."""
    local, _, domain = replies.rpartition("@")
    return f"{local}+{token}@{domain}"


@dataclass(frozen=True)
class Token:
    event_id: int
    agent: str | None  # whose alert it is; None: no agent's (made up, or for another gateway)


def found_in(replies: str, addresses: Iterable[str]) -> str | None:
    """The TOKEN of the first of `addresses` that is replies+TOKEN@ (None: none is)."""
    wanted = normalize_address(replies)
    for address in addresses:
        address = address.strip().strip("<>")
        local, _, _ = address.rpartition("@")
        if "+" in local and normalize_address(address) == wanted:
            return local.split("+", 1)[1]
    return None


def check(secret: bytes, token: str, agents: Iterable[str]) -> Token | None:
    """The alert a token names, with the agent (of `agents`) it was sent to; None when it
    is not a token at all."""
    found = _TOKEN.fullmatch(token.strip().lower())
    if found is None:
        return None
    event_id, signature = int(found.group(1)), found.group(2)
    for agent in agents:
        if hmac.compare_digest(signature, _signature(secret, event_id, agent)):
            return Token(event_id, agent)
    return Token(event_id, None)
