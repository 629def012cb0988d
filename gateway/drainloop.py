"""The loop intake and the outbox share: drain the queue, sleep until woken, repeat.

A store that cannot be reached, or a bug outside any one item, never ends the
loop: it is logged and the loop tries again shortly.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

import structlog

from gateway.errors import StoreUnavailable
from gateway.leading import while_leading
from gateway.store.db import Database, Sole

log = structlog.get_logger("gateway.loop")

POLL_SECONDS = 1.0  # also picks up what other processes queued (`gateway` commands)
# Where the store tells of other processes' commits (PostgreSQL), a loop is woken by them
# and looks on its own only this often: for what a process that died left behind.
SWEEP_SECONDS = 10.0
RETRY_SECONDS = 2.0
# While accept is busy (a burst), a loop rests this many times as long as it worked:
# accept first, like a mail server's queue, and the loop still never stops.
BURST_REST = 4.0


class DrainLoop:
    name = "loop"

    def __init__(self, accept_busy: Callable[[], bool] = lambda: False) -> None:
        self._wakeup = asyncio.Event()
        self._stopping = False
        self._stopped = asyncio.Event()
        self._lost = asyncio.Event()  # the lease `run_leading` runs under is lost
        self._accept_busy = accept_busy
        self.poll = POLL_SECONDS  # how long to sleep when nothing more is due, unless woken

    def listen(self, db: Database, kinds: frozenset[str]) -> None:
        """Be woken by any process's commit that changed one of `kinds`, where the store
        tells of them; then sleep up to SWEEP_SECONDS, not POLL_SECONDS, between looks."""
        if db.subscribe(lambda told: self.wake() if told & kinds else None):
            self.poll = SWEEP_SECONDS

    @property
    def accept_busy(self) -> bool:
        return self._accept_busy()

    async def accept_first(self, worked_since: float) -> None:
        """During a burst, give accept the loop (and the store) for a while."""
        if self._accept_busy():
            await asyncio.sleep((time.perf_counter() - worked_since) * BURST_REST)

    def wake(self) -> None:
        self._wakeup.set()

    def stop(self) -> None:
        """Finish the item in hand, then return from `run`."""
        self._stopping = True
        self._stopped.set()
        self._wakeup.set()

    @property
    def stopping(self) -> bool:
        """Stopping, or no longer the one process that may do the job."""
        return self._stopping or self._lost.is_set()

    async def drain(self) -> int:
        """Handle everything due now; the count handled."""
        raise NotImplementedError

    async def idle_seconds(self) -> float:
        """How long to sleep when nothing more is due, unless woken."""
        return self.poll

    async def run_leading(self, lease: Sole) -> None:
        """`run` while this process holds `lease`: on a store several daemons share, the
        job is one process's at a time (`gateway.leading`)."""
        await while_leading(lease, self._stopped, self._run_while, log, self.name)

    async def _run_while(self, lost: asyncio.Event) -> None:
        self._lost = lost
        waker = asyncio.ensure_future(lost.wait())
        waker.add_done_callback(lambda _: self.wake())
        try:
            await self.run()
        finally:
            waker.cancel()

    async def run(self) -> None:
        while not self.stopping:
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
