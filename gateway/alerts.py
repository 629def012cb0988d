"""Side effects queued in the caller's transaction: alerts, and IMAP keyword updates."""

from __future__ import annotations

from datetime import datetime, timedelta

from gateway.clock import stamp
from gateway.config import Settings
from gateway.store import queries
from gateway.store.db import Tx

SENDER_WINDOW = timedelta(hours=1)  # the span of a sender's alert allowance


async def queue_alert(
    conn: Tx,
    settings: Settings,
    *,
    conversation_id: int,
    event_id: int,
    agent_id: str,
    reason: str,
    how: str,
    message_pk: int,
    at: str,
    sender: str | None = None,
) -> bool:
    """Queue it where the global switch and the agent's own `notify` allow; True if queued.

    The outbox worker sends it after this transaction commits; its Message-ID
    derives from `event_id`, so a resend is recognisably the same alert.
    An alert caused by mail from `sender` also counts against that sender's
    hourly allowance: past it, the timeline says the alert was held back.
    """
    agent = settings.agent(agent_id)
    if not settings.notify.enabled or agent is None or not agent.notify:
        return False
    limit = settings.notify.max_alerts_per_sender_per_hour
    if sender and limit:
        since = stamp(datetime.fromisoformat(at) - SENDER_WINDOW)
        if await queries.count_sender_alert(conn, sender, at, since) > limit:
            await queries.add_event(
                conn,
                conversation_id,
                at,
                "notify_skipped",
                "gateway",
                agent=agent_id,
                detail={
                    "reason": reason,
                    "why": f"more than {limit} alerts from {sender} this hour",
                },
            )
            return False
    await queries.enqueue(
        conn,
        "alert",
        event_id,
        conversation_id,
        {"agent": agent_id, "reason": reason, "how": how, "message": message_pk},
        at,
    )
    return True


async def queue_keywords(conn: Tx, conversation_id: int, at: str) -> None:
    """Have every IMAP copy of the conversation show its assignment now (if it has copies).

    The job reads the conversation when it runs, so one per change is enough
    and a late one never puts back an old assignment.
    """
    if not await queries.imap_copies(conn, conversation_id):
        return
    event_id = await queries.latest_event(conn, conversation_id)
    await queries.enqueue(conn, "keywords", event_id, conversation_id, {}, at)


async def forget_past_senders(conn: Tx, now: datetime) -> int:
    """Drop the senders' counts whose hour is over by `now` (a flood from many addresses
    would otherwise stay in the store for good); how many."""
    return await queries.prune_sender_alerts(conn, stamp(now - SENDER_WINDOW))
