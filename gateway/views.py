"""Read views for the command line, in the JSON shapes of DESIGN §8."""

from __future__ import annotations

import asyncio
from collections.abc import MutableMapping
from typing import Any

from gateway import alertmark
from gateway.clock import Clock, utcnow
from gateway.config import Settings
from gateway.errors import Refused
from gateway.intake.facts import dedup_key, extract
from gateway.intake.threads import find_conversation
from gateway.mailtext import attachments, message_text
from gateway.model import Delivery, RoutingState
from gateway.routing.router import Policy, route
from gateway.store import queries
from gateway.store.db import Database

TEXT_CHARS = 20_000  # of each message's text: a long mail's first pages
TEXT_PREFIX_BYTES = 256 * 1024  # of each message read for it: its text, not its attachments


def _conversation(row: queries.Conversation, tags: list[str]) -> dict[str, Any]:
    return {
        "id": row.id,
        "subject": row.subject,
        "customer": row.customer,
        "inbox": row.inbox,
        "assignee": row.assignee,
        "team": row.team,
        "status": row.status,
        "tags": tags,
        "created_at": row.created_at,
        "last_message_at": row.last_message_at,
        "message_count": row.message_count,
    }


async def conversations(
    db: Database,
    *,
    status: str | None,
    assignee: str | None = None,
    team: str | None = None,
    unassigned: bool = False,
    limit: int | None = None,
    after: tuple[str, int] | None = None,
) -> list[dict[str, Any]]:
    """One queue, oldest waiting first; the first `limit` of it when given, of those
    after the (last_message_at, id) `after` when given.

    With a limit the time does not grow with the store (bench/views.py);
    without one it grows with the queue, since every row is returned.
    """
    async with db.reading() as conn:
        rows = await queries.list_conversations(
            conn,
            status=status,
            assignee=assignee,
            team=team,
            unassigned=unassigned,
            limit=limit,
            after=after,
        )
        tags = await queries.tags_of(conn, [row.id for row in rows])
    return [_conversation(row, tags[row.id]) for row in rows]


PAGE_ROWS = 50  # conversations on one page of a queue


async def open_counts(db: Database, settings: Settings) -> dict[str, Any]:
    """The open conversations of the queues everyone sees: unassigned, all, each team's."""
    async with db.reading() as conn:
        return {
            "unassigned": await queries.count_open(conn, unassigned=True),
            "all": await queries.count_open(conn),
            "teams": {t.id: await queries.count_open(conn, team=t.id) for t in settings.teams},
        }


async def open_count_of(db: Database, agent: str) -> int:
    async with db.reading() as conn:
        return await queries.count_open(conn, assignee=agent)


async def queue_page(
    db: Database,
    *,
    assignee: str | None,
    unassigned: bool,
    team: str | None,
    status: str | None,
    after: tuple[str, int] | None,
) -> dict[str, Any]:
    """A page of one queue, oldest waiting first, and where the next page starts."""
    found = await conversations(
        db,
        status=status,
        assignee=assignee,
        team=team,
        unassigned=unassigned,
        limit=PAGE_ROWS + 1,
        after=after,
    )
    last = found[PAGE_ROWS - 1] if len(found) > PAGE_ROWS else None
    return {
        "conversations": found[:PAGE_ROWS],
        "next": (last["last_message_at"], last["id"]) if last else None,
    }


Read = tuple[str, list[tuple[str, int]]]  # a message's text, and its files' names and sizes


async def show(
    db: Database, conversation_id: int, known: MutableMapping[int, Read] | None = None
) -> dict[str, Any]:
    """A conversation, its messages (each one's text and files, read once into `known`
    when given: a message never changes) and its timeline."""
    known = {} if known is None else known
    async with db.reading() as conn:
        row = await queries.conversation(conn, conversation_id)
        if row is None:
            raise Refused(f"There is no conversation {conversation_id}.")
        tags = await queries.tags_of(conn, [conversation_id])
        messages = await queries.messages_of(conn, conversation_id)
        events = await queries.events_of(conn, conversation_id)
        wanted = [m.id for m in messages if m.id not in known]
        heads = await queries.heads(conn, wanted, TEXT_PREFIX_BYTES)
        sizes = await queries.message_sizes(conn, wanted) if wanted else {}
        longer = [pk for pk, size in sizes.items() if size > TEXT_PREFIX_BYTES]
        whole = {}
        if longer:
            with conn.off_loop():  # whole messages, for their files' names and sizes
                found = await queries.messages(conn, longer)
            whole = {pk: stored.mail.raw for pk, stored in found.items()}
    # Parsing is off the loop: a conversation of long messages takes a while.
    known.update(
        await asyncio.to_thread(
            lambda: {
                pk: (_text(head), attachments(whole.get(pk, head))) for pk, head in heads.items()
            }
        )
    )
    view = _conversation(row, tags[conversation_id])
    view["messages"] = [
        {
            "message_id": m.message_id,
            "from": m.sender,
            "subject": m.subject,
            "received_at": m.received_at,
            "source": m.source,
            "text": text,
            "attachments": [{"filename": name, "size": size} for name, size in files],
        }
        for m in messages
        for text, files in [known.get(m.id, ("", []))]
    ]
    view["events"] = [
        {
            "at": e.at,
            "kind": e.kind,
            "actor": e.actor,
            "agent": e.agent,
            "previous_agent": e.previous_agent,
            "rule": e.rule,
            "detail": e.detail,
        }
        for e in events
    ]
    return view


def _text(head: bytes) -> str:
    """What a person reads of a message: its text, or HTML as text, up to TEXT_CHARS."""
    text, cut = message_text(head, TEXT_CHARS)
    text = text.strip("\n")
    if cut or len(head) == TEXT_PREFIX_BYTES:
        text += "\n[… the rest is in the stored message]"
    return text


async def shunted(db: Database) -> list[dict[str, Any]]:
    async with db.reading() as conn:
        rows = await queries.shunted(conn)
    return [
        {
            "id": r.id,
            "inbox": r.inbox,
            "source": r.source,
            "received_at": r.received_at,
            "error": r.error,
        }
        for r in rows
    ]


async def agents(db: Database, settings: Settings) -> list[dict[str, Any]]:
    async with db.reading() as conn:
        state = await queries.routing_state(conn)
        counts = await queries.open_counts(conn, [agent.id for agent in settings.agents])
    return [
        {
            "id": agent.id,
            "name": agent.name,
            "email": agent.email,
            "status": state.statuses.get(agent.id, "available"),
            "notify": agent.notify,
            "open": counts.get(agent.id, 0),
            "max_open": agent.max_open,
        }
        for agent in settings.agents
    ]


async def explain_route(
    db: Database | None,
    settings: Settings,
    raw: bytes,
    to: str | None,
    envelope_from: str | None = None,
    clock: Clock = utcnow,
) -> dict[str, Any]:
    """What intake would do with this message now, reading the store and writing nothing."""
    facts = extract(raw, envelope_from)
    inbox = _inbox_of(settings, facts.recipients, to)
    state, joins, joined, ours, stored = RoutingState(), None, None, False, False
    policy = Policy.from_settings(settings)
    if db is not None:
        async with db.reading() as conn:
            stored = await queries.is_stored(conn, inbox, dedup_key(raw))
            secret = await queries.get_meta(conn, alertmark.SECRET_KEY)
            if secret is not None:
                ours = alertmark.is_ours(bytes.fromhex(secret), facts.notification)
            joins = await find_conversation(
                conn, inbox, facts, clock(), settings.threading.subject_fallback_days
            )
            if joins is not None:
                joined = await queries.conversation(conn, joins)
            state = await queries.routing_state(conn, counted=policy.counted)
    delivery = Delivery(facts, inbox, (to,) if to else ())
    decision = route(delivery, policy, state)
    view: dict[str, Any] = {
        "inbox": inbox,
        "subject": facts.subject,
        "sender": facts.sender,
        "sender_source": _sender_source(raw, facts.sender, envelope_from),
        "envelope_from": envelope_from,
        "dropped": ours,
        "duplicate": stored,
        "joins": joins,
        "assignee": decision.assignee,
        "team": decision.team,
        "tags": list(decision.tags),
        "via": decision.via,
        "rule": decision.rule,
        "matched": [{"condition": c, "value": v} for c, v in decision.matched],
        "reason": decision.reason,
    }
    unrouted: dict[str, Any] = dict.fromkeys(("assignee", "team", "via", "rule"))
    unrouted.update(matched=[], tags=[])
    if settings.is_replies(inbox):
        view.update(unrouted, joins=None)
        view["reason"] = (
            "it is mail to the replies address: an agent's reply to an alert, never routed"
        )
    elif stored:
        view.update(unrouted)
        view["reason"] = f"it is stored for {inbox} already: a duplicate is not routed again"
    elif ours:
        view.update(unrouted)
        view["reason"] = "it is the gateway's own alert: dropped, never routed"
    elif joined is not None:
        view.update(unrouted, assignee=joined.assignee, team=joined.team)
        view["reason"] = (
            f"it replies to conversation {joins}, which keeps its assignee"
            f" ({joined.assignee or 'unassigned'}); replies are not routed again"
        )
    return view


def _sender_source(raw: bytes, sender: str | None, envelope_from: str | None) -> str | None:
    """Where routing's sender came from: "header" (From), "envelope" (where From fails), None."""
    if sender is None:
        return None
    if envelope_from and extract(raw).sender is None:
        return "envelope"
    return "header"


def _inbox_of(settings: Settings, recipients: tuple[str, ...], to: str | None) -> str:
    if to is not None:
        inbox = settings.inbox_for(to)
        if inbox is None:
            raise Refused(f"{to} is not an inbox address or alias here.")
        return inbox
    for address in recipients:
        inbox = settings.inbox_for(address)
        if inbox is not None:
            return inbox
    if not settings.inboxes:
        raise Refused("No inbox is configured.")
    return settings.inboxes[0].address
