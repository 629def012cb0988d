"""Who is asking: sign-in, server-side sessions, and the guards on every request.

A session is a random cookie whose SHA-256 the store keeps beside the agent and the
CSRF token of that session's forms; signing out (or `gateway sign-out`) deletes the
row, so a copied cookie stops working at once. Every POST must come from the inbox's
own pages (Origin, else Referer; neither: refused) and, signed in, carry the session's
CSRF token. Failed sign-ins are counted per account and per client address; past a
few, each further try must wait, twice as long each time.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from urllib.parse import urlsplit

from aiohttp import web

from gateway.clock import Clock, stamp
from gateway.config import Agent, Settings
from gateway.errors import Refused
from gateway.ingress import users
from gateway.store import queries
from gateway.store.db import Database

COOKIE = "gateway_session"
SESSION_DAYS = 7
PUBLIC = ("/login", "/static/")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def key_of(token: str) -> str:
    """What the store keeps of a session's cookie."""
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class Session:
    agent: Agent
    key: str
    csrf: str


class Throttle:
    """Failed tries per key (an account, an address): `free` of them cost nothing; each
    one past them must wait `first` seconds, doubled each time, at most `longest`."""

    def __init__(self, clock: Clock, free: int, first: float = 30.0, longest: float = 900.0):
        self._clock = clock
        self._free = free
        self._first = first
        self._longest = longest
        self._failed: dict[str, tuple[int, datetime]] = {}

    def wait(self, key: str) -> float:
        """Seconds until `key` may try again (0: now)."""
        count, last = self._failed.get(key, (0, self._clock()))
        if count < self._free:
            return 0.0
        pause = min(self._first * 2.0 ** (count - self._free), self._longest)
        return max(pause - (self._clock() - last).total_seconds(), 0.0)

    def failed(self, key: str) -> None:
        now = self._clock()
        count, last = self._failed.get(key, (0, now))
        if (now - last).total_seconds() > 2 * self._longest:
            count = 0  # long quiet: a fresh start
        self._failed[key] = (count + 1, now)
        if len(self._failed) > 100_000:  # a spray of names: forget the quiet ones
            quiet = [k for k, (_, at) in self._failed.items() if (now - at).total_seconds() > 3600]
            for k in quiet:
                del self._failed[k]

    def forget(self, key: str) -> None:
        self._failed.pop(key, None)


class Guard:
    """Sign-in and sessions against the store: reads through `reader`, writes through `db`."""

    def __init__(self, db: Database, reader: Database, clock: Clock) -> None:
        self._db = db
        self._reader = reader
        self._clock = clock
        self.accounts = Throttle(clock, free=5)
        self.addresses = Throttle(clock, free=20)

    async def sign_in(
        self, settings: Settings, name: str, password: str, client: str
    ) -> tuple[str, Session]:
        """A new session's cookie value and the session; Refused saying why not."""
        try:
            agent: Agent | None = settings.agent_named(name)
        except Refused:
            agent = None
        account = f"agent {agent.id if agent else name.strip().casefold()}"
        address = f"address {client}"
        wait = max(self.accounts.wait(account), self.addresses.wait(address))
        if wait > 0:
            raise Refused(f"Too many failed sign-ins; try again in {int(wait) + 1} seconds.")
        hashed = None
        if agent is not None:
            async with self._reader.reading() as tx:
                stored = await queries.password_of(tx, agent.id)
            hashed = users.parse_hash(stored) if stored else None
        good = await asyncio.to_thread(users.matches, hashed, password.encode())
        if agent is None or not good:
            self.accounts.failed(account)
            self.addresses.failed(address)
            raise Refused("The agent or the password is wrong.")
        self.accounts.forget(account)
        token, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
        now = self._clock()
        async with self._db.transaction() as tx:
            await queries.add_session(
                tx,
                key_of(token),
                agent.id,
                csrf,
                stamp(now),
                stamp(now + timedelta(days=SESSION_DAYS)),
            )
        return token, Session(agent, key_of(token), csrf)

    async def session(self, settings: Settings, token: str | None) -> Session | None:
        """The live session of this cookie, if its agent is still configured."""
        if not token:
            return None
        key = key_of(token)
        async with self._reader.reading() as tx:
            found = await queries.web_session(tx, key, stamp(self._clock()))
        if found is None:
            return None
        agent = next((a for a in settings.agents if a.id == found.agent), None)
        return None if agent is None else Session(agent, key, found.csrf)

    async def sign_out(self, key: str) -> None:
        async with self._db.transaction() as tx:
            await queries.end_session(tx, key)


def same_origin(request: web.Request, settings: Settings) -> bool:
    """Whether a POST came from the inbox's own pages: its Origin (or, without one, its
    Referer's) is this server's, as the browser reached it or as base_url names it."""
    sent = request.headers.get("Origin")
    if sent is None or sent == "null":
        referer = request.headers.get("Referer")
        if not referer:
            return False
        parts = urlsplit(referer)
        sent = f"{parts.scheme}://{parts.netloc}"
    allowed = {f"{request.scheme}://{request.host}"}
    if settings.web.origin():
        allowed.add(settings.web.origin() or "")
    return sent in allowed


LOOPBACK = ("127.0.0.1", "::1", "localhost")


def hosts(settings: Settings, bound: tuple[str, int]) -> frozenset[str] | None:
    """The names (Host headers) the inbox answers to: base_url's, and on a loopback port
    the loopback names; None (any) when it listens on every interface without base_url.
    A page reached under another name (DNS rebinding: an attacker's name pointed at this
    host) would count as its own origin; it is refused instead."""
    host, port = bound
    found = set()
    if settings.web.base_url:
        found.add(urlsplit(settings.web.base_url).netloc)
    if host in LOOPBACK:
        found |= {f"localhost:{port}", f"127.0.0.1:{port}", f"[::1]:{port}"}
    elif not found and host in ("0.0.0.0", "::"):
        return None
    else:
        found.add(f"[{host}]:{port}" if ":" in host else f"{host}:{port}")
    return frozenset(found)


def csrf_ok(session: Session, sent: object) -> bool:
    return isinstance(sent, str) and hmac.compare_digest(sent.encode(), session.csrf.encode())
