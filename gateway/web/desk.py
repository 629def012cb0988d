"""What every request of the web inbox works with."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import jinja2
from aiohttp import web

from gateway.clock import Clock
from gateway.config import Settings
from gateway.store.db import Database
from gateway.web.access import Guard
from gateway.web.live import Watch


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


DESK = web.AppKey("desk", Desk)


def templates() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("gateway.web"),
        autoescape=True,  # every template, whatever its name: mail is never markup here
        undefined=jinja2.StrictUndefined,
    )
    return env
