"""The outbox worker: due rows → render → send → `notified`; failures back off.

Side effects happen here only, after the transaction that queued them has
committed. Delivery is at least once: a crash between sending and recording
sends the alert again, with the same Message-ID (derived from the event id).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, TypeVar, cast

import structlog

from gateway import alertmark, alerts
from gateway.clock import Clock, stamp, utcnow
from gateway.config import Agent, Settings
from gateway.drainloop import POLL_SECONDS, DrainLoop
from gateway.errors import StoreUnavailable
from gateway.notify.keywords import KeywordWriter, wanted
from gateway.notify.render import Alert, AlertInput, render
from gateway.notify.transports import Transport, transport_for
from gateway.store import queries
from gateway.store.db import Database

log = structlog.get_logger("gateway.notify")
T = TypeVar("T")

ACTOR = "gateway"
BATCH = 20
PRUNE_EVERY = timedelta(minutes=1)
# Far past the slowest render seen (0.2 s), well inside the lease: beyond, failed and retried.
RENDER_SECONDS = 20.0
KEYWORDS_SECONDS = 10.0  # a job is a FETCH and a few STOREs: milliseconds on a live server


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff: first, first*2, ... capped; given up after `deadline`."""

    first: timedelta = timedelta(seconds=30)
    cap: timedelta = timedelta(hours=1)
    deadline: timedelta = timedelta(days=2, hours=1)

    def next_attempt(self, attempts: int, created: datetime, now: datetime) -> datetime | None:
        delay = min(self.first * (2 ** max(attempts - 1, 0)), self.cap)
        retry_at: datetime = now + delay
        return None if retry_at > created + self.deadline else retry_at


DEFAULT_RETRY = RetryPolicy()
LEASE = timedelta(minutes=2)  # longer than an attempt can take (the SMTP timeout is 30 s)
# Who holds a lease, for a person reading the outbox; recovery does not depend on it.
OWNER = f"{socket.gethostname()}:{os.getpid()}"
DROPPED = "the row was taken over when its lease ended, or queued again, while this attempt ran"


class Outbox(DrainLoop):
    name = "outbox"

    def __init__(
        self,
        db: Database,
        settings: Settings,
        secret: bytes,
        *,
        clock: Clock = utcnow,
        retry: RetryPolicy = DEFAULT_RETRY,
        accept_busy: Callable[[], bool] = lambda: False,
        lease: timedelta = LEASE,
    ) -> None:
        super().__init__(accept_busy)
        self._db = db
        self._settings = settings
        self._secret = secret
        self._clock = clock
        self._retry = retry
        self._lease = lease
        self._transport: Transport = transport_for(settings.notify)
        self._transport_notify = settings.notify
        self._keyword_writer = KeywordWriter(settings)
        self._keywords_for = settings
        self._pruned_at: datetime | None = None

    def reload(self, settings: Settings) -> None:
        """Agents' addresses and their `notify` from the next alert on, the mailboxes and
        tags keywords are written by from the next keywords job; where alerts go, from
        the next drain (a drain in progress keeps its smarthost session)."""
        self._settings = settings

    def prepare(self, settings: Settings) -> Callable[[], None]:
        """`reload`, for the daemon's: nothing to build beforehand."""
        return functools.partial(self.reload, settings)

    async def run(self) -> None:
        presence = self._db.presence("outbox")
        try:
            async with presence.joining() as alone:
                if alone:
                    await self._release_leases()
            await super().run()
        finally:
            presence.leave()
            await self._keyword_writer.close()

    async def _release_leases(self) -> None:
        """No other outbox runs on this database: a row leased now was leased by a process
        that died mid-attempt. It is due again at once, not when the lease would end."""
        try:
            async with self._db.transaction() as conn:
                released = await queries.release_leases(conn, stamp(self._clock()))
        except StoreUnavailable as error:  # they come due anyway, when their leases end
            log.warning("outbox.leases_kept", error=str(error))
            return
        if released:
            log.info("outbox.leases_released", rows=released, why="their process died")

    async def idle_seconds(self) -> float:
        async with self._db.reading() as conn:
            due = await queries.next_due(conn)
        if due is None:
            return POLL_SECONDS
        ahead = (datetime.fromisoformat(due) - self._clock()).total_seconds()
        return min(max(ahead, 0.0), POLL_SECONDS)

    async def drain(self) -> int:
        """Attempt every row that is due now; the count attempted.

        Alerts of one drain share the transport's session; it ends with the drain.
        """
        await self._prune()
        if self._settings.notify != self._transport_notify:
            self._transport = transport_for(self._settings.notify)
            self._transport_notify = self._settings.notify
        try:
            return await self._drain()
        finally:
            await self._transport.close()

    async def _prune(self) -> None:
        """Forget senders' alert counts whose hour is over, once a minute at most."""
        now = self._clock()
        if self._pruned_at is not None and abs(now - self._pruned_at) < PRUNE_EVERY:
            return
        async with self._db.transaction() as conn:
            dropped = await alerts.forget_past_senders(conn, now)
        self._pruned_at = now
        if dropped:
            log.info("alert_senders.pruned", rows=dropped)

    async def _drain(self) -> int:
        attempted = 0
        while not self.stopping:
            async with self._db.reading() as conn:
                rows = await queries.due_outbox(conn, stamp(self._clock()), BATCH)
            if not rows:
                break
            for row in rows:
                started = time.perf_counter()
                lease = await self._claim(row.id)
                if lease is None:
                    continue
                if row.kind == "keywords":
                    await self._keywords(row, lease)
                else:
                    await self._attempt(row, lease)
                attempted += 1
                await self.accept_first(started)
        return attempted

    async def _claim(self, outbox_id: int) -> str | None:
        """Take the row for one attempt, so two processes never send the same alert at once.

        The lease is returned: a token naming this attempt, held until an expiry
        the store's clock judges (processes' clocks may disagree; the store's is
        one). The attempt's outcome is recorded only while it still holds it.
        Should this process die mid-attempt, the row is due again when the lease
        ends, or at once when an outbox starts with no other running on the
        database (`run`).
        """
        lease = f"{OWNER}/{secrets.token_hex(6)}"
        async with self._db.transaction() as conn:
            taken = await queries.claim_outbox(
                conn, outbox_id, stamp(self._clock()), lease, self._lease.total_seconds()
            )
        return lease if taken else None

    async def _done(
        self,
        row: queries.OutboxRow,
        lease: str,
        event: tuple[str, str, dict[str, Any]] | None = None,
    ) -> bool:
        """Mark the row done, with `event` (kind, agent, detail) on the timeline, if this
        attempt still holds it; whether it did."""
        async with self._db.transaction() as conn:
            held = await queries.outbox_done(conn, row.id, lease)
            if held and event is not None:
                kind, agent, detail = event
                at = stamp(self._clock())
                await queries.add_event(
                    conn, row.conversation_id, at, kind, ACTOR, agent=agent, detail=detail
                )
        if not held:
            log.warning("outbox.outcome_dropped", outcome="done", id=row.id, why=DROPPED)
        return held

    async def _failed(
        self, row: queries.OutboxRow, lease: str, error: str, payload: dict[str, str] | None = None
    ) -> None:
        """Count a failed attempt and set the retry (an alert's failure on the timeline too),
        if this attempt still holds the row."""
        now = self._clock()
        attempts = int(row.attempts) + 1
        retry_at = self._retry.next_attempt(attempts, datetime.fromisoformat(row.created_at), now)
        retry = None if retry_at is None else stamp(retry_at)
        async with self._db.transaction() as conn:
            held = await queries.outbox_failed(conn, row.id, lease, error, retry)
            if held and payload is not None:
                await queries.add_event(
                    conn,
                    row.conversation_id,
                    stamp(now),
                    "notify_failed",
                    ACTOR,
                    agent=payload["agent"],
                    detail={
                        "reason": payload["reason"],
                        "error": error,
                        "attempts": attempts,
                        "retry_at": retry,
                    },
                )
        if not held:
            log.warning("outbox.outcome_dropped", outcome="failed", error=error, why=DROPPED)
        elif payload is None:
            log.warning("keywords.failed", conversation=row.conversation_id, error=error)
        else:
            log.warning("alert.failed", error=error, attempts=attempts, gave_up=retry is None)

    async def _keywords(self, row: queries.OutboxRow, lease: str) -> None:
        if self._keywords_for is not self._settings:  # reloaded since the last job
            await self._keyword_writer.close()  # its sessions belong to the old settings
            self._keyword_writer = KeywordWriter(self._settings)
            self._keywords_for = self._settings
        conversation_id = row.conversation_id
        async with self._db.reading() as conn:
            found = await queries.conversation(conn, conversation_id)
            tags = (await queries.tags_of(conn, [conversation_id]))[conversation_id]
            copies = await queries.imap_copies(conn, conversation_id)
        assert found is not None
        want = wanted(found.assignee, found.team, tags)
        try:
            # Bounded: each IMAP command may take the client's 30 s, and a stop waits for
            # the job in hand; past this it is failed and retried like an alert.
            await asyncio.wait_for(self._keyword_writer.apply(copies, want), KEYWORDS_SECONDS)
        except Exception as error:  # server down, refused, too slow...: retried later
            await self._failed(row, lease, f"{type(error).__name__}: {error}")
            return
        if await self._done(row, lease):
            log.info(
                "keywords.set",
                conversation=conversation_id,
                keywords=sorted(want),
                copies=len(copies),
            )

    async def _attempt(self, row: queries.OutboxRow, lease: str) -> None:
        payload = row.payload
        agent = self._settings.agent(payload["agent"])
        event_id = int(row.event_id)
        with structlog.contextvars.bound_contextvars(
            conversation=row.conversation_id, event=event_id, agent=payload["agent"]
        ):
            try:
                if agent is None:
                    raise LookupError(f"agent {payload['agent']!r} is no longer configured")
                async with self._db.reading() as conn:
                    conversation = await queries.conversation(conn, row.conversation_id)
                    stored = await queries.message(conn, int(payload["message"]))
                if conversation is None or stored is None:
                    raise LookupError("the conversation or its message is gone")
                assignee = conversation.assignee
                if assignee == payload["agent"]:
                    alert = await self._render(row, payload, conversation, stored, agent)
                    await self._transport.send(alert.data, agent.email, f"alert-{event_id}")
            except Exception as error:
                await self._failed(row, lease, f"{type(error).__name__}: {error}", payload)
                return
            if assignee != payload["agent"]:
                await self._superseded(row, lease, payload, assignee)
                return
            detail = {"reason": payload["reason"], "message_id": alert.message_id}
            if await self._done(row, lease, ("notified", payload["agent"], detail)):
                log.info("alert.sent", reason=payload["reason"], to=agent.email)

    async def _superseded(
        self, row: queries.OutboxRow, lease: str, payload: dict[str, str], assignee: str | None
    ) -> None:
        """The conversation left the agent while the alert waited (the outbox was held up, or
        behind): it would send them to work that is no longer theirs, so it stays unsent.
        The new assignee has an alert of their own. A reassignment after this look, while
        the alert is being built and sent, does not stop it."""
        detail = {"reason": payload["reason"], "assignee": assignee}
        if await self._done(row, lease, ("notify_superseded", payload["agent"], detail)):
            log.info("alert.superseded", reason=payload["reason"], assignee=assignee)

    async def _render(
        self,
        row: queries.OutboxRow,
        payload: dict[str, str],
        conversation: queries.Conversation,
        stored: queries.StoredMail,
        agent: Agent,
    ) -> Alert:
        # Off the loop: its preview parses up to 32 KB of the original, 0.2 s when that is
        # nothing but nested parts, and it copies the original whole, megabytes maybe.
        built = functools.partial(
            render,
            AlertInput(
                event_id=int(row.event_id),
                reason=payload["reason"],
                how=payload["how"],
                conversation_id=conversation.id,
                subject=conversation.subject,
                customer=conversation.customer,
                inbox=conversation.inbox,
                agent_name=agent.name or agent.id,
                agent_email=agent.email,
                sender=self._settings.notify.from_,
                hostname=self._settings.gateway.hostname,
                mark=alertmark.mark(self._secret, int(row.event_id)),
                raw=stored.mail.raw,
                date=self._clock(),
                full_size=stored.mail.full_size,
            ),
        )
        try:
            return await _bounded(built, RENDER_SECONDS)
        except TimeoutError:
            raise TimeoutError(
                f"building the alert took longer than {RENDER_SECONDS:g} s"
            ) from None


async def _bounded(work: Callable[[], T], seconds: float) -> T:
    """`work`'s result from a thread of its own, or TimeoutError after `seconds`.

    A thread cannot be stopped: one that overruns is left to end (or hang) on
    its own. It is a daemon thread outside the loop's executor, so it holds up
    neither the work that executor is shared by nor the daemon's exit
    (asyncio.run waits for the executor's threads).
    """
    loop = asyncio.get_running_loop()
    outcome: asyncio.Future[T] = loop.create_future()

    def settle(result: T | None, error: BaseException | None) -> None:
        if outcome.done():  # given up on meanwhile
            return
        if error is not None:
            outcome.set_exception(error)
        else:
            outcome.set_result(cast(T, result))

    def run() -> None:
        try:
            result, error = work(), None
        except Exception as caught:
            result, error = None, caught
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
            loop.call_soon_threadsafe(settle, result, error)

    threading.Thread(target=run, name="gateway-render", daemon=True).start()
    return await asyncio.wait_for(outcome, seconds)
