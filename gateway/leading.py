"""A job one process at a time does on a store several daemons share (routing, polling a
mailbox): done while holding its lease (`Database.sole`, let go when its process dies),
and taken over by another process within LEASE_SECONDS of the holder's death."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

from gateway.errors import StoreUnavailable
from gateway.store.db import Sole

# How often a process without the lease tries to take it, and its holder looks that it
# still holds it (a lock on a link to the store is lost with the link).
LEASE_SECONDS = 5.0


async def while_leading(
    lease: Sole,
    stopped: asyncio.Event,
    work: Callable[[asyncio.Event], Awaitable[None]],
    log: Any,
    name: str,
) -> None:
    """Run `work(lost)` whenever this process holds `lease`, until `stopped`: `lost` is set
    when the lease is lost (or on stop), and `work` then returns. Logs `NAME.lease_taken`,
    `NAME.held_elsewhere` (once a wait) and `NAME.lease_lost`."""
    waiting = False
    try:
        while not stopped.is_set():
            try:
                taken = await lease.take()
            except StoreUnavailable as error:
                log.warning(f"{name}.lease_unavailable", error=str(error))
                taken = False
            if not taken:
                if not waiting:
                    log.info(f"{name}.held_elsewhere", retry_every=LEASE_SECONDS)
                waiting = True
                await _rest(stopped, LEASE_SECONDS)
                continue
            waiting = False
            log.info(f"{name}.lease_taken")
            lost = asyncio.Event()
            keeper = asyncio.create_task(_keep(lease, stopped, lost, log, name))
            try:
                await work(lost)
            finally:
                keeper.cancel()
                await lease.release()
    finally:
        await lease.release()


async def _keep(
    lease: Sole, stopped: asyncio.Event, lost: asyncio.Event, log: Any, name: str
) -> None:
    """Set `lost` on stop, or when a look finds the lease no longer this process's."""
    while not lost.is_set():
        await _rest(stopped, LEASE_SECONDS)
        if stopped.is_set():
            lost.set()
        elif not await lease.held():
            log.warning(f"{name}.lease_lost", action="stops; taken again later")
            lost.set()


async def _rest(stopped: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stopped.wait(), seconds)
