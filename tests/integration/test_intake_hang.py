"""A parse that hangs costs intake its message, never its routing."""

from __future__ import annotations

from collections.abc import Callable

from gateway import alertmark
from gateway.config import Settings
from gateway.ingress.accept import Accept
from gateway.intake.worker import Intake
from gateway.model import RawMail
from gateway.store.db import Database
from tests.unit.test_parsing import HangingParser

INBOX = "support@example.com"


def mail(subject: str) -> RawMail:
    raw = f"From: c@example.org\r\nTo: {INBOX}\r\nSubject: {subject}\r\n\r\nbody\r\n".encode()
    return RawMail(INBOX, raw, "smtp", "c@example.org", (INBOX,))


async def test_a_message_whose_parse_hangs_is_shunted_and_the_others_are_routed(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings()
    db = await Database.open(settings.gateway.database)
    parser = HangingParser()
    try:
        door = Accept(db)
        for subject in ("before", "hang", "after"):
            await door(mail(subject))
        async with db.transaction() as conn:
            secret = await alertmark.load_secret(conn)
        assert await Intake(db, settings, secret, parse=parser).drain() == 3
        async with db.reading() as tx:
            rows = [tuple(row) for row in await tx.all("SELECT state, error FROM messages")]
        assert rows == [
            ("routed", None),
            ("shunted", "ParserLost: parsing took longer than 2 s"),
            ("routed", None),
        ]
    finally:
        parser.close()
        await db.close()
