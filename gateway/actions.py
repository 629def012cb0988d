"""What people do to conversations: one layer of typed actions every door calls.

The command line, an agent's mail (§12) and the web inbox (§13) each turn what a
person asked into an action (`Assign`, `Claim`, `Unassign`, `Close`, `Reopen`,
`SetStatus`, `Reply`) and an `Actor` (who, through which door), and get back a
`Result`: changed, nothing to change, or refused with a reason, and the events
and outbox rows it wrote. `apply` runs one in the caller's transaction (a mail
with several commands is one transaction); `perform` runs one in its own.

Each reads the conversation through a locking read inside the write transaction,
so two people acting at once are served one after the other: the second sees
what the first did. A refused action has written nothing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from email.errors import HeaderParseError
from email.utils import parseaddr
from typing import Literal

from gateway.addresses import normalize_address
from gateway.assignment import Alert, Change, hand_out, handed, record
from gateway.clock import Clock, stamp, utcnow
from gateway.config import Settings
from gateway.errors import Refused
from gateway.intake.facts import message_ids, normalize_message_id, parse_headers
from gateway.model import STATUSES
from gateway.replies.compose import (
    Answer,
    Attachment,
    answer_id,
    answer_subject,
    ascii_address,
    build_answer,
)
from gateway.replies.marker import is_marker
from gateway.store import queries
from gateway.store.db import Database, Tx

Via = Literal["cli", "email", "web"]


@dataclass(frozen=True)
class Actor:
    """Who acts (an agent's id when the name is one agent's), through which door."""

    name: str
    via: Via


@dataclass(frozen=True)
class Assign:
    conversation_id: int
    agent: str  # as a person names them: id or address


@dataclass(frozen=True)
class Claim:
    conversation_id: int
    agent: str | None = None  # None: the actor takes it


@dataclass(frozen=True)
class Unassign:
    conversation_id: int


@dataclass(frozen=True)
class Close:
    conversation_id: int


@dataclass(frozen=True)
class Reopen:
    conversation_id: int


@dataclass(frozen=True)
class SetStatus:
    agent: str
    status: str


@dataclass(frozen=True)
class Retry:
    """Put a shunted message back in intake's way (the caller runs intake on it)."""

    message_pk: int


@dataclass(frozen=True)
class Reply:
    """Answer the customer: `text` (what the agent wrote, cut and trimmed) and files.
    `claim`: an unassigned conversation becomes the agent's (`claim_on_reply`), unless
    the same mail said who has it (#assign, #unassign, #claim)."""

    conversation_id: int
    text: str
    attachments: tuple[Attachment, ...] = ()
    claim: bool = True


Action = Assign | Claim | Unassign | Close | Reopen | SetStatus | Retry | Reply

Done = Literal["changed", "unchanged", "refused"]


@dataclass(frozen=True)
class Result:
    state: Done
    text: str  # one sentence (or two) for the person
    events: tuple[int, ...] = ()
    outbox: tuple[int, ...] = ()
    given: tuple[int, ...] = field(default=())  # conversations the queue handed out meanwhile


MAX_ANSWER_CHARS = 100_000  # an answer longer than this is refused, never cut
_HEAD_BYTES = 64 * 1024  # of the customer's message, for its References


class _Undone(Exception):
    def __init__(self, result: Result) -> None:
        self.result = result


async def perform(
    db: Database, settings: Settings, actor: Actor, action: Action, clock: Clock = utcnow
) -> Result:
    """`action` in a transaction of its own; a refusal leaves the store as it was."""
    try:
        async with db.transaction() as tx:
            result = await apply(tx, settings, actor, action, stamp(clock()))
            if result.state == "refused":
                raise _Undone(result)
    except _Undone as undone:
        return undone.result
    return result


async def apply(tx: Tx, settings: Settings, actor: Actor, action: Action, at: str) -> Result:
    """`action` in the caller's transaction, at `at`. A refusal has written nothing, so
    the caller may go on, or undo the rest it did (a savepoint) as a mail's commands do."""
    before = len(tx.written)
    try:
        async with tx.savepoint():
            state, text, given = await _run(tx, settings, actor, action, at)
    except Refused as refusal:
        return Result("refused", str(refusal))
    written = tx.written[before:]
    return Result(
        state,
        text,
        events=tuple(n for kind, n in written if kind == "event"),
        outbox=tuple(n for kind, n in written if kind == "outbox"),
        given=tuple(given),
    )


async def _run(
    tx: Tx, settings: Settings, actor: Actor, action: Action, at: str
) -> tuple[Done, str, list[int]]:
    match action:
        case Assign(conversation_id, agent):
            return await _assign(tx, settings, actor, conversation_id, agent, at)
        case Claim(conversation_id, agent):
            return await _claim(tx, settings, actor, conversation_id, agent, at)
        case Unassign(conversation_id):
            return await _unassign(tx, settings, actor, conversation_id, at)
        case Close(conversation_id):
            return await _set_open(tx, settings, actor, conversation_id, False, at)
        case Reopen(conversation_id):
            return await _set_open(tx, settings, actor, conversation_id, True, at)
        case SetStatus(agent, status):
            return await _set_status(tx, settings, agent, status, at)
        case Retry(message_pk):
            return await _retry(tx, message_pk)
        case Reply():
            return await _reply(tx, settings, actor, action, at)


async def _conversation(tx: Tx, conversation_id: int) -> queries.Conversation:
    """The conversation, read to be changed (a locking read)."""
    row = await queries.conversation(tx, conversation_id, lock=True)
    if row is None:
        raise Refused(f"There is no conversation {conversation_id}.")
    return row


async def _assign(
    tx: Tx, settings: Settings, actor: Actor, conversation_id: int, name: str, at: str
) -> tuple[Done, str, list[int]]:
    """Assign, or reassign when it has an assignee; alert the new assignee unless they did it."""
    agent = settings.agent_named(name).id
    row = await _conversation(tx, conversation_id)
    previous = row.assignee
    if previous == agent:
        return (
            "unchanged",
            f"Conversation {conversation_id} is already {agent}'s; nothing changed.",
            [],
        )
    status = (await queries.routing_state(tx)).statuses.get(agent, "available")
    kind = "assigned" if previous is None else "reassigned"
    alert = None
    if actor.name != agent:  # nobody is alerted about what they did themselves
        latest = await queries.latest_message(tx, conversation_id)
        alert = Alert(reason=kind, how=f"by {actor.name}", message_pk=latest)
    change = Change(
        conversation_id,
        kind,
        actor.name,
        at,
        agent,
        previous=previous,
        detail={"via": actor.via, "status": status},
        alert=alert,
    )
    await record(tx, settings, change)
    given = await hand_out(tx, settings, previous, at) if previous else []
    was = f" (it was {previous}'s)" if previous else ""
    away = f"; note that {agent} is {status}" if status != "available" else ""
    freed = handed(previous, given) if previous else ""
    return "changed", f"Conversation {conversation_id} {kind} to {agent}{was}{away}.{freed}", given


async def _claim(
    tx: Tx,
    settings: Settings,
    actor: Actor,
    conversation_id: int,
    name: str | None,
    at: str,
) -> tuple[Done, str, list[int]]:
    """Take an unassigned conversation; refused when somebody has it."""
    agent = settings.agent_named(actor.name if name is None else name).id
    row = await _conversation(tx, conversation_id)
    if row.assignee == agent:
        return (
            "unchanged",
            f"Conversation {conversation_id} is already {agent}'s; nothing changed.",
            [],
        )
    if row.assignee is not None:
        raise Refused(f"Conversation {conversation_id} is already assigned to {row.assignee}.")
    change = Change(conversation_id, "claimed", actor.name, at, agent, detail={"via": actor.via})
    await record(tx, settings, change)
    return "changed", f"Conversation {conversation_id} is now {agent}'s.", []


async def _unassign(
    tx: Tx, settings: Settings, actor: Actor, conversation_id: int, at: str
) -> tuple[Done, str, list[int]]:
    row = await _conversation(tx, conversation_id)
    previous = row.assignee
    if previous is None:
        return (
            "unchanged",
            f"Conversation {conversation_id} is already unassigned; nothing changed.",
            [],
        )
    change = Change(
        conversation_id,
        "unassigned",
        actor.name,
        at,
        None,
        previous=previous,
        detail={"via": actor.via},
    )
    await record(tx, settings, change)
    given = await hand_out(tx, settings, previous, at)
    text = (
        f"Conversation {conversation_id} is back in the unassigned queue (it was {previous}'s)."
        f"{handed(previous, given)}"
    )
    return "changed", text, given


async def _set_open(
    tx: Tx, settings: Settings, actor: Actor, conversation_id: int, is_open: bool, at: str
) -> tuple[Done, str, list[int]]:
    status, kind = ("open", "reopened") if is_open else ("closed", "closed")
    row = await _conversation(tx, conversation_id)
    if row.status == status:
        return (
            "unchanged",
            f"Conversation {conversation_id} is already {status}; nothing changed.",
            [],
        )
    await queries.set_conversation_status(tx, conversation_id, status)
    await queries.add_event(
        tx, conversation_id, at, kind, actor.name, agent=row.assignee, detail={"via": actor.via}
    )
    given: list[int] = []
    if not is_open:
        await queries.unqueue(tx, conversation_id)  # closed, it waits for nobody
        if row.assignee is not None:
            given = await hand_out(tx, settings, row.assignee, at)
    freed = handed(row.assignee, given) if row.assignee else ""
    return "changed", f"Conversation {conversation_id} {kind}.{freed}", given


async def _set_status(
    tx: Tx, settings: Settings, name: str, status: str, at: str
) -> tuple[Done, str, list[int]]:
    """Set an agent's availability; one available again takes from the queue."""
    agent = settings.agent_named(name).id
    if status not in STATUSES:
        raise Refused(f"{status!r} is not a status; use one of {', '.join(STATUSES)}.")
    current = (await queries.routing_state(tx, lock=True)).statuses.get(agent, "available")
    if current == status:
        return "unchanged", f"{agent} is already {status}; nothing changed.", []
    await queries.set_agent_status(tx, agent, status, at)
    given = await hand_out(tx, settings, agent, at) if status == "available" else []
    return "changed", f"{agent} is now {status}.{handed(agent, given)}", given


async def _reply(
    tx: Tx, settings: Settings, actor: Actor, reply: Reply, at: str
) -> tuple[Done, str, list[int]]:
    """Send the customer the agent's answer through the outbox, and keep it as a message
    of the conversation; an unassigned conversation is the agent's by it
    (`claim_on_reply`). It does not reopen a closed conversation."""
    agent = settings.agent_named(actor.name)
    text = reply.text.strip()
    if not text:
        raise Refused("The answer is empty: there is nothing to send the customer.")
    if len(text) > MAX_ANSWER_CHARS:
        raise Refused(
            f"The answer is {len(text):,} characters, over the {MAX_ANSWER_CHARS:,} an answer"
            " may hold; send it in parts, or as an attachment."
        )
    leak = internal_word(settings, text, reply.attachments)
    if leak is not None:
        raise Refused(
            f"The answer holds {leak}, which no customer may see (the alert quoted, or an"
            " internal address); nothing was sent. Write the answer above the alert's first line."
        )
    row = await _conversation(tx, reply.conversation_id)
    customer = row.customer
    if not customer or "@" not in customer:
        raise Refused(f"Conversation {row.id} has no customer address to answer.")
    try:
        customer = ascii_address(customer)
    except ValueError as error:
        raise Refused(f"The answer cannot be sent: {error}.") from None
    if row.assignee is None and settings.replies.claim_on_reply and reply.claim:
        change = Change(row.id, "claimed", agent.id, at, agent.id, detail={"via": actor.via})
        await record(tx, settings, change)
    replied = await queries.add_event(
        tx, row.id, at, "replied", agent.id, agent=agent.id, detail={"via": actor.via}
    )
    own_id = answer_id(replied, settings.gateway.hostname)
    parent, references = await _parent(tx, row.id)
    raw = _built(
        Answer(
            conversation_id=row.id,
            subject=row.subject,
            text=text,
            agent_name=agent.name or agent.id,
            inbox=row.inbox,
            customer=customer,
            message_id=own_id,
            in_reply_to=parent,
            references=references,
            date=_moment(at),
            attachments=reply.attachments,
        )
    )
    stored_id = normalize_message_id(own_id)
    assert stored_id is not None
    message_pk = await queries.store_answer(
        tx,
        inbox=row.inbox,
        conversation_id=row.id,
        message_id=stored_id,
        raw=raw,
        sender=row.inbox,
        recipient=customer,
        subject=answer_subject(row.subject, row.id),
        at=at,
    )
    await queries.add_message_to(tx, row.id, at)
    await queries.set_event_detail(tx, replied, {"via": actor.via, "message_id": stored_id})
    await queries.enqueue(
        tx,
        "answer",
        replied,
        row.id,
        {
            "agent": agent.id,
            "message": message_pk,
            "message_id": stored_id,
            "to": customer,
            "from": row.inbox,
            "subject": answer_subject(row.subject, row.id),
        },
        at,
    )
    return "changed", f"The answer to conversation {row.id} is on its way to {customer}.", []


def _built(answer: Answer) -> bytes:
    try:
        return build_answer(answer)
    except (ValueError, TypeError, IndexError, HeaderParseError) as error:
        raise Refused(f"The answer cannot be written as mail: {error}.") from None


def internal_word(
    settings: Settings, text: str, attachments: tuple[Attachment, ...] = ()
) -> str | None:
    """The first internal word in an answer (the alert's marker line, the gateway's, the
    replies' or an agent's address, a token included), or None: the last check before
    anything goes to a customer, whatever the cut let through."""
    if any(is_marker(line) for line in text.splitlines()):
        return "the alert's first line"
    internal = _internal_addresses(settings)
    found = internal.search(text)
    if found is not None:
        return found.group(0)
    for item in attachments:
        hit = internal.search(item.data.decode("latin-1"))
        if hit is not None:
            return f"{hit.group(0)} (in {item.filename or 'an attachment'})"
    return None


def _internal_addresses(settings: Settings) -> re.Pattern[str]:
    """Any of the desk's own addresses, in any case, with any +tag."""
    addresses = [parseaddr(settings.notify.from_)[1], settings.notify.bounce_address]
    addresses += [settings.replies.address, *(agent.email for agent in settings.agents)]
    forms = []
    for address in filter(None, addresses):
        local, _, domain = address.rpartition("@")
        if local:
            forms.append(rf"{re.escape(local)}(?:\+[^@\s]*)?@{re.escape(domain)}")
    return re.compile("|".join(forms) or r"(?!)", re.IGNORECASE)


async def _parent(tx: Tx, conversation_id: int) -> tuple[str | None, tuple[str, ...]]:
    """The customer's latest message's Message-ID and References: what an answer replies to."""
    latest = await queries.latest_message(tx, conversation_id)
    head = (await queries.heads(tx, [latest], _HEAD_BYTES)).get(latest, b"")
    headers = parse_headers(head)
    found = headers.get("Message-ID")
    parent = normalize_message_id(str(found)) if found is not None else None
    chain = [
        item for value in headers.get_all("References", []) for item in message_ids(str(value))
    ]
    return parent, tuple(chain)


async def _retry(tx: Tx, message_pk: int) -> tuple[Done, str, list[int]]:
    if not await queries.unshunt(tx, message_pk):
        state = await queries.message_state(tx, message_pk)
        if state is None:
            raise Refused(f"There is no message {message_pk}.")
        raise Refused(
            f"Message {message_pk} is not shunted: it is {state} (see `gateway shunted`)."
        )
    return "changed", f"Message {message_pk} is pending again.", []


def _moment(at: str) -> datetime:
    return datetime.fromisoformat(at)


def agent_of_address(settings: Settings, address: str | None) -> str | None:
    """The agent whose configured address this is (case and +tag aside); None: nobody's."""
    if not address:
        return None
    wanted = normalize_address(address)
    found = [agent.id for agent in settings.agents if normalize_address(agent.email) == wanted]
    return found[0] if len(found) == 1 else None
