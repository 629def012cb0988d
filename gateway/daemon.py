"""One event loop: the SMTP relay, intake, the outbox worker and the web inbox.

SIGTERM (or SIGINT) stops it cleanly; SIGHUP reloads the configuration file:
rules, agents, teams, the rotation, inboxes, notification and relay access
take effect from the next message on, without dropping a connection. A bad
new file is refused with its reason in the log and the old one stays.
Under systemd (`Type=notify`) it says READY, RELOADING, STOPPING and pings the
watchdog.
"""

from __future__ import annotations

import asyncio
import signal
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import structlog

from gateway import alertmark, config
from gateway.clock import Clock, utcnow
from gateway.config import Settings
from gateway.errors import ConfigError, GatewayError
from gateway.ingress.accept import Accept
from gateway.ingress.imap import MailboxPoller
from gateway.ingress.lmtp import LmtpRelay, LmtpServer
from gateway.ingress.smtp import Relay, SmtpServer
from gateway.intake.parsing import ProcessParser
from gateway.intake.worker import Intake
from gateway.notify.render import ProcessRenderer
from gateway.notify.worker import DEFAULT_RETRY, Outbox, RetryPolicy
from gateway.sdnotify import Notifier
from gateway.store.db import Database, Sole
from gateway.web.server import WebInbox

log = structlog.get_logger("gateway.daemon")

GRACE_SECONDS = 30.0


class Reloadable(Protocol):
    def prepare(self, settings: Settings) -> Callable[[], None]:
        """Build what `settings` needs (in a thread: files read, indexes built); the call
        returned puts it to use, on the loop."""
        ...


class Daemon:
    def __init__(
        self,
        settings: Settings,
        *,
        config_path: Path | None = None,
        clock: Clock = utcnow,
        retry: RetryPolicy = DEFAULT_RETRY,
        grace: float = GRACE_SECONDS,
        notifier: Notifier | None = None,
    ) -> None:
        self.settings = settings
        self._config_path = config_path
        self._clock = clock
        self._retry = retry
        self._grace = grace
        self._notifier = notifier or Notifier()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._reloadable: list[Reloadable] = []
        self._reloading = asyncio.Lock()  # one SIGHUP at a time, in the order they came
        self._reloads: set[asyncio.Task[None]] = set()
        self.bound: list[tuple[str, int]] = []
        self.lmtp_bound: list[tuple[str, int] | str] = []  # (host, port) or a socket path
        self.web_bound: tuple[str, int] | None = None

    def request_stop(self) -> None:
        """Safe from any thread and from a signal handler."""
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)

    def request_reload(self) -> None:
        """Read the configuration file again; safe from any thread."""
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._start_reload)

    def _start_reload(self) -> None:
        task = asyncio.create_task(self._reload())
        self._reloads.add(task)  # the loop keeps only a weak reference
        task.add_done_callback(self._reloads.discard)

    def _status(self) -> str:
        listening = ", ".join(f"{host}:{port}" for host, port in self.bound)
        return f"accepting mail on {listening}; {len(self.settings.rules)} rules"

    async def _reload(self) -> None:
        if self._config_path is None:
            log.warning("gateway.reload_unavailable", reason="started without a configuration file")
            return
        async with self._reloading:
            self._notifier.reloading()
            try:
                # Off the loop, which goes on serving mail meanwhile: the file, the TLS
                # certificate and users file it names are read, the rule index built.
                new = await asyncio.to_thread(config.load, self._config_path)
                uses = await asyncio.to_thread(
                    lambda: [service.prepare(new) for service in self._reloadable]
                )
            except (ConfigError, OSError, ValueError) as error:
                log.error(
                    "gateway.reload_refused", reason=str(error), keeping="the running configuration"
                )
                self._notifier.ready(self._status())
                return
            self._apply(new, uses)

    def _apply(self, new: Settings, uses: list[Callable[[], None]]) -> None:
        later = needs_restart(self.settings, new)
        if later:
            log.warning("gateway.reload_partial", needs_restart=later)
        for use in uses:
            use()
        self.settings = new
        log.info(
            "gateway.reloaded",
            rules=len(new.rules),
            agents=len(new.agents),
            teams=len(new.teams),
            inboxes=len(new.inboxes),
        )
        self._notifier.ready(self._status())

    async def run(self, ready: Callable[[Daemon], None] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        db = await Database.open(self.settings.gateway.database)
        # Daemons share a PostgreSQL store; a SQLite file has one.
        sole = None if db.shared else db.sole("daemon")
        parser = ProcessParser()
        renderer = ProcessRenderer()
        try:
            if sole is not None:
                await _take(sole, db.shown)
            async with db.transaction() as conn:
                secret = await alertmark.load_secret(conn)
            accept = Accept(db, clock=self._clock)
            outbox = Outbox(
                db,
                self.settings,
                secret,
                clock=self._clock,
                retry=self._retry,
                render=renderer,
            )
            intake = Intake(
                db,
                self.settings,
                secret,
                clock=self._clock,
                on_routed=outbox.wake,
                accept_busy=accept.busy,
                parse=parser,
            )
            accept.on_stored = intake.wake
            # Other processes' work: mail any of them stored (`gateway ingest`, the other
            # daemons), outbox rows any queued (their claims shared out: SKIP LOCKED, leases).
            intake.listen(db, frozenset({"message"}))
            outbox.listen(db, frozenset({"outbox"}))
            relay = Relay(self.settings, accept)
            smtp = SmtpServer(self.settings, relay)
            handover = LmtpRelay(self.settings, accept)
            lmtp = LmtpServer(self.settings, handover)
            size = self.settings.smtp.max_message_size  # IMAP mail over it: its header only
            pollers = [
                MailboxPoller(db, inbox, accept, max_size=size, clock=self._clock)
                for inbox in self.settings.mailboxes()
            ]
            inbox = WebInbox(self.settings, db, self._clock, outbox.wake)
            self._reloadable = [intake, outbox, relay, handover, inbox]
            self.bound = [b for b in await smtp.start(shared=db.shared) if isinstance(b, tuple)]
            try:
                self.lmtp_bound = await lmtp.start(shared=db.shared)
                await inbox.start(shared=db.shared)
            except GatewayError:
                await asyncio.gather(smtp.stop(0), lmtp.stop(0))
                raise
            self.web_bound = inbox.bound
            if threading.current_thread() is threading.main_thread():
                for signum in (signal.SIGTERM, signal.SIGINT):
                    self._loop.add_signal_handler(signum, self._stop.set)
                self._loop.add_signal_handler(signal.SIGHUP, self._start_reload)
            log.info("gateway.ready", database=db.shown, smtp=self.bound)
            self._notifier.ready(self._status())
            if ready is not None:
                ready(self)
            async with asyncio.TaskGroup() as tasks:
                # Where daemons share the store, one routes at a time (intake's lease), woken
                # by every process's accepts through the store.
                tasks.create_task(
                    intake.run_leading(db.sole("intake")) if db.shared else intake.run()
                )
                tasks.create_task(outbox.run())
                for poller in pollers:
                    tasks.create_task(poller.run())
                watchdog = tasks.create_task(self._notifier.watchdog())
                await self._stop.wait()
                log.info("gateway.stopping")
                self._notifier.stopping()
                watchdog.cancel()
                await asyncio.gather(smtp.stop(self._grace), lmtp.stop(self._grace), inbox.stop())
                for poller in pollers:
                    poller.stop()
                intake.stop()
                outbox.stop()
        finally:
            parser.close()
            renderer.close()
            await db.close()
            if sole is not None:
                await sole.release()
        log.info("gateway.stopped")


async def _take(sole: Sole, database: str) -> None:
    """One daemon a SQLite file: two would each take the other's work for a dead process's."""
    if not await sole.take():
        raise GatewayError(
            f"{database}: another gateway holds this database;"
            " stop it, or give this one a database of its own"
        )


def needs_restart(old: Settings, new: Settings) -> list[str]:
    """The changed keys a reload cannot apply: sockets, the store, TLS, the mailboxes' sessions."""
    changed = []
    if old.gateway != new.gateway:
        changed.append("gateway")
    for key in ("listen", "tls_cert", "tls_key", "timeout", "max_message_size", "require_auth"):
        if getattr(old.smtp, key) != getattr(new.smtp, key):
            changed.append(f"smtp.{key}")
    if old.lmtp != new.lmtp:
        changed.append("lmtp")
    if old.web.listen != new.web.listen:
        changed.append("web.listen")
    if _mailboxes(old) != _mailboxes(new):
        changed.append("inboxes.imap")
    return changed


def _mailboxes(settings: Settings) -> list[tuple[str, object]]:
    return [(i.address, i.imap) for i in settings.mailboxes()]
