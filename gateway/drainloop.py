"""The loop intake and the outbox share: drain the queue, sleep until woken, repeat.

A store that cannot be reached, or a bug outside any one item, never ends the
loop: it is logged and the loop tries again shortly.
"""

from __future__ import annotations

import asyncio
import contextlib

import structlog

from gateway.errors import StoreUnavailable

log = structlog.get_logger("gateway.loop")

POLL_SECONDS = 1.0  # also picks up what other processes queued (`gateway` commands)
RETRY_SECONDS = 2.0


class DrainLoop:
    name = "loop"

    def __init__(self) -> None:
        self._wakeup = asyncio.Event()
        self._stopping = False

    def wake(self) -> None:
        self._wakeup.set()

    def stop(self) -> None:
        """Finish the item in hand, then return from `run`."""
        self._stopping = True
        self._wakeup.set()

    @property
    def stopping(self) -> bool:
        return self._stopping

    async def drain(self) -> int:
        """Handle everything due now; the count handled."""
        raise NotImplementedError

    async def idle_seconds(self) -> float:
        """How long to sleep when nothing more is due, unless woken."""
        return POLL_SECONDS

    async def run(self) -> None:
        while not self._stopping:
            self._wakeup.clear()
            try:
                await self.drain()
                wait = await self.idle_seconds()
            except StoreUnavailable as error:
                log.warning(f"{self.name}.store_unavailable", error=str(error))
                wait = RETRY_SECONDS
            except Exception:
                log.exception(f"{self.name}.failed")
                wait = RETRY_SECONDS
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), wait)
