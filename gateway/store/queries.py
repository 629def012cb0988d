"""Every read and write of the store, one function each. SQL lives here only.

Functions take the `Tx` of a `Database.transaction()` (writes) or `reading()`
(reads); none of them commits. What they read comes out as the frozen records
below, never as the driver's rows. A read-modify-write reads through a locking
read (`lock=True`: `Tx.for_update`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from gateway.errors import StatementFailed
from gateway.model import STATUSES, MailFacts, RawMail, RoutingState, Status
from gateway.store.db import Record, Tx


def _marks(values: Sequence[object]) -> str:
    """The `?` marks of an IN list; an empty one matches nothing (PostgreSQL has no `IN ()`)."""
    return ", ".join("?" * len(values)) if values else "NULL"


# --- meta ---------------------------------------------------------------------


async def get_meta(tx: Tx, key: str) -> str | None:
    row = await tx.one("SELECT value FROM meta WHERE key = ?", (key,))
    return None if row is None else str(row["value"])


async def put_meta_once(tx: Tx, key: str, value: str) -> str:
    """Store `value` unless the key has one; return the value that stands."""
    await tx.run(
        "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO NOTHING", (key, value)
    )
    stored = await get_meta(tx, key)
    assert stored is not None
    return stored


# --- messages -----------------------------------------------------------------


@dataclass(frozen=True)
class StoredMail:
    id: int
    mail: RawMail
    received_at: str
    state: str


# Raw mail up to this is copied in on the loop's thread: a trip to aiosqlite's and back
# would cost more (1 connection's p50 1.01 → 1.15 ms when every INSERT went).
INLINE_RAW_BYTES = 256 * 1024
_WITH_RAW = "SELECT m.*, r.raw FROM messages m JOIN raw_mail r ON r.message = m.id"


def _stored(row: Record) -> StoredMail:
    return StoredMail(
        id=row["id"],
        mail=RawMail(
            inbox=row["inbox"],
            raw=bytes(row["raw"]),
            source=row["source"],
            envelope_from=row["envelope_from"],
            envelope_to=tuple(json.loads(row["envelope_to"])),
            full_size=row["full_size"],
        ),
        received_at=row["received_at"],
        state=row["state"],
    )


async def insert_messages(
    tx: Tx, mails: Sequence[tuple[RawMail, str]], at: str
) -> list[int | None]:
    """Each (mail, dedup key)'s new id, or None when it is stored already (or earlier in
    `mails`). Two statements for them all, whatever their number: a group commit costs
    two round trips. The raw bytes have a table of their own (migration 0007)."""
    values = ", ".join(["(?, ?, ?, ?, ?, ?, ?, ?)"] * len(mails))
    params: list[object] = []
    for mail, key in mails:
        params += (mail.inbox, key, mail.source, mail.envelope_from)
        params += (json.dumps(list(mail.envelope_to)), len(mail.raw), mail.full_size, at)
    rows = await tx.all(
        "INSERT INTO messages (inbox, dedup_key, source, envelope_from, envelope_to, size,"
        f" full_size, received_at) VALUES {values} ON CONFLICT (inbox, dedup_key) DO NOTHING"
        " RETURNING id, inbox, dedup_key",
        params,
    )
    new = {(row["inbox"], row["dedup_key"]): int(row["id"]) for row in rows}
    if new:
        tx.told.add("message")
    # RETURNING's order is not promised; a key given twice belongs to its first mail. The
    # keys come back as the store keeps text.
    text = tx.stored_text
    ids = [new.pop((text(mail.inbox), text(key)), None) for mail, key in mails]
    if new:  # a row stored that no mail claims: its raw mail would be lost, so nothing is
        raise StatementFailed(f"stored messages matched to no mail: {sorted(new.values())}")
    stored = [(pk, mail.raw) for pk, (mail, _) in zip(ids, mails, strict=True) if pk is not None]
    if not stored:
        return ids
    insert = f"INSERT INTO raw_mail (message, raw) VALUES {', '.join(['(?, ?)'] * len(stored))}"
    args = [value for pair in stored for value in pair]
    if sum(len(raw) for _, raw in stored) <= INLINE_RAW_BYTES:
        await tx.run(insert, args)
    else:
        with tx.off_loop():  # megabytes: copying them in would hold the loop meanwhile
            await tx.run(insert, args)
    return ids


async def is_stored(tx: Tx, inbox: str, dedup_key: str) -> bool:
    row = await tx.one(
        "SELECT 1 FROM messages WHERE inbox = ? AND dedup_key = ?", (inbox, dedup_key)
    )
    return row is not None


async def pending_messages(tx: Tx, limit: int, max_bytes: int) -> list[StoredMail]:
    """The oldest pending messages first (intake keeps arrival order): at most `limit`,
    and no more raw bytes than `max_bytes` unless the first alone is larger."""
    sizes = await tx.all(
        "SELECT id, size FROM messages WHERE state = 'pending' ORDER BY id LIMIT ?",
        (limit,),
    )
    ids: list[int] = []
    total = 0
    for row in sizes:
        total += int(row["size"])
        if ids and total > max_bytes:
            break
        ids.append(int(row["id"]))
    if not ids:
        return []
    rows = await tx.all(
        f"{_WITH_RAW} WHERE m.id IN ({', '.join('?' * len(ids))}) ORDER BY m.id",
        ids,
    )
    return [_stored(row) for row in rows]


async def message(tx: Tx, message_pk: int) -> StoredMail | None:
    row = await tx.one(f"{_WITH_RAW} WHERE m.id = ?", (message_pk,))
    return None if row is None else _stored(row)


async def messages(tx: Tx, message_pks: Sequence[int]) -> dict[int, StoredMail]:
    """The messages of these ids that are stored, by id."""
    marks = _marks(message_pks)
    rows = await tx.all(f"{_WITH_RAW} WHERE m.id IN ({marks})", message_pks)
    return {row["id"]: _stored(row) for row in rows}


async def message_sizes(tx: Tx, message_pks: Sequence[int]) -> dict[int, int]:
    """The octets stored of each message (its raw mail's length)."""
    marks = _marks(message_pks)
    rows = await tx.all(f"SELECT id, size FROM messages WHERE id IN ({marks})", message_pks)
    return {row["id"]: row["size"] for row in rows}


@dataclass(frozen=True)
class Outcome:
    state: str  # pending, routed, dropped, shunted
    error: str | None
    conversation_id: int | None


async def message_outcome(tx: Tx, message_pk: int) -> Outcome:
    row = await tx.one(
        "SELECT state, error, conversation_id FROM messages WHERE id = ?", (message_pk,)
    )
    assert row is not None
    return Outcome(*row)


async def claim_pending(tx: Tx, message_pk: int) -> bool:
    """True when the message is still pending (no other intake took it meanwhile); read
    with a lock, as intake then writes what became of it."""
    return await message_state(tx, message_pk, lock=True) == "pending"


async def finish_message(
    tx: Tx,
    message_pk: int,
    state: str,
    facts: MailFacts,
    conversation_id: int | None,
    error: str | None = None,
) -> None:
    await tx.run(
        "UPDATE messages SET state = ?, conversation_id = ?, message_id = ?, sender = ?,"
        " subject = ?, error = ? WHERE id = ?",
        (state, conversation_id, facts.message_id, facts.sender, facts.subject, error, message_pk),
    )


async def shunt(tx: Tx, message_pk: int, error: str) -> None:
    await tx.run(
        "UPDATE messages SET state = 'shunted', error = ? WHERE id = ?", (error, message_pk)
    )


async def unshunt(tx: Tx, message_pk: int) -> bool:
    changed = await tx.run(
        "UPDATE messages SET state = 'pending' WHERE id = ? AND state = 'shunted'", (message_pk,)
    )
    # No other process is told: whoever put it back runs intake on it next (`gateway retry`),
    # and a daemon's sweep takes it should that process die first.
    return changed == 1


@dataclass(frozen=True)
class Shunted:
    id: int
    inbox: str
    source: str
    received_at: str
    error: str | None
    envelope_from: str | None


async def shunted(tx: Tx) -> list[Shunted]:
    rows = await tx.all(
        "SELECT id, inbox, source, received_at, error, envelope_from FROM messages"
        " WHERE state = 'shunted' ORDER BY id",
    )
    return [Shunted(*row) for row in rows]


async def conversation_of_message_ids(tx: Tx, inbox: str, message_ids: Sequence[str]) -> int | None:
    """The conversation of the most recent stored message named in `message_ids`."""
    if not message_ids:
        return None
    marks = _marks(message_ids)
    row = await tx.one(
        f"SELECT conversation_id FROM messages WHERE inbox = ? AND message_id IN ({marks})"
        " AND conversation_id IS NOT NULL ORDER BY id DESC LIMIT 1",
        (inbox, *message_ids),
    )
    return None if row is None else int(row["conversation_id"])


@dataclass(frozen=True)
class MessageLine:
    """A message as a conversation's timeline lists it."""

    id: int
    message_id: str | None
    sender: str | None
    subject: str | None
    received_at: str
    source: str


async def messages_of(tx: Tx, conversation_id: int) -> list[MessageLine]:
    rows = await tx.all(
        "SELECT id, message_id, sender, subject, received_at, source FROM messages"
        " WHERE conversation_id = ? ORDER BY id",
        (conversation_id,),
    )
    return [MessageLine(*row) for row in rows]


async def store_answer(
    tx: Tx,
    *,
    inbox: str,
    conversation_id: int,
    message_id: str,
    raw: bytes,
    sender: str,
    recipient: str,
    subject: str,
    at: str,
) -> int:
    """An agent's answer, exactly as it is sent, as a message of its conversation: the
    customer's reply to it threads by its Message-ID."""
    row = await tx.one(
        "INSERT INTO messages (inbox, dedup_key, source, envelope_from, envelope_to, size,"
        " received_at, state, conversation_id, message_id, sender, subject)"
        " VALUES (?, ?, 'agent', ?, ?, ?, ?, 'routed', ?, ?, ?, ?) RETURNING id",
        (
            inbox,
            # Not the Message-ID: a customer could send one first and have the answer
            # refused as a duplicate. Accept's keys never hold white space; this one does.
            f"answer {message_id}",
            sender,
            json.dumps([recipient]),
            len(raw),
            at,
            conversation_id,
            message_id,
            sender,
            subject,
        ),
    )
    assert row is not None
    message_pk = int(row["id"])
    await tx.run("INSERT INTO raw_mail (message, raw) VALUES (?, ?)", (message_pk, raw))
    return message_pk


async def heads(tx: Tx, message_pks: Sequence[int], size: int) -> dict[int, bytes]:
    """The first `size` octets of each message's raw mail: enough to show its text."""
    if not message_pks:
        return {}
    marks = _marks(message_pks)
    rows = await tx.all(
        f"SELECT message, substr(raw, 1, ?) AS head FROM raw_mail WHERE message IN ({marks})",
        (size, *message_pks),
    )
    return {int(row["message"]): bytes(row["head"]) for row in rows}


async def message_state(tx: Tx, message_pk: int, *, lock: bool = False) -> str | None:
    """pending, routed, dropped or shunted; None when there is no such message."""
    row = await tx.one(
        f"SELECT state FROM messages WHERE id = ?{tx.for_update if lock else ''}", (message_pk,)
    )
    return None if row is None else str(row["state"])


# --- conversations ------------------------------------------------------------

CONVERSATION_STATUSES = ("open", "closed")
TAGS_BATCH = 500  # conversations per tags query, far below any bound-parameter limit


@dataclass(frozen=True)
class Conversation:
    id: int
    inbox: str
    customer: str | None
    subject: str
    thread_subject: str
    assignee: str | None
    team: str | None
    status: str  # open, closed
    created_at: str
    last_message_at: str
    message_count: int


_CONVERSATION = (
    "SELECT id, inbox, customer, subject, thread_subject, assignee, team, status, created_at,"
    " last_message_at, message_count FROM conversations"
)


async def conversation(tx: Tx, conversation_id: int, *, lock: bool = False) -> Conversation | None:
    """The conversation; `lock` when the caller changes it from what it read."""
    row = await tx.one(
        f"{_CONVERSATION} WHERE id = ?{tx.for_update if lock else ''}", (conversation_id,)
    )
    return None if row is None else Conversation(*row)


async def conversations(tx: Tx, conversation_ids: Sequence[int]) -> dict[int, Conversation]:
    """The conversations of these ids that exist, by id."""
    marks = _marks(conversation_ids)
    rows = await tx.all(f"{_CONVERSATION} WHERE id IN ({marks})", conversation_ids)
    return {row["id"]: Conversation(*row) for row in rows}


async def conversation_by_subject(
    tx: Tx, inbox: str, customer: str, thread_subject: str, since: str
) -> int | None:
    row = await tx.one(
        "SELECT id FROM conversations WHERE inbox = ? AND customer = ? AND thread_subject = ?"
        " AND last_message_at >= ? ORDER BY last_message_at DESC LIMIT 1",
        (inbox, customer, thread_subject, since),
    )
    return None if row is None else int(row["id"])


async def create_conversation(
    tx: Tx,
    *,
    inbox: str,
    customer: str | None,
    subject: str,
    thread_subject: str,
    team: str | None,
    at: str,
    queued_for: str | None = None,
) -> int:
    """A new conversation, unassigned: an assignee comes with `assignment.record`; queued
    for a rotation (`queued_for`) when nobody of it could take it."""
    row = await tx.one(
        "INSERT INTO conversations (inbox, customer, subject, thread_subject, team,"
        " created_at, last_message_at, message_count, queued_for, queued_at)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, 1, ?, ?) RETURNING id",
        (inbox, customer, subject, thread_subject, team, at, at, queued_for, queued_for and at),
    )
    assert row is not None
    return int(row["id"])


async def add_message_to(tx: Tx, conversation_id: int, at: str) -> None:
    await tx.run(
        "UPDATE conversations SET message_count = message_count + 1,"
        # CASE, not max(): PostgreSQL's max() is an aggregate only.
        " last_message_at = CASE WHEN last_message_at > ? THEN last_message_at ELSE ? END"
        " WHERE id = ?",
        (at, at, conversation_id),
    )


async def set_assignee(tx: Tx, conversation_id: int, agent: str | None) -> None:
    """The assignee from now on; a conversation given to somebody waits in no queue."""
    await tx.run(
        "UPDATE conversations SET assignee = ?,"
        " queued_for = CASE WHEN CAST(? AS TEXT) IS NULL THEN queued_for END,"
        " queued_at = CASE WHEN CAST(? AS TEXT) IS NULL THEN queued_at END WHERE id = ?",
        (agent, agent, agent, conversation_id),
    )


async def oldest_waiting(tx: Tx, queues: Sequence[str]) -> tuple[int, str] | None:
    """The open conversation that has waited longest in any of `queues`, and since when:
    one index seek a queue, however many wait."""
    found = []
    for queue in queues:
        row = await tx.one(
            "SELECT id, queued_at FROM conversations WHERE queued_for = ?"
            " ORDER BY queued_at, id LIMIT 1",
            (queue,),
        )
        if row is not None:
            found.append((row["queued_at"], row["id"]))
    if not found:
        return None
    queued_at, conversation_id = min(found)
    return int(conversation_id), str(queued_at)


async def any_waiting(tx: Tx) -> bool:
    """Whether any conversation waits in a queue."""
    return (
        await tx.one("SELECT 1 FROM conversations WHERE queued_for IS NOT NULL LIMIT 1") is not None
    )


async def queue(tx: Tx, conversation_id: int, queue_key: str, at: str) -> None:
    """Put an unassigned conversation in a rotation's queue, waiting since `at`."""
    await tx.run(
        "UPDATE conversations SET queued_for = ?, queued_at = ? WHERE id = ?",
        (queue_key, at, conversation_id),
    )


async def unqueue(tx: Tx, conversation_id: int) -> None:
    """Take a conversation out of its queue (closed, it waits for nobody)."""
    await tx.run(
        "UPDATE conversations SET queued_for = NULL, queued_at = NULL WHERE id = ?",
        (conversation_id,),
    )


async def latest_message(tx: Tx, conversation_id: int) -> int:
    """The newest message the customer sent in a conversation (not an agent's answer): the
    one an alert attaches, the one an answer replies to."""
    row = await tx.one(
        "SELECT max(id) AS id FROM messages WHERE conversation_id = ? AND source <> 'agent'",
        (conversation_id,),
    )
    assert row is not None and row["id"] is not None, "a conversation has a message"
    return int(row["id"])


async def set_conversation_status(tx: Tx, conversation_id: int, status: str) -> None:
    await tx.run("UPDATE conversations SET status = ? WHERE id = ?", (status, conversation_id))


async def add_tags(tx: Tx, conversation_id: int, tags: Iterable[str]) -> None:
    await tx.run_many(
        "INSERT INTO tags (conversation_id, tag) VALUES (?, ?) ON CONFLICT DO NOTHING",
        [(conversation_id, tag) for tag in tags],
    )


async def tags_of(tx: Tx, conversation_ids: Sequence[int]) -> dict[int, list[str]]:
    """Each conversation's tags, in the order they were given.

    Asked in batches: one IN list for a long unpaged list would pass SQLite's
    limit on bound parameters (32,766 by default; 999 before SQLite 3.32).
    """
    found: dict[int, list[str]] = {cid: [] for cid in conversation_ids}
    for start in range(0, len(conversation_ids), TAGS_BATCH):
        batch = tuple(conversation_ids[start : start + TAGS_BATCH])
        marks = _marks(batch)
        rows = await tx.all(
            f"SELECT conversation_id, tag FROM tags WHERE conversation_id IN ({marks})"
            " ORDER BY conversation_id, rowid",
            batch,
        )
        for row in rows:
            found[row["conversation_id"]].append(row["tag"])
    return found


async def list_conversations(
    tx: Tx,
    *,
    status: str | None,
    assignee: str | None = None,
    team: str | None = None,
    unassigned: bool = False,
    limit: int | None = None,
    after: tuple[str, int] | None = None,
) -> list[Conversation]:
    """Oldest waiting first: the conversation whose last message is oldest; those
    after the (last_message_at, id) `after` when given (the next page).

    Each queue is a walk along one (…, status, last_message_at) index, which
    stops after `limit` rows whatever the store holds. Without a status, one
    walk per status, merged (UNION ALL + ORDER BY): sorting every conversation
    to find the oldest few would grow with the store.
    """
    where, args = _queue(assignee, team, unassigned)
    where.insert(0, "status = ?")
    if after is not None:
        where.append("(last_message_at, id) > (?, ?)")
        args.extend(after)
    walk = f"{_CONVERSATION} WHERE {' AND '.join(where)}"
    statuses = CONVERSATION_STATUSES if status is None else (status,)
    sql = " UNION ALL ".join([walk] * len(statuses)) + " ORDER BY last_message_at, id"
    params: list[object] = [value for each in statuses for value in (each, *args)]
    if limit is not None:
        sql += " LIMIT ?"
        params.append(limit)
    return [Conversation(*row) for row in await tx.all(sql, params)]


def _queue(
    assignee: str | None, team: str | None, unassigned: bool
) -> tuple[list[str], list[object]]:
    """The conditions (and their values) that make a queue of conversations."""
    where: list[str] = []
    args: list[object] = []
    if assignee is not None:
        where.append("assignee = ?")
        args.append(assignee)
    if team is not None:
        where.append("team = ?")
        args.append(team)
    if unassigned:
        where.append("assignee IS NULL")
    return where, args


async def count_open(
    tx: Tx, *, assignee: str | None = None, team: str | None = None, unassigned: bool = False
) -> int:
    """Open conversations of one queue, counted when asked, never kept (so never adrift):
    a walk of the queue's index over its open conversations alone."""
    where, args = _queue(assignee, team, unassigned)
    where.insert(0, "status = 'open'")
    row = await tx.one(f"SELECT count(*) FROM conversations WHERE {' AND '.join(where)}", args)
    return int(row[0]) if row is not None else 0


async def data_version(tx: Tx) -> str:
    """A stamp that changes with anything a person sees: every change of a conversation
    writes an event; an availability change moves the latest change's time, and the
    number away and dnd (a clock set back cannot hide one). Compared for equality only."""
    row = await tx.one(
        "SELECT (SELECT coalesce(max(id), 0) FROM events),"
        " coalesce(max(changed_at), ''), count(*),"
        " coalesce(sum(CASE status WHEN 'away' THEN 1 ELSE 0 END), 0),"
        " coalesce(sum(CASE status WHEN 'dnd' THEN 1 ELSE 0 END), 0)"
        " FROM agent_status"
    )
    assert row is not None
    return ".".join(str(value) for value in row)


# --- events -------------------------------------------------------------------


async def add_event(
    tx: Tx,
    conversation_id: int,
    at: str,
    kind: str,
    actor: str,
    *,
    agent: str | None = None,
    previous_agent: str | None = None,
    rule: str | None = None,
    detail: dict[str, Any] | None = None,
) -> int:
    row = await tx.one(
        "INSERT INTO events (conversation_id, at, kind, actor, agent, previous_agent, rule,"
        " detail) VALUES (?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
        (
            conversation_id,
            at,
            kind,
            actor,
            agent,
            previous_agent,
            rule,
            json.dumps(detail or {}, ensure_ascii=False),
        ),
    )
    assert row is not None
    tx.written.append(("event", int(row["id"])))
    tx.told.add("event")
    return int(row["id"])


async def set_event_detail(tx: Tx, event_id: int, detail: dict[str, Any]) -> None:
    """An event's detail once what it names exists (an answer's Message-ID, from its id)."""
    await tx.run(
        "UPDATE events SET detail = ? WHERE id = ?",
        (json.dumps(detail, ensure_ascii=False), event_id),
    )


@dataclass(frozen=True)
class Event:
    id: int
    conversation_id: int
    at: str
    kind: str
    actor: str
    agent: str | None
    previous_agent: str | None
    rule: str | None
    detail: dict[str, Any]


async def events_of(tx: Tx, conversation_id: int) -> list[Event]:
    rows = await tx.all(
        "SELECT id, conversation_id, at, kind, actor, agent, previous_agent, rule, detail"
        " FROM events WHERE conversation_id = ? ORDER BY id",
        (conversation_id,),
    )
    return [
        Event(
            id=row["id"],
            conversation_id=row["conversation_id"],
            at=row["at"],
            kind=row["kind"],
            actor=row["actor"],
            agent=row["agent"],
            previous_agent=row["previous_agent"],
            rule=row["rule"],
            detail=json.loads(row["detail"]),
        )
        for row in rows
    ]


# --- agents and rotations -----------------------------------------------------


async def routing_state(tx: Tx, *, lock: bool = False, counted: Sequence[str] = ()) -> RoutingState:
    """Agents' availability, each rotation's last agent and the open conversations of the
    `counted` agents (those with a limit); `lock` when a turn may be taken (the pointer
    moves in the same transaction: two messages never take one turn)."""
    statuses: dict[str, Status] = {}
    for row in await tx.all("SELECT agent, status FROM agent_status"):
        if row["status"] in STATUSES:
            statuses[row["agent"]] = row["status"]
    rotations = await tx.all(
        f"SELECT key, last_agent FROM rotations{tx.for_update if lock else ''}"
    )
    assigned = await tx.all("SELECT agent, last_at FROM agent_assigned")
    return RoutingState(
        statuses=statuses,
        last_served={row["key"]: row["last_agent"] for row in rotations},
        open=await open_counts(tx, counted),
        last_assigned={row["agent"]: row["last_at"] for row in assigned},
    )


async def note_assigned(tx: Tx, agent: str, at: str) -> None:
    """`agent` was given a conversation at `at`."""
    await tx.run(
        "INSERT INTO agent_assigned (agent, last_at) VALUES (?, ?)"
        " ON CONFLICT (agent) DO UPDATE SET last_at = excluded.last_at",
        (agent, at),
    )


async def set_agent_status(tx: Tx, agent: str, status: str, at: str) -> None:
    tx.told.add("status")
    await tx.run(
        "INSERT INTO agent_status (agent, status, changed_at) VALUES (?, ?, ?)"
        " ON CONFLICT (agent) DO UPDATE SET status = excluded.status,"
        " changed_at = excluded.changed_at",
        (agent, status, at),
    )


async def open_counts(tx: Tx, agents: Sequence[str]) -> dict[str, int]:
    """Open conversations of each of `agents` (absent: none).

    Named agents let the count walk only the (assignee, status) index, without
    reading a row; it still grows with the open conversations, since it counts them.
    """
    if not agents:
        return {}
    marks = _marks(agents)
    rows = await tx.all(
        f"SELECT assignee, count(*) AS n FROM conversations WHERE assignee IN ({marks})"
        " AND status = 'open' GROUP BY assignee",
        tuple(agents),
    )
    return {row["assignee"]: row["n"] for row in rows}


async def set_rotation(tx: Tx, key: str, agent: str) -> None:
    await tx.run(
        "INSERT INTO rotations (key, last_agent) VALUES (?, ?)"
        " ON CONFLICT (key) DO UPDATE SET last_agent = excluded.last_agent",
        (key, agent),
    )


# --- connected mailboxes ------------------------------------------------------


@dataclass(frozen=True)
class Cursor:
    uidvalidity: int
    last_uid: int
    first_connected_at: str
    # While a renumbered folder is scanned again: the UIDNEXT at the change. Below it,
    # mail dated before the first contact is the old mail; what comes after is new.
    rescan_below_uid: int | None = None

    def moved_to(self, uid: int) -> Cursor:
        """The cursor once `uid` is taken; the rescan ends when the old mail is all seen."""
        last = max(uid, self.last_uid)
        rescan = self.rescan_below_uid
        return Cursor(
            self.uidvalidity,
            last,
            self.first_connected_at,
            rescan if rescan is not None and last < rescan - 1 else None,
        )


async def imap_cursor(tx: Tx, inbox: str, folder: str) -> Cursor | None:
    row = await tx.one(
        "SELECT uidvalidity, last_uid, first_connected_at, rescan_below_uid FROM imap_cursors"
        " WHERE inbox = ? AND folder = ?",
        (inbox, folder),
    )
    return None if row is None else Cursor(row[0], row[1], row[2], row[3])


async def set_imap_cursor(tx: Tx, inbox: str, folder: str, cursor: Cursor) -> None:
    await tx.run(
        "INSERT INTO imap_cursors"
        " (inbox, folder, uidvalidity, last_uid, first_connected_at, rescan_below_uid)"
        " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (inbox, folder) DO UPDATE SET"
        " uidvalidity = excluded.uidvalidity, last_uid = excluded.last_uid,"
        " rescan_below_uid = excluded.rescan_below_uid",
        (
            inbox,
            folder,
            cursor.uidvalidity,
            cursor.last_uid,
            cursor.first_connected_at,
            cursor.rescan_below_uid,
        ),
    )


async def add_imap_source(
    tx: Tx, inbox: str, folder: str, uidvalidity: int, uid: int, key: str
) -> None:
    await tx.run(
        "INSERT INTO imap_sources (inbox, folder, uidvalidity, uid, dedup_key)"
        " VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
        (inbox, folder, uidvalidity, uid, key),
    )


@dataclass(frozen=True)
class ImapCopy:
    """Where a copy of a message sits in a connected mailbox."""

    inbox: str
    folder: str
    uidvalidity: int
    uid: int


async def imap_copies(tx: Tx, conversation_id: int) -> list[ImapCopy]:
    """Every IMAP copy of the conversation's messages."""
    rows = await tx.all(
        "SELECT s.inbox, s.folder, s.uidvalidity, s.uid FROM imap_sources s"
        " JOIN messages m ON m.inbox = s.inbox AND m.dedup_key = s.dedup_key"
        " WHERE m.conversation_id = ? ORDER BY s.inbox, s.folder, s.uid",
        (conversation_id,),
    )
    return [ImapCopy(*row) for row in rows]


async def conversation_of_key(tx: Tx, inbox: str, key: str) -> int | None:
    row = await tx.one(
        "SELECT conversation_id FROM messages WHERE inbox = ? AND dedup_key = ?",
        (inbox, key),
    )
    return None if row is None or row[0] is None else int(row[0])


async def event_issued(tx: Tx, event_id: int) -> tuple[int, str] | None:
    """The conversation an event is of, and when it happened (None: no such event)."""
    row = await tx.one("SELECT conversation_id, at FROM events WHERE id = ?", (event_id,))
    return None if row is None else (int(row["conversation_id"]), str(row["at"]))


async def latest_event(tx: Tx, conversation_id: int) -> int:
    row = await tx.one("SELECT max(id) FROM events WHERE conversation_id = ?", (conversation_id,))
    assert row is not None and row[0] is not None
    return int(row[0])


# --- outbox -------------------------------------------------------------------


async def enqueue(
    tx: Tx,
    kind: str,
    event_id: int | None,
    conversation_id: int | None,
    payload: dict[str, Any],
    at: str,
) -> None:
    """Queue a side effect; queued again for the same event, it is due again.

    A keywords job keyed on an event may have run already, or be running, when
    a new copy of the mail appears: pending again, it runs once more.
    """
    row = await tx.one(
        "INSERT INTO outbox (kind, event_id, conversation_id, payload, created_at, due_at)"
        " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (kind, event_id) DO UPDATE SET"
        " state = 'pending', due_at = excluded.due_at, attempts = 0, leased_by = NULL,"
        " lease_until = NULL"
        " WHERE outbox.kind = 'keywords' RETURNING id",
        (kind, event_id, conversation_id, json.dumps(payload, ensure_ascii=False), at, at),
    )
    if row is not None:
        tx.written.append(("outbox", int(row["id"])))
        tx.told.add("outbox")


async def count_sender_alert(tx: Tx, sender: str, at: str, since: str) -> int:
    """Count one more alert caused by `sender` in its hour (a new hour from `at` once
    `since` has passed its window's start); the count, this one included."""
    row = await tx.one(
        "INSERT INTO alert_senders (sender, window_start, alerts) VALUES (?, ?, 1)"
        # Named with the table: PostgreSQL would not tell them from excluded's.
        " ON CONFLICT (sender) DO UPDATE SET alerts = CASE WHEN"
        " alert_senders.window_start > ? THEN alert_senders.alerts + 1 ELSE 1 END,"
        " window_start = CASE WHEN alert_senders.window_start > ?"
        " THEN alert_senders.window_start ELSE ? END"
        " RETURNING alerts",
        (sender, at, since, since, at),
    )
    assert row is not None
    return int(row[0])


async def prune_sender_alerts(tx: Tx, since: str) -> int:
    """Drop the counts whose window began at or before `since` (it is over); how many."""
    changed = await tx.run("DELETE FROM alert_senders WHERE window_start <= ?", (since,))
    return changed


def _unleased(tx: Tx) -> str:
    """A row nobody holds: a lease is judged by the store's clock, which every process on
    the database shares."""
    return f"(lease_until IS NULL OR lease_until <= {tx.clock()})"


@dataclass(frozen=True)
class OutboxRow:
    """A side effect waiting to be carried out: an alert, or a keywords job."""

    id: int
    kind: str  # alert, keywords, answer, notice
    event_id: int | None  # None: a notice about mail that named no conversation
    conversation_id: int | None
    payload: dict[str, Any]
    created_at: str
    attempts: int
    due_at: str


_OUTBOX_ROW = "id, kind, event_id, conversation_id, payload, created_at, attempts, due_at"


def _outbox_row(row: Record) -> OutboxRow:
    return OutboxRow(
        id=row["id"],
        kind=row["kind"],
        event_id=row["event_id"],
        conversation_id=row["conversation_id"],
        payload=json.loads(row["payload"]),
        created_at=row["created_at"],
        attempts=row["attempts"],
        due_at=row["due_at"],
    )


def _kinds(kinds: Sequence[str]) -> str:
    return f"kind IN ({_marks(kinds)})"


async def claim_due(
    tx: Tx, now: str, kinds: Sequence[str], holder: str, seconds: float, limit: int
) -> list[OutboxRow]:
    """Lease to `holder`, for `seconds` of the store's clock, up to `limit` pending rows of
    `kinds` due at `now` that nobody holds: half the oldest due, half the newest (a queue
    read from both ends, so that what was queued last waits for one batch, not for a
    backlog). In the order they came due. Rows another process is claiming are passed over."""
    due = f"state = 'pending' AND due_at <= ? AND {_kinds(kinds)} AND {_unleased(tx)}"
    oldest, newest = (limit + 1) // 2, limit // 2
    rows = await tx.all(
        f"UPDATE outbox SET leased_by = ?, lease_until = {tx.clock(later=True)} WHERE id IN ("
        f" SELECT id FROM (SELECT id FROM outbox WHERE {due} ORDER BY due_at, id LIMIT ?"
        f"{tx.skip_locked}) AS oldest UNION SELECT id FROM (SELECT id FROM outbox WHERE {due}"
        f" ORDER BY id DESC LIMIT ?{tx.skip_locked}) AS newest) RETURNING {_OUTBOX_ROW}",
        (holder, float(seconds), now, *kinds, oldest, now, *kinds, newest),
    )
    return sorted(map(_outbox_row, rows), key=lambda row: (row.due_at, row.id))


async def defer_alerts(
    tx: Tx, now: str, until: str, dead_before: str, error: str, limit: int
) -> tuple[int, list[OutboxRow]]:
    """Up to `limit` alerts due at `now` that nobody holds made due at `until`, with `error`,
    none of them attempted; those created before `dead_before` given up (dead). The ones
    that had not failed nor been deferred before, and the ones given up: each owes the
    timeline a word. How many were deferred (0: nothing more is due), and those."""
    rows = await tx.all(
        f"SELECT {_OUTBOX_ROW}, last_error IS NULL AS fresh FROM outbox"
        f" WHERE state = 'pending' AND due_at <= ? AND kind = 'alert' AND {_unleased(tx)}"
        " ORDER BY due_at, id LIMIT ?",
        (now, limit),
    )
    await tx.run_many(
        "UPDATE outbox SET due_at = ?, last_error = ?,"
        " state = CASE WHEN created_at < ? THEN 'dead' ELSE state END WHERE id = ?",
        [(until, error, dead_before, row["id"]) for row in rows],
    )
    owed = [_outbox_row(row) for row in rows if row["fresh"] or row["created_at"] < dead_before]
    return len(rows), owed


async def next_due(tx: Tx) -> str | None:
    """When the next row nobody holds is due (a held one is looked at again at the next poll)."""
    row = await tx.one(
        f"SELECT min(due_at) AS due FROM outbox WHERE state = 'pending' AND {_unleased(tx)}"
    )
    return None if row is None or row["due"] is None else str(row["due"])


async def release(tx: Tx, ids: Sequence[int], holder: str) -> None:
    """Let go of rows `holder` leased and did not attempt: due as they were, to anyone."""
    await tx.run_many(
        "UPDATE outbox SET leased_by = NULL, lease_until = NULL WHERE id = ? AND leased_by = ?",
        [(outbox_id, holder) for outbox_id in ids],
    )


async def release_leases(tx: Tx, now: str) -> int:
    """Every leased row due now: for when their holders are known to be dead. How many."""
    changed = await tx.run(
        "UPDATE outbox SET due_at = ?, leased_by = NULL, lease_until = NULL"
        " WHERE state = 'pending' AND leased_by IS NOT NULL",
        (now,),
    )
    return changed


async def lease_holders(tx: Tx) -> list[str]:
    """Who holds pending rows now (`Outbox` holders: "HOST:PID/TOKEN")."""
    rows = await tx.all(
        "SELECT DISTINCT leased_by FROM outbox WHERE state = 'pending' AND leased_by IS NOT NULL"
    )
    return [str(row["leased_by"]) for row in rows]


async def release_held_by(tx: Tx, holders: Sequence[str], now: str) -> int:
    """The rows `holders` lease, due at `now` and to anyone: their processes are dead."""
    changed = await tx.run(
        "UPDATE outbox SET due_at = ?, leased_by = NULL, lease_until = NULL"
        f" WHERE state = 'pending' AND leased_by IN ({_marks(holders)})",
        (now, *holders),
    )
    return changed


async def outbox_done(tx: Tx, outbox_id: int, holder: str) -> bool:
    """Done, if `holder` still holds the row; whether it did (not when its lease passed to
    another attempt, or the row was queued again, while it ran)."""
    changed = await tx.run(
        "UPDATE outbox SET state = 'done', attempts = attempts + 1, last_error = NULL,"
        " leased_by = NULL, lease_until = NULL WHERE id = ? AND leased_by = ?",
        (outbox_id, holder),
    )
    return changed == 1


async def outbox_failed(
    tx: Tx, outbox_id: int, holder: str, error: str, retry_at: str | None
) -> bool:
    """Count the failed attempt; retry at `retry_at`, or give up (dead) when it is None.
    Only if `holder` still holds the row; whether it did."""
    changed = await tx.run(
        "UPDATE outbox SET state = CASE WHEN CAST(? AS TEXT) IS NULL THEN 'dead' ELSE state END,"
        " due_at = coalesce(?, due_at), attempts = attempts + 1, last_error = ?,"
        " leased_by = NULL, lease_until = NULL WHERE id = ? AND leased_by = ?",
        (retry_at, retry_at, error, outbox_id, holder),
    )
    return changed == 1


# --- the web inbox's accounts -------------------------------------------------


async def set_password(tx: Tx, agent: str, hashed: str, at: str) -> None:
    await tx.run(
        "INSERT INTO web_passwords (agent, hash, set_at) VALUES (?, ?, ?)"
        " ON CONFLICT (agent) DO UPDATE SET hash = excluded.hash, set_at = excluded.set_at",
        (agent, hashed, at),
    )


async def password_of(tx: Tx, agent: str) -> str | None:
    row = await tx.one("SELECT hash FROM web_passwords WHERE agent = ?", (agent,))
    return None if row is None else str(row["hash"])


@dataclass(frozen=True)
class WebSession:
    agent: str
    csrf: str


async def add_session(tx: Tx, key: str, agent: str, csrf: str, at: str, expires_at: str) -> None:
    await tx.run(
        "INSERT INTO web_sessions (id, agent, csrf, created_at, expires_at) VALUES (?, ?, ?, ?, ?)",
        (key, agent, csrf, at, expires_at),
    )


async def web_session(tx: Tx, key: str, now: str) -> WebSession | None:
    """The session of this key, unless it has ended."""
    row = await tx.one(
        "SELECT agent, csrf FROM web_sessions WHERE id = ? AND expires_at > ?", (key, now)
    )
    return None if row is None else WebSession(row["agent"], row["csrf"])


async def end_session(tx: Tx, key: str) -> None:
    await tx.run("DELETE FROM web_sessions WHERE id = ?", (key,))


async def end_sessions(tx: Tx, agent: str | None, now: str) -> int:
    """End the agent's sessions (None: nobody's) and any that ran out; how many of
    theirs were live."""
    await tx.run("DELETE FROM web_sessions WHERE expires_at <= ?", (now,))
    if agent is None:
        return 0
    return await tx.run("DELETE FROM web_sessions WHERE agent = ?", (agent,))
