"""One form for an address or a domain, so comparisons agree everywhere."""

from __future__ import annotations

from functools import lru_cache

import idna


# IDNA decoding costs microseconds and every message asks for the same few domains
# (its inboxes, the desk's customers); bounded, so hostile variety only churns it.
@lru_cache(maxsize=4096)
def normalize_domain(domain: str) -> str:
    """One form for a domain: Unicode (IDNA 2008 with UTS 46 mapping), case-folded."""
    domain = domain.strip().rstrip(".")
    try:
        return idna.decode(domain, uts46=True).casefold()
    except (idna.IDNAError, UnicodeError, ValueError):
        return domain.casefold()


@lru_cache(maxsize=4096)
def normalize_address(address: str) -> str:
    """Compare addresses case-insensitively, with the +tag subaddress ignored."""
    local, _, domain = address.strip().strip("<>").rpartition("@")
    if not local:
        return address.strip().casefold()
    return f"{local.split('+', 1)[0].casefold()}@{normalize_domain(domain)}"
