"""The web inbox under test: the real daemon serving it on a free port, agents with
passwords, and an HTTP client with cookies of its own (one per person)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest

from gateway.clock import stamp, utcnow
from gateway.config import Settings
from gateway.ingress import users
from gateway.store import queries
from gateway.store.db import Database
from tests.conftest import BASE, RunningDaemon

PASSWORDS = {"alice": "alice-secret-1", "bob": "bob-secret-2", "carol": "carol-secret-3"}
# Alice manages the desk: she may set anyone's status.
AGENTS = [dict(a, role="manager") if a["id"] == "alice" else a for a in BASE["agents"]]
_CSRF = re.compile(r'name="csrf" value="([^"]+)"')


def set_passwords(settings: Settings, passwords: dict[str, str] = PASSWORDS) -> None:
    """As `gateway set-password` stores them (its own test runs the command itself)."""

    async def store() -> None:
        db = await Database.open(settings.gateway.database)
        try:
            async with db.transaction() as tx:
                for agent, password in passwords.items():
                    hashed = users.hash_password(password).text()
                    await queries.set_password(tx, agent, hashed, stamp(utcnow()))
        finally:
            await db.close()

    # In a thread of its own: async tests call this with their loop running.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, store()).result()


@dataclass
class WebDesk:
    running: RunningDaemon
    url: str  # http://127.0.0.1:PORT

    def client(self) -> Client:
        return Client(self.url)


class Client:
    """One person's browser, as far as HTTP goes: cookies, forms with their CSRF token."""

    def __init__(self, url: str, local_address: str | None = None) -> None:
        self.url = url
        # From another loopback address (127.0.0.2): another client, as the server sees it.
        bind = aiohttp.TCPConnector(local_addr=(local_address, 0)) if local_address else None
        self.http = aiohttp.ClientSession(
            url,
            cookie_jar=aiohttp.CookieJar(unsafe=True),  # unsafe: cookies for an IP host
            connector=bind,
        )

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.http.close()

    async def sign_in(self, agent: str, password: str | None = None) -> aiohttp.ClientResponse:
        return await self.post(
            "/login",
            {"agent": agent, "password": password or PASSWORDS[agent]},
            csrf=False,
        )

    async def page(self, path: str) -> str:
        async with self.http.get(path, allow_redirects=False) as response:
            assert response.status == 200, f"GET {path}: {response.status}"
            return await response.text()

    async def csrf(self, path: str = "/conversations") -> str:
        found = _CSRF.search(await self.page(path))
        assert found is not None, f"no form with a CSRF token on {path}"
        return found.group(1)

    async def post(
        self,
        path: str,
        data: dict[str, str],
        *,
        csrf: bool = True,
        headers: dict[str, str] | None = None,
    ) -> aiohttp.ClientResponse:
        """POST a form as the inbox's own page does (its Origin, its token), unless told."""
        form = dict(data)
        if csrf:
            form["csrf"] = await self.csrf()
        sent = {"Origin": self.url} if headers is None else headers
        async with self.http.post(path, data=form, headers=sent, allow_redirects=False) as r:
            await r.read()
            return r


@pytest.fixture
def web_desk(
    make_settings: Callable[..., Settings], start_daemon: Callable[..., RunningDaemon]
) -> Iterator[Callable[..., WebDesk]]:
    """Start the daemon with the web inbox on a free port; `sections` as make_settings."""

    def start(**sections: Any) -> WebDesk:
        sections.setdefault("agents", AGENTS)
        sections.setdefault("web", {"listen": "127.0.0.1:0"})
        settings = make_settings(**sections)
        set_passwords(settings)
        running = start_daemon(settings)
        bound = running.daemon.web_bound
        assert bound is not None
        return WebDesk(running, f"http://{bound[0]}:{bound[1]}")

    yield start
