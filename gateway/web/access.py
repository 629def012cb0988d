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
import contextlib
import hashlib
import hmac
import secrets
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from urllib.parse import urlsplit

from aiohttp import web

from gateway.clock import Clock, stamp
from gateway.config import Agent, Settings, loopback
from gateway.errors import Refused
from gateway.ingress import users
from gateway.store import queries
from gateway.store.db import Database

COOKIE = "gateway_session"
# Under https the cookie is __Host-: no other host of the domain can set one in its name
# (and put a browser in the attacker's session).
SECURE_COOKIE = f"__Host-{COOKIE}"
SESSION_DAYS = 7


def cookie_name(settings: Settings) -> str:
    return SECURE_COOKIE if secure(settings) else COOKIE


def secure(settings: Settings) -> bool:
    return (settings.web.base_url or "").startswith("https:")


def public(path: str) -> bool:
    """Pages anyone may see: the sign-in form and the static files."""
    return path == "/login" or path.startswith("/static/")


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def key_of(token: str) -> str:
    """What the store keeps of a session's cookie."""
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class Session:
    agent: Agent
    key: str
    csrf: str


class Throttled(Refused):
    """Too many failed sign-ins: the person must wait before trying again."""


class Throttle:
    """Failed tries per key: `free` of them cost nothing; each one past them must wait
    `first` seconds, doubled each time, at most `longest`."""

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
        doublings = min(count - self._free, 16)  # past `longest` long before; no overflow
        pause = min(self._first * 2.0**doublings, self._longest)
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

    def undo(self, key: str) -> None:
        """Take back one failure counted ahead of the check that then succeeded."""
        count, last = self._failed.get(key, (0, self._clock()))
        if count <= 1:
            self._failed.pop(key, None)
        else:
            self._failed[key] = (count - 1, last)


MAX_NAME = 320  # an address's longest: a longer name is nobody's
MAX_CHECKING = 32  # sign-ins whose password waits to be checked; more: try again shortly


class Guard:
    """Sign-in and sessions against the store: reads through `reader`, writes through `db`.

    Failed sign-ins are counted per account from one address (5 free), per account
    (50: guessing from many addresses) and per address (20); each is counted before the
    password is checked, so tries sent at once count as tries one after the other.
    Passwords are checked (scrypt, tens of milliseconds) on a thread of their own,
    so a flood of sign-ins never holds the threads accepting mail."""

    def __init__(self, db: Database, reader: Database, clock: Clock) -> None:
        self._db = db
        self._reader = reader
        self._clock = clock
        self._pairs = Throttle(clock, free=5)
        self._accounts = Throttle(clock, free=50)
        self._addresses = Throttle(clock, free=20)
        self._hashing = ThreadPoolExecutor(1, thread_name_prefix="gateway-sign-in")
        self._checking = 0

    def close(self) -> None:
        self._hashing.shutdown(wait=False, cancel_futures=True)

    async def sign_in(
        self, settings: Settings, name: str, password: str, client: str
    ) -> tuple[str, Session]:
        """A new session's cookie value and the session; Refused saying why not
        (Throttled: too many failures, wait)."""
        agent: Agent | None = None
        if len(name) <= MAX_NAME:
            with contextlib.suppress(Refused):
                agent = settings.agent_named(name)
        # An unknown name is kept short: a megabyte of name is one key, not a megabyte.
        who = agent.id if agent else hashlib.sha256(name.strip().casefold().encode()).hexdigest()
        counted = [
            (self._pairs, f"{who} from {client}"),
            (self._accounts, who),
            (self._addresses, client),
        ]
        wait = max(throttle.wait(key) for throttle, key in counted)
        if wait > 0:
            raise Throttled(f"Too many failed sign-ins; try again in {int(wait) + 1} seconds.")
        if self._checking >= MAX_CHECKING:
            raise Throttled("Too many sign-ins at once; try again in a few seconds.")
        for throttle, key in counted:
            throttle.failed(key)
        hashed = None
        if agent is not None:
            async with self._reader.reading() as tx:
                stored = await queries.password_of(tx, agent.id)
            hashed = users.parse_hash(stored) if stored else None
        self._checking += 1
        try:
            good = await asyncio.get_running_loop().run_in_executor(
                self._hashing, users.matches, hashed, password.encode()
            )
        finally:
            self._checking -= 1
        if agent is None or not good:
            raise Refused("The agent or the password is wrong.")
        for throttle, key in counted:
            throttle.undo(key)
        token, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
        now = self._clock()
        async with self._db.transaction() as tx:
            await queries.end_sessions(tx, None, stamp(now))  # the ended ones, not theirs
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


def hosts(settings: Settings, bound: tuple[str, int]) -> frozenset[str] | None:
    """The names (Host headers) the inbox answers to: base_url's, and on a loopback port
    the loopback names; None (any) when it listens on every interface without base_url.
    A page reached under another name (DNS rebinding: an attacker's name pointed at this
    host) would count as its own origin; it is refused instead."""
    host, port = bound
    found = set()
    if settings.web.base_url:
        found.add(urlsplit(settings.web.base_url).netloc)
    if loopback(host):
        found |= {f"localhost:{port}", f"127.0.0.1:{port}", f"[::1]:{port}"}
    elif not found and host in ("0.0.0.0", "::"):
        return None
    else:
        found.add(f"[{host}]:{port}" if ":" in host else f"{host}:{port}")
    return frozenset(found)


def csrf_ok(session: Session, sent: object) -> bool:
    return isinstance(sent, str) and hmac.compare_digest(sent.encode(), session.csrf.encode())
