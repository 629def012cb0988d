"""The outbox worker: due rows → render → send → `notified`; failures back off.

Side effects happen here only, after the transaction that queued them has
committed. Delivery is at least once: a crash between sending and recording
sends the alert again, with the same Message-ID (derived from the event id).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import secrets
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, TypeVar, cast

import structlog

from gateway import alertmark, alerts
from gateway.clock import Clock, stamp, utcnow
from gateway.config import Agent, Settings
from gateway.drainloop import DrainLoop
from gateway.errors import StoreUnavailable
from gateway.notify.keywords import KeywordWriter, wanted
from gateway.notify.render import Alert, AlertInput, render
from gateway.notify.transports import SmarthostDown, Transport, transport_for
from gateway.replies import compose, token
from gateway.store import queries
from gateway.store.db import Database, Tx, this_process

log = structlog.get_logger("gateway.notify")
T = TypeVar("T")

ACTOR = "gateway"
KINDS = ("alert", "keywords", "answer", "notice")
# Rows claimed in one commit, their outcomes recorded in one more: two fsyncs a batch.
BATCH = 50
DEFER_CHUNK = 1000  # alerts deferred in one commit while the smarthost is down
PRUNE_EVERY = timedelta(minutes=1)
RENDER_BATCH = 10  # alerts built in one exchange with the builder
SESSIONS = 4  # smarthost sessions at once for a full run of alerts
RENDER_BYTES = 8 * 1024 * 1024  # originals held at once for building (a larger one alone)
# Far past the slowest render seen (0.2 s), well inside the lease: beyond, failed and retried.
RENDER_SECONDS = 20.0
KEYWORDS_SECONDS = 10.0  # a job is a FETCH and a few STOREs: milliseconds on a live server
# A smarthost session idle this long is closed (Postfix caches one for 2 s): under a steady
# load alerts come a few at a time, and a session for each few would cost more than them.
KEEP_SESSION_SECONDS = 2.0


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff: first, first*2, ... capped; given up after `deadline`.

    An alert the smarthost refuses waits by its own attempts; while the smarthost
    cannot be reached at all, every alert waits for one probe, whose backoff ends
    at `probe_cap` so that a smarthost back is found within minutes."""

    first: timedelta = timedelta(seconds=30)
    cap: timedelta = timedelta(hours=1)
    deadline: timedelta = timedelta(days=2, hours=1)
    probe_cap: timedelta = timedelta(minutes=5)

    def next_attempt(self, attempts: int, created: datetime, now: datetime) -> datetime | None:
        delay = min(self.first * (2 ** max(attempts - 1, 0)), self.cap)
        retry_at: datetime = now + delay
        return None if retry_at > created + self.deadline else retry_at

    def next_probe(self, failures: int, now: datetime) -> datetime:
        probe_at: datetime = now + min(self.first * (2 ** max(failures - 1, 0)), self.probe_cap)
        return probe_at


DEFAULT_RETRY = RetryPolicy()
LEASE = timedelta(minutes=2)  # longer than an attempt can take (the SMTP timeout is 30 s)
# Who holds a lease: this process, as the store knows it (PostgreSQL: its sessions' name),
# so that one sharing the store can tell a dead holder's leases from a live one's.
OWNER = this_process()
ORPHANS_EVERY = 5.0  # seconds between looks for leases whose holder died
DROPPED = "the row was taken over when its lease ended, or queued again, while this attempt ran"

Said = tuple[str, dict[str, Any]]  # a log line: its event and fields
Renderer = Callable[[Sequence[AlertInput]], Awaitable[list[Alert | Exception]]]


@dataclass(frozen=True)
class Outcome:
    """How one attempt at a row ended, recorded with its batch's."""

    row: queries.OutboxRow
    error: str | None = None  # None: done
    retry_at: str | None = None  # failed: when it is due again (None: given up)
    event: tuple[str, str, dict[str, Any]] | None = None  # kind, agent, detail: the timeline's
    said: Said | None = None  # logged once recorded
    recorded: bool = False  # already, on its own (an answer sent): not again with its batch


@dataclass(frozen=True)
class Prepared:
    """A mail built and ready to go: an alert, an answer, a notice."""

    recipient: str
    alert: Alert
    sender: str | None = None  # the envelope's; None: the alerts' own (bounce_address)


@dataclass
class Smarthost:
    """What the outbox knows of the smarthost: up, or down until `probe_at`.

    Like Postfix's queue manager with a dead destination: one failed session
    marks it down, and until the probe nothing is attempted; every alert due
    meanwhile is deferred to the probe in a few commits, each new one with a
    `notify_failed` at once, so that a desk sees its alerts are held up.
    """

    failures: int = 0  # sessions failed in a row
    since: datetime | None = None
    probe_at: datetime | None = None
    error: str = ""

    def down(self, now: datetime) -> bool:
        return self.probe_at is not None and now < self.probe_at

    def failed(self, error: str, now: datetime, retry: RetryPolicy) -> None:
        self.failures += 1
        self.since = self.since or now
        self.probe_at = retry.next_probe(self.failures, now)
        self.error = error

    def why(self) -> str:
        assert self.since is not None
        return (
            f"not attempted: the smarthost has been unreachable since {stamp(self.since)}"
            f" ({self.error})"
        )


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
        lease: timedelta = LEASE,
        render: Renderer | None = None,
    ) -> None:
        super().__init__()
        self._render: Renderer = render or ThreadRenderer()
        self._db = db
        self._settings = settings
        self._secret = secret
        self._clock = clock
        self._retry = retry
        self._lease = lease
        self._transports = _transports(settings)
        self._transport_notify = settings.notify
        self._smarthost = Smarthost()
        self._sent_at = 0.0  # when the transport's session last carried an alert
        self._keep_session = False  # between drains: only while `run` is there to close it
        self._keyword_writer = KeywordWriter(settings)
        self._keywords_for = settings
        self._pruned_at: datetime | None = None
        self._orphans_at = -ORPHANS_EVERY

    def reload(self, settings: Settings) -> None:
        """Agents' addresses and their `notify` from the next alert on, the mailboxes and
        tags keywords are written by from the next keywords job; where alerts go, from
        the next batch."""
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
            self._keep_session = True
            await super().run()
        finally:
            await presence.leave()
            await self._close_sessions()
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

    async def _release_orphans(self) -> None:
        """Rows leased by a process that died while others run are due again at once, where
        the store can tell the dead (PostgreSQL: a holder with no session left); else they
        wait out their lease. Looked at every ORPHANS_EVERY seconds at most."""
        if not self._db.shared or time.monotonic() - self._orphans_at < ORPHANS_EVERY:
            return
        self._orphans_at = time.monotonic()
        async with self._db.reading() as conn:
            holders = await queries.lease_holders(conn)
        dead = await self._db.gone({holder.split("/", 1)[0] for holder in holders})
        if not dead:
            return
        orphaned = [holder for holder in holders if holder.split("/", 1)[0] in dead]
        async with self._db.transaction() as conn:
            released = await queries.release_held_by(conn, orphaned, stamp(self._clock()))
        if released:
            log.info("outbox.leases_released", rows=released, why="their process died")

    async def idle_seconds(self) -> float:
        async with self._db.reading() as conn:
            due = await queries.next_due(conn)
        wait = self.poll
        if due is not None:
            ahead = (datetime.fromisoformat(due) - self._clock()).total_seconds()
            wait = min(max(ahead, 0.0), wait)
        return wait

    async def drain(self) -> int:
        """Attempt every row that is due now; the count attempted."""
        await self._prune()
        await self._release_orphans()
        if self._settings.notify != self._transport_notify:
            await self._close_sessions()
            self._transports = _transports(self._settings)
            self._transport_notify = self._settings.notify
            self._smarthost = Smarthost()  # another smarthost, or the same one set right
        try:
            attempted = await self._drain()
        finally:
            idle = time.monotonic() - self._sent_at > KEEP_SESSION_SECONDS
            if not self._keep_session or idle:
                await self._close_sessions()
        return attempted

    async def _close_sessions(self) -> None:
        for transport in self._transports:
            await transport.close()

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
            now = self._clock()
            kinds: tuple[str, ...] = KINDS
            if self._smarthost.down(now):
                await self._defer(now)
                kinds = ("keywords",)
            holder = f"{OWNER}/{secrets.token_hex(6)}"
            async with self._db.transaction() as conn:
                rows = await queries.claim_due(
                    conn, stamp(now), kinds, holder, self._lease.total_seconds(), BATCH
                )
            if not rows:
                break
            attempted += await self._work(rows, holder)
        return attempted

    async def _work(self, rows: list[queries.OutboxRow], holder: str) -> int:
        """Attempt the rows `holder` claimed, then record every outcome in one commit; the
        count attempted.

        The lease is the store's promise that nobody else attempts these rows: past
        half of it no more are begun (an attempt takes 30 s at most), and the rest
        go back to the queue, as they do when the outbox stops or the smarthost is
        found down.
        """
        deadline = time.monotonic() + self._lease.total_seconds() / 2
        outcomes: list[Outcome] = []
        jobs = [row for row in rows if row.kind == "keywords"]
        for row in jobs:
            if self.stopping or time.monotonic() > deadline:
                break
            outcomes.append(await self._keywords(row))
        if len(outcomes) == len(jobs):
            mail = [row for row in rows if row.kind != "keywords"]
            outcomes += await self._alerts(mail, deadline, holder)
        attempted = {outcome.row.id for outcome in outcomes}
        await self._record(outcomes, holder, [row.id for row in rows if row.id not in attempted])
        return len(outcomes)

    async def _record(self, outcomes: list[Outcome], holder: str, untouched: list[int]) -> None:
        """Each outcome, if `holder` still holds its row, with its event; `untouched` let go."""
        at = stamp(self._clock())
        outcomes = [outcome for outcome in outcomes if not outcome.recorded]
        async with self._db.transaction() as conn:
            held = []
            for outcome in outcomes:
                row = outcome.row
                if outcome.error is None:
                    kept = await queries.outbox_done(conn, row.id, holder)
                else:
                    kept = await queries.outbox_failed(
                        conn, row.id, holder, outcome.error, outcome.retry_at
                    )
                if kept and outcome.event is not None and row.conversation_id is not None:
                    kind, agent, detail = outcome.event
                    event_id = await queries.add_event(
                        conn, row.conversation_id, at, kind, ACTOR, agent=agent, detail=detail
                    )
                    if row.kind == "answer" and outcome.error and outcome.retry_at is None:
                        await _tell_undelivered(conn, row, event_id, outcome.error, at)
                held.append(kept)
            await queries.release(conn, untouched, holder)
        for outcome, kept in zip(outcomes, held, strict=True):
            if not kept:
                log.warning("outbox.outcome_dropped", id=outcome.row.id, why=DROPPED)
            elif outcome.said is not None:
                what, fields = outcome.said
                log.info(what, **fields) if outcome.error is None else log.warning(what, **fields)

    async def _defer(self, now: datetime) -> None:
        """Every alert due now made due at the smarthost's probe, none attempted; a new one
        (or one past the deadline, given up) with its `notify_failed`."""
        smarthost = self._smarthost
        assert smarthost.probe_at is not None
        probe = stamp(smarthost.probe_at)
        dead_before = stamp(smarthost.probe_at - self._retry.deadline)
        while True:
            async with self._db.transaction() as conn:
                deferred, owed = await queries.defer_alerts(
                    conn, stamp(now), probe, dead_before, smarthost.why(), DEFER_CHUNK
                )
                for row in owed:
                    assert row.conversation_id is not None  # deferred rows are alerts
                    given_up = row.created_at < dead_before
                    detail = {
                        "reason": row.payload["reason"],
                        "error": smarthost.why(),
                        "attempts": row.attempts,
                        "retry_at": None if given_up else probe,
                    }
                    await queries.add_event(
                        conn,
                        row.conversation_id,
                        stamp(now),
                        "notify_failed",
                        ACTOR,
                        agent=row.payload["agent"],
                        detail=detail,
                    )
            if deferred:
                log.info("alerts.deferred", alerts=deferred, until=probe, error=smarthost.error)
            if deferred < DEFER_CHUNK:
                return

    def _failure(
        self, row: queries.OutboxRow, error: BaseException | str, retry_at: datetime | None = None
    ) -> Outcome:
        """A failed attempt: due again by the row's backoff (or at `retry_at`), an alert's
        with `notify_failed` on the timeline."""
        now = self._clock()
        text = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
        attempts = row.attempts + 1
        created = datetime.fromisoformat(row.created_at)
        if retry_at is None:
            retry_at = self._retry.next_attempt(attempts, created, now)
        elif retry_at > created + self._retry.deadline:
            retry_at = None
        retry = None if retry_at is None else stamp(retry_at)
        if row.kind == "keywords":
            said = ("keywords.failed", {"conversation": row.conversation_id, "error": text})
            return Outcome(row, text, retry, said=said)
        payload = row.payload
        detail: dict[str, Any] = {"error": text, "attempts": attempts}
        said = (f"{row.kind}.failed", {**_about(row), **detail, "gave_up": retry is None})
        if row.kind == "notice":  # the agent's mail was refused: the timeline says so already
            return Outcome(row, text, retry, said=said)
        if row.kind == "answer":
            event = ("answer_failed", payload["agent"], {**detail, "retry_at": retry})
            return Outcome(row, text, retry, event=event, said=said)
        detail = {"reason": payload["reason"], **detail}
        return Outcome(
            row,
            text,
            retry,
            event=("notify_failed", payload["agent"], {**detail, "retry_at": retry}),
            said=("alert.failed", {**_about(row), **detail, "gave_up": retry is None}),
        )

    async def _keywords(self, row: queries.OutboxRow) -> Outcome:
        if self._keywords_for is not self._settings:  # reloaded since the last job
            await self._keyword_writer.close()  # its sessions belong to the old settings
            self._keyword_writer = KeywordWriter(self._settings)
            self._keywords_for = self._settings
        conversation_id = row.conversation_id
        assert conversation_id is not None  # a keywords job is always a conversation's
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
            return self._failure(row, error)
        fields = {"conversation": conversation_id, "keywords": sorted(want), "copies": len(copies)}
        return Outcome(row, said=("keywords.set", fields))

    async def _alerts(
        self, rows: list[queries.OutboxRow], deadline: float, holder: str
    ) -> list[Outcome]:
        """Send `rows` in order, a few built while those before them are on the wire;
        stopped short by a stop, the deadline or the smarthost found down."""
        outcomes: list[Outcome] = []
        chunks = await self._chunks(rows)
        building: asyncio.Task[list[Outcome | Prepared]] | None = None
        try:
            for n, chunk in enumerate(chunks):
                prepared = await (building or self._prepare(chunk))
                building = None
                if n + 1 < len(chunks):
                    building = asyncio.create_task(self._prepare(chunks[n + 1]))
                pairs = list(zip(chunk, prepared, strict=True))
                # The first alone: a smarthost found down costs one session, not one a lane.
                # The others over several sessions when the run is full (a backlog, a load),
                # so that round trips to the smarthost overlap, as Postfix's do.
                lanes = SESSIONS if len(pairs) >= RENDER_BATCH else 1
                await self._send(pairs[:1], 1, deadline, outcomes, holder)
                await self._send(pairs[1:], lanes, deadline, outcomes, holder)
                if len(outcomes) < sum(map(len, chunks[: n + 1])):
                    return outcomes  # stopped short
        finally:
            if building is not None:  # left to end, not cancelled: it may be in the store
                await building
        return outcomes

    async def _send(
        self,
        pairs: list[tuple[queries.OutboxRow, Outcome | Prepared]],
        lanes: int,
        deadline: float,
        outcomes: list[Outcome],
        holder: str,
    ) -> None:
        """Deliver `pairs` over `lanes` sessions at once, each outcome added to `outcomes`;
        none begun after a stop, the deadline, or the smarthost found down."""
        queue = iter(pairs)

        async def lane(transport: Transport) -> None:
            for row, ready in queue:  # shared: each pair is taken by one lane
                if self.stopping or time.monotonic() > deadline:
                    return
                if self._smarthost.down(self._clock()):
                    return
                outcome = await self._deliver(row, ready, transport)
                if row.kind == "answer" and outcome.error is None:
                    # A customer would see it again, not a desk's alert: recorded at once,
                    # so that a crash after it sends it again only if it came in between.
                    # A store too busy now: the batch's commit records it, as any other.
                    with contextlib.suppress(StoreUnavailable):
                        await self._record([outcome], holder, [])
                        outcome = dataclasses.replace(outcome, recorded=True)
                outcomes.append(outcome)

        await asyncio.gather(*(lane(transport) for transport in self._transports[:lanes]))

    async def _chunks(self, rows: list[queries.OutboxRow]) -> list[list[queries.OutboxRow]]:
        """`rows` in runs built together: RENDER_BATCH alerts and RENDER_BYTES of originals
        at most (a larger original alone)."""
        async with self._db.reading() as conn:
            sizes = await queries.message_sizes(conn, [int(r.payload["message"]) for r in rows])
        chunks: list[list[queries.OutboxRow]] = []
        held = 0
        for row in rows:
            size = sizes.get(int(row.payload["message"]), 0)
            if not chunks or len(chunks[-1]) >= RENDER_BATCH or held + size > RENDER_BYTES:
                chunks.append([])
                held = 0
            chunks[-1].append(row)
            held += size
        return chunks

    async def _prepare(self, chunk: list[queries.OutboxRow]) -> list[Outcome | Prepared]:
        """Each alert built, or how its attempt ended without sending it."""
        ready: list[Outcome | Prepared | None] = [None] * len(chunk)
        inputs: list[tuple[int, str, AlertInput]] = []  # (where in the chunk, recipient, input)
        try:
            async with self._db.reading() as conn:
                ids = [row.conversation_id for row in chunk if row.conversation_id is not None]
                found = await queries.conversations(conn, ids)
                # A notice is built from its payload: the agent's mail it is about is not read.
                wanted = [int(r.payload["message"]) for r in chunk if r.kind != "notice"]
                stored = await queries.messages(conn, wanted)
        except StoreUnavailable as error:
            return [self._failure(row, error) for row in chunk]
        for n, row in enumerate(chunk):
            try:
                made = self._input(row, found, stored)
            except Exception as error:
                ready[n] = self._failure(row, error)
                continue
            if isinstance(made, Outcome | Prepared):
                ready[n] = made
            else:
                inputs.append((n, *made))
        built = await self._render([alert for _, _, alert in inputs])
        for (n, recipient, _), alert in zip(inputs, built, strict=True):
            if isinstance(alert, Exception):
                ready[n] = self._failure(chunk[n], alert)
            else:
                ready[n] = Prepared(recipient, alert)
        return [item for item in ready if item is not None]

    def _input(
        self,
        row: queries.OutboxRow,
        conversations: dict[int, queries.Conversation],
        messages: dict[int, queries.StoredMail],
    ) -> Outcome | Prepared | tuple[str, AlertInput]:
        """What building the alert needs (its recipient, its input), or, for an alert that
        is not to be sent, its outcome; an answer or a notice ready to go."""
        payload = row.payload
        agent = self._settings.agent(payload["agent"])
        stored = messages.get(int(payload["message"]))
        if row.kind == "answer":  # sent exactly as stored, whoever answered
            if stored is None:
                raise LookupError("the answer is gone from the store")
            own_id = f"<{payload['message_id']}>"
            return Prepared(payload["to"], Alert(own_id, stored.mail.raw), payload["from"])
        if agent is None:
            raise LookupError(f"agent {payload['agent']!r} is no longer configured")
        if row.kind == "notice":
            return self._notice(row, agent)
        conversation = conversations.get(row.conversation_id or 0)
        if conversation is None or stored is None:
            raise LookupError("the conversation or its message is gone")
        if conversation.assignee != payload["agent"]:
            return _superseded(row, conversation.assignee)
        assert row.event_id is not None  # an alert is an event's
        replies = self._settings.replies.address
        return agent.email, AlertInput(
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
            reply_to=(
                None
                if replies is None
                else token.reply_address(replies, token.make(self._secret, row.event_id, agent.id))
            ),
            link=self._settings.web.link(conversation.id),
        )

    def _notice(self, row: queries.OutboxRow, agent: Agent) -> Prepared:
        """A word for an agent: their mail refused, or their answer not delivered."""
        payload = row.payload
        own_id = compose.notice_id(int(payload["message"]), self._settings.gateway.hostname)
        notice = compose.Notice(
            sender=self._settings.notify.from_,
            agent_name=agent.name or agent.id,
            agent_email=agent.email,
            title=payload["title"],
            text=payload["text"],
            conversation_id=row.conversation_id,
            message_id=own_id,
            mark=None if row.event_id is None else alertmark.mark(self._secret, row.event_id),
            date=self._clock(),
        )
        return Prepared(agent.email, Alert(own_id, compose.build_notice(notice)))

    async def _deliver(
        self, row: queries.OutboxRow, prepared: Outcome | Prepared, transport: Transport
    ) -> Outcome:
        if isinstance(prepared, Outcome):
            return prepared
        name = f"{row.kind}-{row.event_id if row.event_id is not None else f'm{row.id}'}"
        try:
            await transport.send(prepared.alert.data, prepared.recipient, name, prepared.sender)
        except SmarthostDown as down:
            now = self._clock()
            self._smarthost.failed(str(down), now, self._retry)
            log.warning(
                "smarthost.down", error=str(down), probe_at=stamp(self._smarthost.probe_at or now)
            )
            return self._failure(row, down, self._smarthost.probe_at)
        except Exception as error:
            return self._failure(row, error)
        self._sent_at = time.monotonic()
        if self._smarthost.since is not None:
            log.info("smarthost.up", down_since=stamp(self._smarthost.since))
            self._smarthost = Smarthost()
        sent = {"message_id": prepared.alert.message_id}
        if row.kind == "notice":
            return Outcome(row, said=("notice.sent", {**_about(row), **sent}))
        if row.kind == "answer":
            said = ("answer.sent", {**_about(row), **sent, "to": prepared.recipient})
            return Outcome(row, event=("answer_sent", row.payload["agent"], sent), said=said)
        reason = row.payload["reason"]
        detail = {"reason": reason, **sent}
        said = ("alert.sent", {**_about(row), "reason": reason, "to": prepared.recipient})
        return Outcome(row, event=("notified", row.payload["agent"], detail), said=said)


async def _tell_undelivered(
    tx: Tx, row: queries.OutboxRow, event_id: int, error: str, at: str
) -> None:
    """An answer given up on: its agent is told, who would otherwise think it sent."""
    payload = row.payload
    title, text = compose.undelivered(payload.get("subject", ""), payload["to"], error)
    notice = {
        "agent": payload["agent"],
        "title": title,
        "text": text,
        "message": payload["message"],
    }
    await queries.enqueue(tx, "notice", event_id, row.conversation_id, notice, at)


def _transports(settings: Settings) -> list[Transport]:
    return [transport_for(settings.notify) for _ in range(SESSIONS)]


def _about(row: queries.OutboxRow) -> dict[str, Any]:
    return {
        "conversation": row.conversation_id,
        "event_id": row.event_id,
        "agent": row.payload["agent"],
    }


def _superseded(row: queries.OutboxRow, assignee: str | None) -> Outcome:
    """The conversation left the agent while the alert waited (the outbox was held up, or
    behind): it would send them to work that is no longer theirs, so it stays unsent.
    The new assignee has an alert of their own. A reassignment after this look, while
    the alert is being built and sent, does not stop it."""
    reason = row.payload["reason"]
    detail = {"reason": reason, "assignee": assignee}
    said = ("alert.superseded", {**_about(row), "reason": reason, "assignee": assignee})
    return Outcome(row, event=("notify_superseded", row.payload["agent"], detail), said=said)


class ThreadRenderer:
    """The alert builder of an outbox without a process of its own (tests, one-off work):
    each alert built in a thread, within RENDER_SECONDS."""

    async def __call__(self, inputs: Sequence[AlertInput]) -> list[Alert | Exception]:
        built: list[Alert | Exception] = []
        for alert in inputs:
            try:
                built.append(await _bounded(functools.partial(render, alert), RENDER_SECONDS))
            except TimeoutError:
                seconds = f"{RENDER_SECONDS:g}"
                built.append(TimeoutError(f"building the alert took longer than {seconds} s"))
            except Exception as error:
                built.append(error)
        return built


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
