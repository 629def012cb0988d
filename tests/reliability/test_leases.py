"""An alert whose sender died mid-attempt goes at once when the outbox starts again.

The outbox leases a row for each attempt (two processes never send the same
alert at once). A process killed mid-attempt keeps its lease to the end; the
clock here never moves, so only recovery at start can send such an alert.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from email import message_from_bytes
from email.policy import SMTP

import pytest

from gateway import alertmark
from gateway.clock import stamp
from gateway.config import Settings
from gateway.ingress.accept import Accept
from gateway.intake.worker import Intake
from gateway.model import RawMail
from gateway.notify.worker import Outbox
from gateway.store import queries
from gateway.store.db import Database
from tests.conftest import Sink, mail, smtp_notify

pytestmark = pytest.mark.integration

NOW = datetime.now(UTC)


def frozen() -> datetime:
    return NOW


async def eventually(condition: Callable[[], object], what: str) -> None:
    """wait_until for a test whose loop also runs the outbox: it must not block that loop."""
    deadline = time.monotonic() + 15
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


def alerted_events(sink: Sink) -> set[int]:
    return {
        int(str(message_from_bytes(e.original_content)["X-Gateway-Notification"]).split(".")[0])
        for e in sink.received
    }


@pytest.fixture
async def store(
    make_settings: Callable[..., Settings], sink: Sink
) -> AsyncIterator[tuple[Settings, bytes, list[int]]]:
    """Two conversations routed, each owing an alert: the settings, the secret, the alerts'
    outbox rows."""
    settings = make_settings(notify=smtp_notify(sink.port))
    db = await Database.open(settings.gateway.database)
    try:
        async with db.transaction() as conn:
            secret = await alertmark.load_secret(conn)
        for subject in ("first", "second"):
            raw = mail(subject).as_bytes(policy=SMTP)
            await Accept(db)(RawMail("support@example.com", raw, "smtp", "c@example.org", ()))
        await Intake(db, settings, secret, clock=frozen).drain()
        async with db.reading() as conn:
            rows = await queries.due_outbox(conn, stamp(NOW), 10)
    finally:
        await db.close()
    yield settings, secret, [row["id"] for row in rows]


async def outbox_row(settings: Settings, outbox_id: int) -> queries.Row:
    db = await Database.open(settings.gateway.database)
    try:
        async with db.reading() as conn:
            [row] = await conn.execute_fetchall("SELECT * FROM outbox WHERE id = ?", (outbox_id,))
        return row
    finally:
        await db.close()


async def test_an_alert_a_dead_process_was_sending_goes_at_once_when_the_outbox_starts(
    store: tuple[Settings, bytes, list[int]], sink: Sink
) -> None:
    settings, secret, [leased, _] = store
    dead = await Database.open(settings.gateway.database)
    presence = dead.presence("outbox")
    assert presence.alone()
    await presence.share()
    assert await Outbox(dead, settings, secret, clock=frozen)._claim(leased)
    presence.leave()  # the process is killed mid-attempt: the kernel lets go of its lock
    await dead.close()

    db = await Database.open(settings.gateway.database)
    outbox = Outbox(db, settings, secret, clock=frozen)
    running = asyncio.create_task(outbox.run())
    try:
        await eventually(lambda: len(alerted_events(sink)) == 2, "both alerts")
    finally:
        outbox.stop()
        await running
        await db.close()
    assert (await outbox_row(settings, leased))["state"] == "done"


async def test_an_alert_a_live_process_is_sending_is_left_to_it(
    store: tuple[Settings, bytes, list[int]], sink: Sink
) -> None:
    settings, secret, [leased, free] = store
    alive = await Database.open(settings.gateway.database)
    presence = alive.presence("outbox")
    assert presence.alone()
    await presence.share()
    assert await Outbox(alive, settings, secret, clock=frozen)._claim(leased)

    db = await Database.open(settings.gateway.database)
    outbox = Outbox(db, settings, secret, clock=frozen)
    running = asyncio.create_task(outbox.run())
    try:
        # The other alert going out shows this outbox has started and taken what is due.
        await eventually(lambda: sink.received, "the alert nobody holds")
    finally:  # stopping finishes the batch in hand, the leased row too were it in it
        outbox.stop()
        await running
        await db.close()
        presence.leave()
        await alive.close()
    assert len(sink.received) == 1
    free_row, leased_row = await outbox_row(settings, free), await outbox_row(settings, leased)
    assert free_row["state"] == "done"
    assert (leased_row["state"], leased_row["attempts"]) == ("pending", 0)
    assert leased_row["leased_by"] is not None
