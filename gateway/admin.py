"""What people do to the store through the `gateway` command, one transaction each.

Each action reads the conversation through a locking read inside its own write
transaction, so two people acting at once are served one after the other: the
second sees what the first did. A change of assignee is written as intake writes
one (`assignment.record`); its alert is queued in the same transaction and sent by
the daemon's outbox worker, so these work with the daemon stopped.
"""

from __future__ import annotations

import getpass
import os

from gateway import alertmark
from gateway.assignment import Alert, Change, hand_out, handed, record
from gateway.clock import Clock, stamp, utcnow
from gateway.config import Settings
from gateway.errors import Refused
from gateway.intake.worker import Intake, Outcome
from gateway.model import STATUSES
from gateway.store import queries
from gateway.store.db import Database, Tx

VIA = "cli"  # the door these actions come through (DESIGN §8: detail.via)


def login_name() -> str:
    """Who runs the command: under sudo the person who ran sudo, not root."""
    if sudo_user := os.environ.get("SUDO_USER", "").strip():
        return sudo_user
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry, as in some containers
        return "unknown"


async def _conversation(tx: Tx, conversation_id: int) -> queries.Conversation:
    """The conversation, read to be changed (a locking read)."""
    row = await queries.conversation(tx, conversation_id, lock=True)
    if row is None:
        raise Refused(f"There is no conversation {conversation_id}.")
    return row


async def assign(
    db: Database,
    settings: Settings,
    conversation_id: int,
    agent: str,
    by: str,
    clock: Clock = utcnow,
) -> str:
    """Assign, or reassign when it has an assignee; alert the new assignee unless it is `by`."""
    agent, by = settings.agent_named(agent).id, settings.actor(by)
    async with db.transaction() as conn:
        at = stamp(clock())  # taken once the write lock is ours: the timeline's times only grow
        row = await _conversation(conn, conversation_id)
        previous = row.assignee
        if previous == agent:
            return (
                f"Conversation {conversation_id} is already assigned to {agent}; nothing changed."
            )
        status = (await queries.routing_state(conn)).statuses.get(agent, "available")
        kind = "assigned" if previous is None else "reassigned"
        alert = None
        if by != agent:  # nobody is alerted about what they did themselves
            latest = await queries.latest_message(conn, conversation_id)
            alert = Alert(reason=kind, how=f"by {by}", message_pk=latest)
        change = Change(
            conversation_id,
            kind,
            by,
            at,
            agent,
            previous=previous,
            detail={"via": VIA, "status": status},
            alert=alert,
        )
        await record(conn, settings, change)
        given = await hand_out(conn, settings, previous, at) if previous else []
    was = f" (it was {previous}'s)" if previous else ""
    away = f"; note that {agent} is {status}" if status != "available" else ""
    freed = handed(previous, given) if previous else ""
    return f"Conversation {conversation_id} {kind} to {agent}{was}{away}.{freed}"


async def claim(
    db: Database,
    settings: Settings,
    conversation_id: int,
    agent: str,
    by: str | None = None,
    clock: Clock = utcnow,
) -> str:
    """Take an unassigned conversation; refused when somebody has it."""
    agent = settings.agent_named(agent).id
    by = agent if by is None else settings.actor(by)
    async with db.transaction() as conn:
        at = stamp(clock())
        row = await _conversation(conn, conversation_id)
        if row.assignee == agent:
            return f"Conversation {conversation_id} is already yours, {agent}; nothing changed."
        if row.assignee is not None:
            raise Refused(f"Conversation {conversation_id} is already assigned to {row.assignee}.")
        change = Change(conversation_id, "claimed", by, at, agent, detail={"via": VIA})
        await record(conn, settings, change)
    return f"Conversation {conversation_id} is now {agent}'s."


async def unassign(
    db: Database, settings: Settings, conversation_id: int, by: str, clock: Clock = utcnow
) -> str:
    by = settings.actor(by)
    async with db.transaction() as conn:
        at = stamp(clock())
        row = await _conversation(conn, conversation_id)
        previous = row.assignee
        if previous is None:
            return f"Conversation {conversation_id} is already unassigned; nothing changed."
        change = Change(
            conversation_id, "unassigned", by, at, None, previous=previous, detail={"via": VIA}
        )
        await record(conn, settings, change)
        given = await hand_out(conn, settings, previous, at)
    return (
        f"Conversation {conversation_id} is back in the unassigned queue (it was {previous}'s)."
        f"{handed(previous, given)}"
    )


async def set_open(
    db: Database,
    settings: Settings,
    conversation_id: int,
    is_open: bool,
    by: str,
    clock: Clock = utcnow,
) -> str:
    """Close (is_open False) or reopen (True) a conversation."""
    by = settings.actor(by)
    status, kind = ("open", "reopened") if is_open else ("closed", "closed")
    async with db.transaction() as conn:
        at = stamp(clock())
        row = await _conversation(conn, conversation_id)
        if row.status == status:
            return f"Conversation {conversation_id} is already {status}; nothing changed."
        await queries.set_conversation_status(conn, conversation_id, status)
        await queries.add_event(
            conn, conversation_id, at, kind, by, agent=row.assignee, detail={"via": VIA}
        )
        given = []
        if not is_open:
            await queries.unqueue(conn, conversation_id)  # closed, it waits for nobody
            if row.assignee is not None:
                given = await hand_out(conn, settings, row.assignee, at)
    freed = handed(row.assignee, given) if row.assignee else ""
    return f"Conversation {conversation_id} {kind}.{freed}"


async def set_status(
    db: Database, settings: Settings, agent: str, status: str, clock: Clock = utcnow
) -> str:
    """Set an agent's availability; one available again takes from the queue."""
    agent = settings.agent_named(agent).id
    if status not in STATUSES:
        raise Refused(f"{status!r} is not a status; use one of {', '.join(STATUSES)}.")
    async with db.transaction() as conn:
        at = stamp(clock())
        await queries.set_agent_status(conn, agent, status, at)
        given = await hand_out(conn, settings, agent, at) if status == "available" else []
    return f"{agent} is now {status}.{handed(agent, given)}"


async def retry(
    db: Database, settings: Settings, message_pk: int, clock: Clock = utcnow
) -> Outcome:
    """Put a shunted message back and run intake on it now, in this process."""
    async with db.transaction() as conn:
        if not await queries.unshunt(conn, message_pk):
            state = await queries.message_state(conn, message_pk)
            if state is None:
                raise Refused(f"There is no message {message_pk}.")
            raise Refused(
                f"Message {message_pk} is not shunted: it is {state} (see `gateway shunted`)."
            )
        secret = await alertmark.load_secret(conn)
    async with db.reading() as conn:
        stored = await queries.message(conn, message_pk)
    assert stored is not None
    outcome = await Intake(db, settings, secret, clock=clock).process(stored)
    if outcome.state != "skipped":
        return outcome
    # The running daemon took it first: report what became of it there.
    async with db.reading() as conn:
        row = await queries.message_outcome(conn, message_pk)
    return Outcome(row.state, row.conversation_id, error=row.error)
