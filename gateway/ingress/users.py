"""Passwords as scrypt hashes, never in plain text: SMTP AUTH users' file, and the
web inbox's agents (whose hashes the store keeps, `gateway set-password`).

The users file has one line per user, `NAME:scrypt$N$r$p$SALT$HASH` (salt and hash in base64);
`gateway hash-password NAME` prints such a line. Blank lines and `#` comments
are allowed. Verification costs tens of milliseconds by design, so the relay
runs it off the event loop.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import os
from dataclasses import dataclass
from pathlib import Path

# OWASP's floor for scrypt; about 40 ms and 16 MiB per check on our machines.
COST_N, COST_R, COST_P = 2**14, 8, 1
_SALT_BYTES = 16
_HASH_BYTES = 32


@dataclass(frozen=True)
class Hashed:
    n: int
    r: int
    p: int
    salt: bytes
    digest: bytes

    def matches(self, password: bytes) -> bool:
        got = _scrypt(password, self.salt, self.n, self.r, self.p, len(self.digest))
        return hmac.compare_digest(got, self.digest)

    def text(self) -> str:
        """`scrypt$N$r$p$SALT$HASH`, as `parse_hash` reads it."""
        salt = base64.b64encode(self.salt).decode()
        digest = base64.b64encode(self.digest).decode()
        return f"scrypt${self.n}${self.r}${self.p}${salt}${digest}"

    def line(self, name: str) -> str:
        return f"{name}:{self.text()}"


def _scrypt(password: bytes, salt: bytes, n: int, r: int, p: int, length: int) -> bytes:
    return hashlib.scrypt(password, salt=salt, n=n, r=r, p=p, dklen=length, maxmem=2**26)


def hash_password(password: str, salt: bytes | None = None) -> Hashed:
    salt = salt if salt is not None else os.urandom(_SALT_BYTES)
    digest = _scrypt(password.encode(), salt, COST_N, COST_R, COST_P, _HASH_BYTES)
    return Hashed(COST_N, COST_R, COST_P, salt, digest)


def parse_line(line: str) -> tuple[str, Hashed]:
    """One users-file line; ValueError saying what is wrong with it."""
    name, sep, hashed = line.partition(":")
    if not sep or not name.strip():
        raise ValueError("is not NAME:scrypt$N$r$p$SALT$HASH")
    return name.strip(), parse_hash(hashed)


def parse_hash(hashed: str) -> Hashed:
    """`scrypt$N$r$p$SALT$HASH`; ValueError saying what is wrong with it."""
    parts = hashed.strip().split("$")
    if len(parts) != 6 or parts[0] != "scrypt":
        raise ValueError(
            "holds no scrypt hash (plaintext passwords are refused; make one with"
            " `gateway hash-password NAME`)"
        )
    try:
        n, r, p = (int(part) for part in parts[1:4])
        salt = base64.b64decode(parts[4], validate=True)
        digest = base64.b64decode(parts[5], validate=True)
    except ValueError:
        raise ValueError("has a malformed scrypt hash") from None
    if n < 2 or n & (n - 1) or r < 1 or p < 1 or not salt or len(digest) < 16:
        raise ValueError("has scrypt parameters out of range")
    return Hashed(n, r, p, salt, digest)


def load(path: Path) -> dict[str, Hashed]:
    """The users of the file; ValueError naming the line at fault."""
    users: dict[str, Hashed] = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            name, hashed = parse_line(line)
        except ValueError as error:
            raise ValueError(f"line {number} {error}") from None
        if name in users:
            raise ValueError(f"line {number} names {name!r} a second time")
        users[name] = hashed
    return users


@functools.cache
def _decoy() -> Hashed:
    """Checked when the name is unknown, so a wrong name costs what a wrong password does."""
    return hash_password("", salt=b"\0" * _SALT_BYTES)


def verify(users: dict[str, Hashed], name: str, password: bytes) -> bool:
    return matches(users.get(name), password)


def matches(hashed: Hashed | None, password: bytes) -> bool:
    """Whether the password is the hashed one's; None (nobody's) costs the same and fails."""
    if hashed is None:
        _decoy().matches(password)
        return False
    return hashed.matches(password)
