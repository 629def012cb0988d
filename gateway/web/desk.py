"""What every request of the web inbox works with."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import jinja2
from aiohttp import web

from gateway.clock import Clock
from gateway.config import Settings
from gateway.store.db import Database
from gateway.views import Read
from gateway.web.access import Guard
from gateway.web.live import Watch

T = TypeVar("T")
KEPT_TEXTS = 2_000  # messages' texts kept (20,000 characters each at most)
KEPT_READS = 200  # pages' reads kept; past it, those of older versions are dropped


@dataclass
class Desk:
    """What every request works with; `settings` follows the daemon's reloads."""

    settings: Settings
    db: Database  # the daemon's writer: actions and sessions
    reader: Database  # read-only, a connection of the web's own
    guard: Guard
    watch: Watch
    templates: jinja2.Environment
    clock: Clock
    wake: Callable[[], None]  # the outbox, when an action queued mail
    hosts: frozenset[str] | None = None  # the Host headers it answers to (None: any)
    notes: dict[str, str] = field(default_factory=dict)  # a session's note for its next page
    # A session's answer refused, by conversation: back in its Reply box next time.
    drafts: dict[tuple[str, int], str] = field(default_factory=dict)
    # What a page read, by what it asked and the data version it read at: pages asking the
    # same at the same version (every open browser told at once of a change) share one read.
    _texts: dict[int, Read] = field(default_factory=dict)
    _read: dict[Hashable, tuple[str, asyncio.Task[Any]]] = field(default_factory=dict)

    def texts(self) -> dict[int, Read]:
        """Messages' texts and files as pages read them: a message never changes."""
        if len(self._texts) > KEPT_TEXTS:
            self._texts.clear()
        return self._texts

    def forget(self) -> None:
        """Drop what pages read: the configuration changed (agents' names, teams)."""
        self._read.clear()

    async def shared(self, version: str, key: Hashable, read: Callable[[], Awaitable[T]]) -> T:
        """`read()`'s answer, or the one a page got for `key` at this `version` (the data
        the same, by the version's contract: every change a person sees moves it). It may
        be of a later version, never an earlier one."""
        kept = self._read.get(key)
        if kept is None or kept[0] != version or _failed(kept[1]):
            if len(self._read) > KEPT_READS:  # those of older versions are of no more use
                self._read = {k: v for k, v in self._read.items() if v[0] == version}
            kept = (version, asyncio.ensure_future(read()))
            self._read[key] = kept
        answer: T = await asyncio.shield(kept[1])
        return answer


DESK = web.AppKey("desk", Desk)


def templates() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("gateway.web"),
        autoescape=True,  # every template, whatever its name: mail is never markup here
        undefined=jinja2.StrictUndefined,
    )
    return env


def _failed(task: asyncio.Task[Any]) -> bool:
    return task.done() and (task.cancelled() or task.exception() is not None)
