"""Tells open pages that what they show changed: one watcher reads the store's data
version (changes made by this process, the command line or another process alike), and
each page's event stream says `changed` when it differs from the version the page was
built from. It reads when a commit of any process tells of events or availability
(PostgreSQL), else every half second (a SQLite file tells nobody)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

import structlog
from aiohttp import web

from gateway.errors import StoreUnavailable
from gateway.store import queries
from gateway.store.db import Database

log = structlog.get_logger("gateway.web")

INTERVAL = 0.5  # seconds between reads of the version: a change shows within a second
SWEEP = 10.0  # where commits are told of: seconds between reads with nothing told
SHOWN = frozenset({"event", "status"})  # what the pages show changes with
KEEPALIVE = 20.0  # seconds of quiet before a comment line keeps proxies from closing the stream


class Watch:
    def __init__(self, reader: Database, db: Database) -> None:
        self._reader = reader
        self.version: str | None = None
        self._changed = asyncio.Event()
        self._stopped = False
        self._told = asyncio.Event()
        told = db.subscribe(lambda kinds: self._told.set() if kinds & SHOWN else None)
        self._interval = SWEEP if told else INTERVAL

    async def read(self) -> str:
        """The version now. A page reads it too, so the watcher is never behind the page:
        else the page's stream would hear of the older version as a change."""
        async with self._reader.reading() as tx:
            version = await queries.data_version(tx)
        if version != self.version:
            self.version = version
            self._wake()
        return version

    async def current(self) -> str:
        """The version as last read (a page's, so the pages every browser fetches at once
        after a change share their reads); what a page then reads may be newer, never older."""
        return self.version if self.version is not None else await self.read()

    async def run(self) -> None:
        while not self._stopped:
            try:
                await self.read()
            except StoreUnavailable as error:
                log.warning("web.version_unread", error=str(error))
            except Exception:  # whatever it is, the pages stay live once it passes
                log.exception("web.version_failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._told.wait(), self._interval)
            self._told.clear()

    def stop(self) -> None:
        self._stopped = True
        self._wake()

    def _wake(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def after(self, since: str) -> str | None:
        """The version once it differs from `since`; None after KEEPALIVE seconds without,
        or when stopping."""
        changed = self._changed
        if self.version is not None and self.version != since and not self._stopped:
            return self.version
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(changed.wait(), KEEPALIVE)
        if self._stopped or self.version is None or self.version == since:
            return None
        return self.version

    @property
    def stopped(self) -> bool:
        return self._stopped


async def stream(
    request: web.Request, watch: Watch, signed_in: Callable[[], Awaitable[bool]]
) -> web.StreamResponse:
    """Server-sent events: `changed` (its id the new version) each time the data moves
    on from the version the page (or the browser's last event) had. It ends when its
    session has (checked at each quiet spell)."""
    since = request.headers.get("Last-Event-ID") or request.query.get("since", "")
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-store",
            "X-Accel-Buffering": "no",  # nginx in front: each event at once, not buffered
        }
    )
    await response.prepare(request)
    with contextlib.suppress(ConnectionError):
        while not watch.stopped:
            version = await watch.after(since)
            if version is None:
                if not await signed_in():
                    break
                await response.write(b": still here\n\n")
                continue
            await response.write(f"id: {version}\nevent: changed\ndata: {version}\n\n".encode())
            since = version
    return response
