"""Marks the gateway's own alerts so they are recognised when they come back.

The mark is `EVENT-ID.HMAC`, keyed with a secret made at first start and kept
in the store: a sender who forges the header cannot make a customer's mail
vanish, since a mark that does not verify is ignored.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets

from gateway.store import queries
from gateway.store.db import Tx

SECRET_KEY = "alert_mark_secret"


async def load_secret(conn: Tx) -> bytes:
    return bytes.fromhex(await queries.put_meta_once(conn, SECRET_KEY, secrets.token_hex(32)))


def _signature(secret: bytes, event_id: int) -> str:
    return hmac.new(secret, str(event_id).encode(), hashlib.sha256).hexdigest()[:32]


def mark(secret: bytes, event_id: int) -> str:
    return f"{event_id}.{_signature(secret, event_id)}"


_MARK = re.compile(r"([0-9]{1,18})\.([0-9a-f]{32})", re.ASCII)


def is_ours(secret: bytes, value: str | None) -> bool:
    """True only for a mark this gateway made; anything else, however odd, is not one."""
    found = _MARK.fullmatch(value.strip()) if value else None
    if found is None:
        return False
    return hmac.compare_digest(found.group(2), _signature(secret, int(found.group(1))))
