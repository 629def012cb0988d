"""Properties of the mail door on a real store: what reaches a customer, and who may act.

Each example is a fresh store with one conversation, alice's, and her alert's token;
the agent's mail goes through accept and intake as the relay's would.
"""

from __future__ import annotations

import asyncio
import tempfile
from copy import deepcopy
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import tomli_w
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway import alertmark, config
from gateway.config import Settings
from gateway.ingress.accept import Accept
from gateway.intake.worker import Intake
from gateway.model import RawMail
from gateway.replies import token
from gateway.replies.marker import MARKER
from gateway.store.db import Database
from tests.conftest import BASE, mail

REPLIES = "replies@gw.test"
SENTINEL = "ZQXJSENTINELZQXJ"
AGENT_ADDRESSES = {"alice@agents.test", "bob@agents.test", "carol@agents.test"}


def desk_settings(folder: Path) -> Settings:
    data: dict[str, Any] = deepcopy(BASE)
    data["round_robin"] = {"enabled": True, "agents": ["alice"]}
    data["replies"] = {"address": REPLIES}
    path = folder / "gateway.toml"
    path.write_text(tomli_w.dumps(data))
    return config.load(path)


class Desk:
    """A store with Ann's conversation, alice's; mail to the replies address run through
    accept and intake."""

    def __init__(self, db: Database, settings: Settings, secret: bytes) -> None:
        self.db, self.settings, self.secret = db, settings, secret
        self.intake = Intake(db, settings, secret)

    @classmethod
    async def open(cls, folder: Path) -> Desk:
        settings = desk_settings(folder)
        db = await Database.open(settings.gateway.database, create=True)
        async with db.transaction() as tx:
            secret = await alertmark.load_secret(tx)
        desk = cls(db, settings, secret)
        await desk.deliver("support@example.com", mail("Lamp", sender="ann@example.org"))
        return desk

    async def deliver(self, inbox: str, message: EmailMessage, to: str | None = None) -> None:
        raw = message.as_bytes(policy=policy.SMTP)
        await Accept(self.db)(RawMail(inbox, raw, "smtp", None, (to or inbox,)))
        await self.intake.drain()

    async def reply_address(self) -> str:
        async with self.db.reading() as tx:
            row = await tx.one("SELECT id FROM events WHERE kind = 'assigned'")
        assert row is not None
        return token.reply_address(REPLIES, token.make(self.secret, int(row[0]), "alice"))

    async def snapshot(self) -> tuple[Any, ...]:
        async with self.db.reading() as tx:
            conversation = await tx.one("SELECT assignee, status, team FROM conversations")
            statuses = await tx.all("SELECT agent, status FROM agent_status ORDER BY agent")
            acts = await tx.one(
                "SELECT count(*) FROM events WHERE kind NOT IN ('received', 'reply_refused')"
            )
            sent = await tx.one("SELECT count(*) FROM outbox WHERE kind = 'answer'")
        assert conversation is not None and acts is not None and sent is not None
        return tuple(conversation), [tuple(r) for r in statuses], acts[0], sent[0]

    async def answers(self) -> list[bytes]:
        async with self.db.reading() as tx:
            rows = await tx.all(
                "SELECT r.raw FROM raw_mail r JOIN messages m ON m.id = r.message"
                " WHERE m.source = 'agent' ORDER BY m.id"
            )
        return [bytes(row[0]) for row in rows]


def agent_mail(sender: str, to: str, text: str) -> EmailMessage:
    message = EmailMessage()
    message["From"] = sender
    message["To"] = to
    message["Subject"] = "Re: [#1] Assigned: Lamp"
    message.set_content(text)
    return message


def run(test: Any) -> None:
    async def go() -> None:
        with tempfile.TemporaryDirectory(prefix="gateway-replies-") as folder:
            desk = await Desk.open(Path(folder))
            try:
                await test(desk)
            finally:
                await desk.db.close()

    asyncio.run(go())


# Lines as agents write them: anything, a command now and then, quoting, the marker's
# look-alikes; below the marker, the alert with its token, and the sentinel.
LINE = st.one_of(
    st.text(st.characters(blacklist_categories=["Cs"]), max_size=40),
    st.sampled_from(["#close", "#claim", "> quoted", "-- ", "On Mon, X wrote:", "##- Reply", ""]),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(above=st.lists(LINE, max_size=8), below=st.lists(LINE, max_size=4), quoted=st.booleans())
def test_nothing_below_the_marker_ever_reaches_the_customer(
    above: list[str], below: list[str], quoted: bool
) -> None:
    async def test(desk: Desk) -> None:
        to = await desk.reply_address()
        tail = [MARKER, *below, SENTINEL, f"Reply to {to}", "alice@agents.test"]
        prefix = "> " if quoted else ""
        text = "\n".join([*above, *(prefix + line for line in tail)])
        await desk.deliver(REPLIES, agent_mail("alice@agents.test", to, text), to)
        for raw in await desk.answers():
            answer = message_from_bytes(raw, policy=policy.default)
            assert isinstance(answer, EmailMessage)
            body = answer.get_body(("plain",))
            shown = str(body.get_content()) if body is not None else ""
            for leaked in (SENTINEL, "replies+", "##- Reply above", "alice@agents.test"):
                assert leaked not in shown and leaked.encode() not in raw

    run(test)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    sender=st.emails().filter(lambda a: a.lower() not in AGENT_ADDRESSES),
    lines=st.lists(
        st.one_of(
            st.sampled_from(
                ["#close", "#claim", "#unassign", "#assign bob", "#away", "#reopen", "Hi Ann"]
            ),
            st.text(max_size=30),
        ),
        max_size=6,
    ),
    with_token=st.booleans(),
)
def test_whatever_a_non_agent_sends_to_the_replies_address_nothing_changes(
    sender: str, lines: list[str], with_token: bool
) -> None:
    async def test(desk: Desk) -> None:
        before = await desk.snapshot()
        to = await desk.reply_address() if with_token else REPLIES
        await desk.deliver(REPLIES, agent_mail(sender, to, "\n".join(lines)), to)
        assert await desk.snapshot() == before
        assert await desk.answers() == []

    run(test)
