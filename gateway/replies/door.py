"""The mail door: an agent's mail to the replies address, turned into actions.

Mail there is never a customer's conversation. It counts only when its
replies+TOKEN address names an alert of this gateway, its From is the address of
the agent that alert was sent to, and the alert is not older than `token_days`.
Then its leading #commands and its answer (what is above the alert's marker) are
applied as that agent's actions, all in intake's transaction, or none: one line
refused and nothing is applied, nothing goes to the customer, the timeline says
`reply_refused` (when the token names a conversation) and the agent gets a notice
at their configured address, never at From. Automatic mail (an out-of-office, a
bounce) is dropped without a word, so it can neither reach a customer nor loop.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from email.message import EmailMessage
from email.parser import BytesParser

from gateway import actions, alertmark, mailpolicy
from gateway.actions import Action, Actor, agent_of_address
from gateway.clock import stamp
from gateway.config import Settings
from gateway.intake.facts import header_text, parse_headers
from gateway.mailtext import body_text
from gateway.model import MailFacts
from gateway.replies import answer, commands, compose, token
from gateway.replies.compose import Attachment
from gateway.store import queries
from gateway.store.db import Tx
from gateway.store.queries import StoredMail

ACTOR = "gateway"
_OWNERS = {"assign", "unassign", "claim"}  # commands that decide who has the conversation
# Headers a mail server records the envelope recipient in, for mail taken from a mailbox.
_DELIVERED = ("Delivered-To", "X-Original-To", "Envelope-To")


@dataclass(frozen=True)
class Reading:
    """What an agent's mail says: its text (HTML as text where there is no plain text)
    and the files it attaches."""

    text: str
    attachments: tuple[Attachment, ...] = ()


def read(raw: bytes) -> Reading:
    """Never raises: a mail that cannot be read says nothing, and is refused for it."""
    try:
        msg = BytesParser(policy=mailpolicy.DEFAULT).parsebytes(raw)
        assert isinstance(msg, EmailMessage)
        # A mail attached (message/*) is the alert or another, never the agent's words.
        files = tuple(
            Attachment(part.get_filename(), part.get_content_type(), _payload(part))
            for part in msg.iter_attachments()
            if part.get_content_disposition() == "attachment"
            and part.get_content_maintype() != "message"
        )
        return Reading(body_text(msg), files)
    except Exception:  # broken MIME, nesting deeper than the stack
        return Reading("")


def _payload(part: EmailMessage) -> bytes:
    data = part.get_payload(decode=True)
    return data if isinstance(data, bytes) else b""


@dataclass(frozen=True)
class Handled:
    state: str  # applied, refused, dropped
    conversation_id: int | None
    why: str  # what was done, or the reason


class _Refusal(Exception):
    pass


async def handle(
    tx: Tx,
    settings: Settings,
    secret: bytes,
    stored: StoredMail,
    facts: MailFacts,
    reading: Reading,
    now: datetime,
) -> Handled:
    at = stamp(now)
    if facts.auto is not None or alertmark.is_ours(secret, facts.notification):
        why = f"automatic mail to the replies address ({facts.auto or 'an alert'})"
        await queries.finish_message(tx, stored.id, "dropped", facts, None, why)
        return Handled("dropped", None, why)
    replies = settings.replies.address
    assert replies is not None
    found = token.found_in(replies, [*stored.mail.envelope_to, *_delivered(stored.mail.raw)])
    if found is None:
        found = token.found_in(replies, facts.recipients)
    sender = agent_of_address(settings, facts.sender)
    checked = None if found is None else token.check(secret, found, _agent_ids(settings))
    issued = None
    if checked is not None and checked.agent is not None:
        issued = await queries.event_issued(tx, checked.event_id)
    conversation_id = issued[0] if issued is not None else None
    notified = sender or (checked.agent if issued is not None and checked is not None else None)
    try:
        if found is None:
            raise _Refusal(
                "it came to the replies address without an alert's token;"
                " answer by replying to an alert"
            )
        if issued is None or checked is None or checked.agent is None:
            raise _Refusal("its token is not one of this gateway's alerts")
        if sender is None:
            raise _Refusal(f"it is from {facts.sender or 'no address'}, not an agent's address")
        if sender != checked.agent:
            raise _Refusal(
                f"the alert was sent to {checked.agent}, and this mail is from {sender}'s address"
            )
        days = settings.replies.token_days
        if datetime.fromisoformat(issued[1]) + timedelta(days=days) < now:
            raise _Refusal(
                f"the alert is older than {days} days; reply to a newer alert of"
                f" conversation #{issued[0]}"
            )
        assert conversation_id is not None
        done = await _apply(tx, settings, sender, conversation_id, reading, at)
    except _Refusal as refusal:
        reason = str(refusal)
        await _refuse(tx, stored, facts, reason, conversation_id, notified, at)
        return Handled("refused", conversation_id, reason)
    await queries.finish_message(tx, stored.id, "applied", facts, None)
    return Handled("applied", conversation_id, done)


def _agent_ids(settings: Settings) -> list[str]:
    return [agent.id for agent in settings.agents]


def _delivered(raw: bytes) -> list[str]:
    headers = parse_headers(raw)
    return [value for name in _DELIVERED if (value := header_text(headers, name))]


async def _apply(
    tx: Tx, settings: Settings, agent: str, conversation_id: int, reading: Reading, at: str
) -> str:
    """The mail's commands, then its answer, as `agent`'s actions, all or none; what was
    done, or _Refusal naming the line refused."""
    parsed = commands.parse(reading.text)
    if parsed.error is not None:
        raise _Refusal(parsed.error)
    steps = [(c.line, _action(c, conversation_id, agent)) for c in parsed.commands]
    text = answer.cut(parsed.rest)
    if text:
        # A mail that says who has it (#assign, #unassign, #claim) is not undone by its answer.
        claim = not any(c.name in _OWNERS for c in parsed.commands)
        answer_ = actions.Reply(conversation_id, text, reading.attachments, claim=claim)
        steps.append(("the answer", answer_))
    if not steps:
        raise _Refusal("it holds no command, and no answer above the marker line")
    actor = Actor(agent, "email")
    done = []
    async with tx.savepoint():  # one refused, and what those before it did is undone
        for line, action in steps:
            result = await actions.apply(tx, settings, actor, action, at)
            if result.state == "refused":
                raise _Refusal(f"'{line}': {result.text}")
            done.append(result.text)
    return " ".join(done)


def _action(command: commands.Command, conversation_id: int, agent: str) -> Action:
    match command.name:
        case "claim":
            return actions.Claim(conversation_id)
        case "assign":
            assert command.argument is not None  # parse refuses #assign without one
            return actions.Assign(conversation_id, command.argument)
        case "unassign":
            return actions.Unassign(conversation_id)
        case "close":
            return actions.Close(conversation_id)
        case "reopen":
            return actions.Reopen(conversation_id)
        case "away" | "dnd" | "available":
            return actions.SetStatus(agent, command.name)
    raise AssertionError(f"parse gave an unknown command #{command.name}")


async def _refuse(
    tx: Tx,
    stored: StoredMail,
    facts: MailFacts,
    reason: str,
    conversation_id: int | None,
    notified: str | None,
    at: str,
) -> None:
    """Nothing applied: the mail kept with the reason, the timeline told when the token
    names a conversation, the agent told at their configured address."""
    await queries.finish_message(tx, stored.id, "refused", facts, None, reason)
    event_id = None
    if conversation_id is not None:
        event_id = await queries.add_event(
            tx,
            conversation_id,
            at,
            "reply_refused",
            notified or facts.sender or "unknown",
            agent=notified,
            detail={"via": "email", "reason": reason, "from": facts.sender, "message": stored.id},
        )
    if notified is None:  # nobody's mail: answering it would be backscatter
        return
    title, text = compose.refusal(facts.subject, reason, conversation_id)
    payload = {"agent": notified, "title": title, "text": text, "message": stored.id}
    await queries.enqueue(tx, "notice", event_id, conversation_id, payload, at)
