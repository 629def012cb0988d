"""Which conversation a message joins: references, then the [#ID] token, then the subject."""

from __future__ import annotations

from datetime import datetime, timedelta

from gateway.clock import stamp
from gateway.intake.facts import conversation_token, thread_subject
from gateway.model import MailFacts
from gateway.store import queries
from gateway.store.db import Tx


async def find_conversation(
    conn: Tx,
    inbox: str,
    facts: MailFacts,
    now: datetime,
    fallback_days: int,
) -> int | None:
    found = await queries.conversation_of_message_ids(conn, inbox, facts.references)
    if found is not None:
        return found
    token = conversation_token(facts.subject)
    if token is not None:
        row = await queries.conversation(conn, token)
        if row is not None and row.inbox == inbox:
            return token
    subject = thread_subject(facts.subject)
    # An empty subject says nothing about which thread it belongs to.
    if fallback_days > 0 and facts.sender and subject:
        since = stamp(now - timedelta(days=fallback_days))
        return await queries.conversation_by_subject(conn, inbox, facts.sender, subject, since)
    return None
