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
from gateway.routing.rotation import GLOBAL, team_key
from gateway.routing.router import unable
from gateway.store import queries
from gateway.store.db import Tx

ACTOR = "gateway"


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
    if change.agent is not None:
        await queries.note_assigned(tx, change.agent, change.at)
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


async def hand_out(tx: Tx, settings: Settings, agent: str, at: str) -> list[int]:
    """Give `agent`, who may have room now (back, or one conversation less), what has
    waited longest in the queues they serve, while they can take more; the conversations
    given, in the caller's transaction, so two frees never give one conversation twice."""
    config = settings.agent(agent)
    rotation = settings.round_robin
    if not rotation.hand_out_queue:
        return []
    queues = [GLOBAL] if rotation.enabled and agent in rotation.agents else []
    queues += [team_key(team.id) for team in settings.teams if agent in team.agents]
    if config is None or not queues:
        return []
    # Read once: in this transaction only what is given here changes the agent's load.
    counted = (agent,) if config.max_open is not None else ()
    state = await queries.routing_state(tx, counted=counted)
    if unable(agent, None, state) is not None:  # away or dnd
        return []
    room = None if config.max_open is None else config.max_open - state.open.get(agent, 0)
    given: list[int] = []
    while room is None or len(given) < room:
        oldest = await queries.oldest_waiting(tx, queues)
        if oldest is None:
            break
        conversation_id, since = oldest
        latest = await queries.latest_message(tx, conversation_id)
        how = f"from the queue, where it waited since {since}"
        change = Change(
            conversation_id,
            "assigned",
            ACTOR,
            at,
            agent,
            detail={"via": "queue", "waiting_since": since},
            alert=Alert(reason="assigned", how=how, message_pk=latest),
        )
        await record(tx, settings, change)
        given.append(conversation_id)
    return given


def handed(agent: str, given: list[int]) -> str:
    """The sentence an action adds when it freed a place the queue filled, or nothing."""
    if not given:
        return ""
    ids = ", ".join(str(conversation_id) for conversation_id in given)
    noun = "conversation" if len(given) == 1 else "conversations"
    return f" {agent} takes {noun} {ids} from the queue."
