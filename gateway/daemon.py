"""One event loop: the SMTP relay, intake and the outbox worker, stopped cleanly on SIGTERM."""

from __future__ import annotations

import asyncio
import signal
import threading
from collections.abc import Callable

import structlog

from gateway import alertmark
from gateway.clock import Clock, utcnow
from gateway.config import Settings
from gateway.ingress.accept import Accept
from gateway.ingress.imap import MailboxPoller
from gateway.ingress.smtp import Relay, SmtpServer
from gateway.intake.worker import Intake
from gateway.notify.worker import DEFAULT_RETRY, Outbox, RetryPolicy
from gateway.store.db import Database

log = structlog.get_logger("gateway.daemon")

GRACE_SECONDS = 30.0


class Daemon:
    def __init__(
        self,
        settings: Settings,
        *,
        clock: Clock = utcnow,
        retry: RetryPolicy = DEFAULT_RETRY,
        grace: float = GRACE_SECONDS,
    ) -> None:
        self.settings = settings
        self._clock = clock
        self._retry = retry
        self._grace = grace
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self.bound: list[tuple[str, int]] = []

    def request_stop(self) -> None:
        """Safe from any thread and from a signal handler."""
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)

    async def run(self, ready: Callable[[Daemon], None] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        db = await Database.open(self.settings.gateway.database)
        try:
            async with db.transaction() as conn:
                secret = await alertmark.load_secret(conn)
            accept = Accept(db, clock=self._clock)
            outbox = Outbox(
                db,
                self.settings,
                secret,
                clock=self._clock,
                retry=self._retry,
                accept_busy=accept.busy,
            )
            intake = Intake(
                db,
                self.settings,
                secret,
                clock=self._clock,
                on_routed=outbox.wake,
                accept_busy=accept.busy,
            )
            accept.on_stored = intake.wake
            smtp = SmtpServer(self.settings, Relay(self.settings, accept))
            pollers = [
                MailboxPoller(db, inbox, accept, clock=self._clock)
                for inbox in self.settings.inboxes
                if inbox.imap is not None
            ]
            self.bound = await smtp.start()
            if threading.current_thread() is threading.main_thread():
                for signum in (signal.SIGTERM, signal.SIGINT):
                    self._loop.add_signal_handler(signum, self._stop.set)
            log.info("gateway.ready", database=db.path, smtp=self.bound)
            if ready is not None:
                ready(self)
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(intake.run())
                tasks.create_task(outbox.run())
                for poller in pollers:
                    tasks.create_task(poller.run())
                await self._stop.wait()
                log.info("gateway.stopping")
                await smtp.stop(self._grace)
                for poller in pollers:
                    poller.stop()
                intake.stop()
                outbox.stop()
        finally:
            await db.close()
        log.info("gateway.stopped")
