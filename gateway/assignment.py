"""What one change of a conversation's assignee writes, whoever makes it.

Intake's routing and every person's action (assign, claim, unassign) record a
change through `record`, in the caller's transaction: the assignee, the
timeline's event, the rotation's pointer when a turn was taken, the IMAP
keywords job, and the alert for the new assignee when there is one to send.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from gateway.alerts import queue_alert, queue_keywords
from gateway.config import Settings
from gateway.store import queries
from gateway.store.db import Tx


@dataclass(frozen=True)
class Alert:
    """Tell the new assignee: why (assigned, reassigned), how it came to them, about which
    message, and the sender whose mail caused it (for the sender's hourly allowance)."""

    reason: str
    how: str
    message_pk: int
    sender: str | None = None


@dataclass(frozen=True)
class Change:
    conversation_id: int
    kind: str  # assigned, reassigned, claimed, unassigned
    actor: str
    at: str
    agent: str | None  # the assignee from now on; None: the unassigned queue
    previous: str | None = None
    rule: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)
    rotation: tuple[str, str] | None = None  # (rotation, agent served): a turn was taken
    alert: Alert | None = None


async def record(tx: Tx, settings: Settings, change: Change) -> int:
    """Write the change; its event's id."""
    await queries.set_assignee(tx, change.conversation_id, change.agent)
    if change.rotation is not None:
        await queries.set_rotation(tx, *change.rotation)
    event_id = await queries.add_event(
        tx,
        change.conversation_id,
        change.at,
        change.kind,
        change.actor,
        agent=change.agent,
        previous_agent=change.previous,
        rule=change.rule,
        detail=change.detail or None,
    )
    await queue_keywords(tx, change.conversation_id, change.at)
    if change.alert is not None and change.agent is not None:
        await queue_alert(
            tx,
            settings,
            conversation_id=change.conversation_id,
            event_id=event_id,
            agent_id=change.agent,
            reason=change.alert.reason,
            how=change.alert.how,
            message_pk=change.alert.message_pk,
            at=change.at,
            sender=change.alert.sender,
        )
    return event_id
