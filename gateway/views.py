"""Read views for the command line, in the JSON shapes of DESIGN §8."""

from __future__ import annotations

import json
from typing import Any

from gateway.errors import Refused
from gateway.store import queries
from gateway.store.db import Database


def _conversation(row: queries.Row, tags: list[str]) -> dict[str, Any]:
    return {
        "id": row["id"],
        "subject": row["subject"],
        "customer": row["customer"],
        "inbox": row["inbox"],
        "assignee": row["assignee"],
        "team": row["team"],
        "status": row["status"],
        "tags": tags,
        "created_at": row["created_at"],
        "last_message_at": row["last_message_at"],
        "message_count": row["message_count"],
    }


async def conversations(
    db: Database,
    *,
    status: str | None,
    assignee: str | None = None,
    team: str | None = None,
    unassigned: bool = False,
) -> list[dict[str, Any]]:
    async with db.reading() as conn:
        rows = await queries.list_conversations(
            conn, status=status, assignee=assignee, team=team, unassigned=unassigned
        )
        tags = await queries.tags_of(conn, [row["id"] for row in rows])
    return [_conversation(row, tags[row["id"]]) for row in rows]


async def show(db: Database, conversation_id: int) -> dict[str, Any]:
    async with db.reading() as conn:
        row = await queries.conversation(conn, conversation_id)
        if row is None:
            raise Refused(f"There is no conversation {conversation_id}.")
        tags = await queries.tags_of(conn, [conversation_id])
        messages = await queries.messages_of(conn, conversation_id)
        events = await queries.events_of(conn, conversation_id)
    view = _conversation(row, tags[conversation_id])
    view["messages"] = [
        {
            "message_id": m["message_id"],
            "from": m["sender"],
            "subject": m["subject"],
            "received_at": m["received_at"],
            "source": m["source"],
        }
        for m in messages
    ]
    view["events"] = [
        {
            "at": e["at"],
            "kind": e["kind"],
            "actor": e["actor"],
            "agent": e["agent"],
            "previous_agent": e["previous_agent"],
            "rule": e["rule"],
            "detail": json.loads(e["detail"]),
        }
        for e in events
    ]
    return view


async def shunted(db: Database) -> list[dict[str, Any]]:
    async with db.reading() as conn:
        rows = await queries.shunted(conn)
    return [
        {
            "id": r["id"],
            "inbox": r["inbox"],
            "source": r["source"],
            "received_at": r["received_at"],
            "error": r["error"],
        }
        for r in rows
    ]
