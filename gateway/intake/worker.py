"""Intake: pending messages, in arrival order → parse → thread → route → one transaction.

A message that makes intake raise is shunted (kept, with its error) and the
rest flow on; `gateway retry` runs it again. A store that cannot commit is not
the message's fault: the message stays pending and intake tries again later.
"""

from __future__ import annotations

import asyncio
import functools
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass

import structlog

from gateway import alertmark
from gateway.addresses import normalize_address
from gateway.alerts import queue_alert, queue_keywords
from gateway.assignment import Alert, Change, hand_out, record
from gateway.clock import Clock, stamp, utcnow
from gateway.config import Settings
from gateway.drainloop import DrainLoop
from gateway.errors import StoreUnavailable
from gateway.intake.facts import thread_subject
from gateway.intake.parsing import Parser, ThreadParser
from gateway.intake.threads import find_conversation
from gateway.model import Decision, Delivery, MailFacts, RoutingState
from gateway.replies import door
from gateway.routing.rotation import GLOBAL, team_key
from gateway.routing.router import Policy, route, taken, taker, unable
from gateway.store import queries
from gateway.store.db import Database, Tx
from gateway.store.queries import StoredMail

log = structlog.get_logger("gateway.intake")

ACTOR = "gateway"
_QUEUEING = {"routed", "applied", "refused"}  # outcomes that may have queued mail to send
BATCH = 100  # messages per transaction when accept is quiet
BURST_BATCH = 3  # while accept is busy: short transactions keep its commits waiting little
BATCH_BYTES = 16 * 1024 * 1024  # raw mail held in memory at once (at least one message)


@dataclass(frozen=True)
class Outcome:
    state: str  # routed, dropped, shunted, skipped (taken by another intake meanwhile)
    conversation_id: int | None = None
    new: bool = False
    decision: Decision | None = None
    error: str | None = None


class Intake(DrainLoop):
    name = "intake"

    def __init__(
        self,
        db: Database,
        settings: Settings,
        secret: bytes,
        *,
        clock: Clock = utcnow,
        on_routed: Callable[[], None] = lambda: None,
        accept_busy: Callable[[], bool] = lambda: False,
        parse: Parser | None = None,
    ) -> None:
        super().__init__(accept_busy)
        self._parse = parse or ThreadParser()
        self._db = db
        self._secret = secret
        self._clock = clock
        self._on_routed = on_routed
        self._state: RoutingState | None = None  # the batch's, as its decisions left it
        self._next_state: RoutingState | None = None  # the message's, once it is done
        self.reload(settings)

    def reload(self, settings: Settings) -> None:
        """Route from the next message on by these rules, agents, teams and rotation."""
        self.prepare(settings)()

    def prepare(self, settings: Settings) -> Callable[[], None]:
        """`reload` in two: the rule index is built now (in a thread, at a SIGHUP), and put
        to use by the call returned (on the loop)."""
        return functools.partial(self._use, settings, Policy.from_settings(settings))

    def _use(self, settings: Settings, policy: Policy) -> None:
        self._settings = settings
        self._policy = policy
        self._agent_addresses = {normalize_address(a.email) for a in settings.agents}
        # Limits may have risen, agents joined or left a rotation: the queues are handed
        # out again, at the next drain (and at start, for what waited while it was down).
        self._hand_out_all = True

    async def drain(self) -> int:
        """Handle every pending message; the count handled."""
        if self._hand_out_all:
            await self._hand_out_everyone()
        handled = 0
        while not self.stopping:
            # During a burst: small batches, so accept's commits wait little for the store.
            started = time.perf_counter()
            async with self._db.reading() as conn:
                batch = await queries.pending_messages(
                    conn, BURST_BATCH if self.accept_busy else BATCH, BATCH_BYTES
                )
            if not batch:
                break
            await self.process_batch(batch)
            handled += len(batch)
            await self.accept_first(started)
        return handled

    async def _hand_out_everyone(self) -> None:
        """Each agent with room takes from the queues they serve, in configuration order."""
        async with self._db.reading() as conn:
            waiting = await queries.any_waiting(conn)
        if not waiting:  # the usual case: no write transaction for nothing
            self._hand_out_all = False
            return
        async with self._db.transaction() as conn:
            at = stamp(self._clock())
            given = {
                a.id: await hand_out(conn, self._settings, a.id, at) for a in self._settings.agents
            }
        self._hand_out_all = False
        for agent, conversations in given.items():
            if conversations:
                log.info("queue.handed_out", agent=agent, conversations=conversations, why="load")

    async def process(self, stored: StoredMail) -> Outcome:
        return (await self.process_batch([stored]))[0]

    async def process_batch(self, batch: list[StoredMail]) -> list[Outcome]:
        """Route `batch` in one transaction; a message that raises is shunted alone."""
        started = time.perf_counter()
        # Off the loop: decoding a hostile header can take a while.
        parsed = await self._parse([(b.mail.raw, b.mail.envelope_from) for b in batch])
        # Agents' mail is read whole (text, attachments), off the loop, before the lock.
        readings = {
            b.id: await asyncio.to_thread(door.read, b.mail.raw)
            for b in batch
            if self._settings.is_replies(b.mail.inbox)
        }
        outcomes: list[Outcome] = []
        async with self._db.transaction() as conn:
            self._state = None  # read by the batch's first new conversation, in its transaction
            for stored, facts in zip(batch, parsed, strict=True):
                outcomes.append(await self._one(conn, stored, facts, readings.get(stored.id)))
        ms = round((time.perf_counter() - started) * 1000, 2)
        for stored, facts, outcome in zip(batch, parsed, outcomes, strict=True):
            _log(stored, facts, outcome, ms)
        if any(outcome.state in _QUEUEING for outcome in outcomes):
            self._on_routed()
        return outcomes

    async def _one(
        self,
        tx: Tx,
        stored: StoredMail,
        facts: MailFacts | Exception,
        reading: door.Reading | None,
    ) -> Outcome:
        self._next_state = None
        try:
            async with tx.savepoint():
                if isinstance(facts, Exception):
                    raise facts
                outcome = await self._handle(tx, stored, facts, reading)
        except StoreUnavailable:
            raise  # locked, full, failing: the whole batch stays pending
        except Exception as error:  # this message did it (its data, a bug): it alone is parked
            self._state = None
            return await self._shunt(tx, stored, error)
        # What a new conversation's routing changed is known; after anything else (a reply
        # reassigned, an agent's commands) the next new one reads the state again.
        self._state = self._next_state
        return outcome

    async def _shunt(self, tx: Tx, stored: StoredMail, error: Exception) -> Outcome:
        """Park the message with its error (what it wrote is undone); the rest flow on."""
        reason = f"{type(error).__name__}: {error}"
        await queries.shunt(tx, stored.id, reason)
        log.error(
            "message.shunted",
            message=stored.id,
            inbox=stored.mail.inbox,
            error=reason,
            traceback="".join(traceback.format_exception(error)),
        )
        return Outcome("shunted", error=reason)

    async def _handle(
        self, conn: Tx, stored: StoredMail, facts: MailFacts, reading: door.Reading | None
    ) -> Outcome:
        at = stamp(self._clock())
        if not await queries.claim_pending(conn, stored.id):
            return Outcome("skipped")
        if reading is not None:  # to the replies address: an agent's, never a customer's
            handled = await door.handle(
                conn, self._settings, self._secret, stored, facts, reading, self._clock()
            )
            return Outcome(handled.state, handled.conversation_id, error=handled.why)
        if alertmark.is_ours(self._secret, facts.notification):
            await queries.finish_message(
                conn, stored.id, "dropped", facts, None, "the gateway's own alert"
            )
            return Outcome("dropped")
        found = await find_conversation(
            conn,
            stored.mail.inbox,
            facts,
            self._clock(),
            self._settings.threading.subject_fallback_days,
        )
        if found is None:
            found, decision = await self._open(conn, stored, facts, at)
            outcome = Outcome("routed", found, True, decision)
        else:
            await self._join(conn, found, stored, facts, at)
            outcome = Outcome("routed", found)
        return outcome

    async def _open(
        self, conn: Tx, stored: StoredMail, facts: MailFacts, at: str
    ) -> tuple[int, Decision]:
        # Read once a batch (with the lock: the rotation's pointer is ours until the commit),
        # then kept by each decision: at 1,000 agents with limits the read is milliseconds,
        # counting their open conversations, and a burst would pay it for every message.
        state = self._state or await queries.routing_state(
            conn, lock=True, counted=self._policy.counted
        )
        delivery = Delivery(facts, stored.mail.inbox, stored.mail.envelope_to)
        decision = route(delivery, self._policy, state)
        self._next_state = taken(state, decision, self._policy, at)
        conversation_id = await queries.create_conversation(
            conn,
            inbox=stored.mail.inbox,
            customer=facts.sender,
            subject=facts.subject,
            thread_subject=thread_subject(facts.subject),
            team=decision.team,
            # The customer has waited since the message arrived, not since intake ran.
            at=stored.received_at,
            queued_for=decision.waits_for,
        )
        # Of the conversation first: its IMAP copies are found by it for the keywords job.
        await queries.finish_message(conn, stored.id, "routed", facts, conversation_id)
        await queries.add_event(
            conn,
            conversation_id,
            stored.received_at,
            "received",
            ACTOR,
            detail=_received(stored, facts) | {"route": decision.reason},
        )
        if decision.tags:
            await queries.add_tags(conn, conversation_id, decision.tags)
            await queries.add_event(
                conn,
                conversation_id,
                at,
                "tagged",
                ACTOR,
                rule=decision.rule,
                detail={"tags": list(decision.tags)},
            )
        if decision.assignee is None:
            await queue_keywords(conn, conversation_id, at)
            return conversation_id, decision
        change = Change(
            conversation_id,
            "assigned",
            ACTOR,
            at,
            decision.assignee,
            rule=decision.rule,
            detail={
                "via": decision.via,
                "team": decision.team,
                "status": state.statuses.get(decision.assignee, "available"),
                # Their load then, against their limit (a rule assigns whatever it is).
                "load": _load(self._policy, state, decision.assignee),
                "reason": decision.reason,
                "matched": [list(pair) for pair in decision.matched],
            },
            rotation=decision.rotation,
            alert=Alert("assigned", _how(decision), stored.id, facts.sender),
        )
        await record(conn, self._settings, change)
        return conversation_id, decision

    async def _join(
        self,
        conn: Tx,
        conversation_id: int,
        stored: StoredMail,
        facts: MailFacts,
        at: str,
    ) -> None:
        row = await queries.conversation(conn, conversation_id, lock=True)
        assert row is not None
        await queries.finish_message(conn, stored.id, "routed", facts, conversation_id)
        await queries.add_message_to(conn, conversation_id, stored.received_at)
        event_id = await queries.add_event(
            conn,
            conversation_id,
            stored.received_at,
            "received",
            ACTOR,
            detail=_received(stored, facts),
        )
        # The customer writing again reopens; an out-of-office, an agent's copy, or mail
        # from nobody to answer (no sender address at all) does not.
        from_customer = (
            facts.auto is None
            and facts.sender is not None
            and normalize_address(facts.sender) not in self._agent_addresses
        )
        if row.status == "closed" and from_customer:
            await queries.set_conversation_status(conn, conversation_id, "open")
            await queries.add_event(
                conn,
                conversation_id,
                at,
                "reopened",
                ACTOR,
                agent=row.assignee,
                detail={"reason": "the customer wrote again"},
            )
        assignee = row.assignee
        if assignee is not None and from_customer:
            assignee = await self._reply_to_absent(conn, row, stored, facts, at)
        if assignee is not None and self._settings.notify.on_reply and from_customer:
            await queue_alert(
                conn,
                self._settings,
                conversation_id=conversation_id,
                event_id=event_id,
                agent_id=assignee,
                reason="reply",
                how="the customer wrote again",
                message_pk=stored.id,
                at=at,
                sender=facts.sender,
            )
        await queue_keywords(conn, conversation_id, at)

    async def _reply_to_absent(
        self,
        conn: Tx,
        row: queries.Conversation,
        stored: StoredMail,
        facts: MailFacts,
        at: str,
    ) -> str | None:
        """The customer wrote again to a conversation someone has: who is still to hear
        of it (None: nobody more). By `reply_when_assignee_away`, when the assignee is away
        or dnd, they keep it ("keep"), or it is routed again like new mail ("reassign"),
        or it waits in its rotation's queue ("unassign", or "reassign" with nobody able to
        take it); a new assignee is alerted of the reassignment."""
        assert row.assignee is not None
        setting = self._settings.routing.reply_when_assignee_away
        if setting == "keep":
            return row.assignee
        state = await queries.routing_state(conn, lock=True, counted=self._policy.counted)
        absent = unable(row.assignee, None, state)
        if absent is None:
            return row.assignee
        why = f"the customer wrote again and {row.assignee} is {absent}"
        decision = None
        if setting == "reassign":
            delivery = Delivery(facts, stored.mail.inbox, stored.mail.envelope_to)
            decision = route(delivery, self._policy, state)
            if decision.assignee == row.assignee:  # a rule names them, whatever their status
                return row.assignee
        agent = decision.assignee if decision is not None else None
        change = Change(
            row.id,
            "unassigned" if agent is None else "reassigned",
            ACTOR,
            at,
            agent,
            previous=row.assignee,
            rule=decision.rule if decision is not None else None,
            detail=(
                {"reason": why}
                if decision is None
                else {"reason": f"{why}; {decision.reason}", "via": decision.via}
            ),
            rotation=decision.rotation if decision is not None else None,
            alert=None if agent is None else Alert("reassigned", f"because {why}", stored.id),
        )
        await record(conn, self._settings, change)
        if agent is None:
            waits = decision.waits_for if decision is not None else _queue_of(self._policy, row)
            if waits is not None:
                await queries.queue(conn, row.id, waits, at)
                # Handed out like any waiting conversation: at once, if somebody can take it.
                able = taker(waits, self._policy, state)
                if able is not None:
                    await hand_out(conn, self._settings, able, at)
        return None  # the new assignee's alert says it all; the absent one hears nothing


async def rerun(
    db: Database, settings: Settings, message_pk: int, clock: Clock = utcnow
) -> Outcome:
    """Run intake on one pending message now, in this process (after `gateway retry` put
    it back); what became of it, also when the running daemon took it first."""
    async with db.transaction() as conn:
        secret = await alertmark.load_secret(conn)
        stored = await queries.message(conn, message_pk)
    assert stored is not None
    outcome = await Intake(db, settings, secret, clock=clock).process(stored)
    if outcome.state != "skipped":
        return outcome
    async with db.reading() as conn:
        row = await queries.message_outcome(conn, message_pk)
    return Outcome(row.state, row.conversation_id, error=row.error)


def _load(policy: Policy, state: RoutingState, agent: str) -> str | None:
    """`agent`'s open conversations against their limit ("19/20"); None without a limit."""
    limit = policy.limits.get(agent)
    return None if limit is None else f"{state.open.get(agent, 0)}/{limit}"


def _queue_of(policy: Policy, row: queries.Conversation) -> str | None:
    """The queue a conversation taken from its assignee waits in: its team's, else the
    rotation's (None when there is neither)."""
    if row.team is not None and row.team in policy.teams:
        return team_key(row.team)
    return GLOBAL if policy.round_robin is not None else None


def _log(stored: StoredMail, facts: MailFacts | Exception, outcome: Outcome, ms: float) -> None:
    if outcome.state == "shunted":
        return  # logged with its traceback when it happened
    decision = outcome.decision
    log.info(
        f"message.{outcome.state}",
        message=stored.id,
        inbox=stored.mail.inbox,
        message_id=facts.message_id if isinstance(facts, MailFacts) else None,
        conversation=outcome.conversation_id,
        new=outcome.new,
        rule=decision.rule if decision else None,
        assignee=decision.assignee if decision else None,
        reason=decision.reason if decision else None,
        ms=ms,  # from taking its batch to the batch's commit
    )


def _how(decision: Decision) -> str:
    if decision.via == "rule":
        return f"by rule '{decision.rule}'"
    if decision.via == "team":
        return f"by team {decision.team}'s rotation (rule '{decision.rule}')"
    return "by round-robin"


def _received(stored: StoredMail, facts: MailFacts) -> dict[str, object]:
    return {
        "message_id": facts.message_id,
        "from": facts.sender,
        "source": stored.mail.source,
        "auto": facts.auto,
    }
