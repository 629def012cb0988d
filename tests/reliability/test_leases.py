"""An alert whose sender died mid-attempt goes at once when the outbox starts again.

The outbox leases a row for each attempt (two processes never send the same
alert at once). A process killed mid-attempt keeps its lease to the end; the
clock here never moves, so only recovery at start can send such an alert.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from email import message_from_bytes
from email.policy import SMTP
from typing import Any

import pytest
from aiosmtpd.smtp import Envelope

from gateway import alertmark
from gateway.clock import utcnow
from gateway.config import Settings
from gateway.ingress.accept import Accept
from gateway.intake.worker import Intake
from gateway.model import RawMail
from gateway.notify.worker import Outbox
from gateway.store import queries
from gateway.store.db import Database
from tests.conftest import Sink, free_port, hold_oldest_alert, mail, smtp_notify

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


async def drained_until(outbox: Outbox, condition: Callable[[], object], what: str) -> None:
    """Drain `outbox` again and again until `condition` holds (a lease ending, say)."""
    deadline = time.monotonic() + 15
    while True:
        await outbox.drain()
        if condition():
            return
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


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
            rows = await conn.all("SELECT id FROM outbox WHERE kind = 'alert' ORDER BY id")
    finally:
        await db.close()
    yield settings, secret, [row["id"] for row in rows]


async def outbox_row(settings: Settings, outbox_id: int) -> dict[str, Any]:
    db = await Database.open(settings.gateway.database)
    try:
        async with db.reading() as tx:
            [row] = await tx.all("SELECT * FROM outbox WHERE id = ?", (outbox_id,))
        return dict(row)
    finally:
        await db.close()


async def test_an_alert_a_dead_process_was_sending_goes_at_once_when_the_outbox_starts(
    store: tuple[Settings, bytes, list[int]], sink: Sink
) -> None:
    settings, secret, [leased, _] = store
    dead = await Database.open(settings.gateway.database)
    presence = dead.presence("outbox")
    async with presence.joining() as alone:
        assert alone
    assert await hold_oldest_alert(dead) == leased
    await presence.leave()  # the process is killed mid-attempt: the kernel lets go of its lock
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
    async with presence.joining() as alone:
        assert alone
    assert await hold_oldest_alert(alive) == leased

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
        await presence.leave()
        await alive.close()
    assert len(sink.received) == 1
    free_row, leased_row = await outbox_row(settings, free), await outbox_row(settings, leased)
    assert free_row["state"] == "done"
    assert (leased_row["state"], leased_row["attempts"]) == ("pending", 0)
    assert leased_row["leased_by"] is not None


async def test_a_lease_holds_against_a_process_whose_clock_is_ahead(
    store: tuple[Settings, bytes, list[int]], sink: Sink
) -> None:
    settings, secret, [leased, free] = store
    holder = await Database.open(settings.gateway.database)
    db = await Database.open(settings.gateway.database)
    try:
        assert await hold_oldest_alert(holder) == leased
        ahead = Outbox(db, settings, secret, clock=lambda: NOW + timedelta(hours=1))
        assert await ahead.drain() == 1  # the free alert only: the lease is the store's to judge
    finally:
        await holder.close()
        await db.close()
    assert len(sink.received) == 1
    assert (await outbox_row(settings, leased))["state"] == "pending"
    assert (await outbox_row(settings, free))["state"] == "done"


class HeldSmarthost(Sink):
    """Holds each alert until released, then gives `answer`: an attempt outliving its lease."""

    def __init__(self, port: int, answer: str) -> None:
        super().__init__(port)
        self.answer = answer
        self.holding = threading.Event()
        self.release = threading.Event()

    async def handle_DATA(self, server: object, session: object, envelope: Envelope) -> str:
        self.holding.set()
        await asyncio.to_thread(self.release.wait)
        if self.answer.startswith("250"):
            self.received.append(envelope)
        return self.answer


@pytest.mark.parametrize("answer", ["250 OK", "451 4.3.0 Try again later"], ids=["sent", "failed"])
async def test_an_attempt_that_outlived_its_lease_leaves_the_row_to_the_one_that_took_it_over(
    store: tuple[Settings, bytes, list[int]], sink: Sink, answer: str
) -> None:
    settings, secret, [slow_row, _] = store
    held = HeldSmarthost(free_port(), answer)
    held.start()
    notify = settings.notify.model_copy(update={"smtp_port": held.port})
    slow_db = await Database.open(settings.gateway.database)
    db = await Database.open(settings.gateway.database)
    try:
        short = timedelta(seconds=0.5)
        slow = Outbox(slow_db, settings.model_copy(update={"notify": notify}), secret, lease=short)
        attempt = asyncio.create_task(slow.drain())
        await eventually(held.holding.is_set, "the slow attempt to be under way")
        taker = Outbox(db, settings, secret, clock=utcnow)
        await drained_until(taker, lambda: len(sink.received) == 2, "the lease to end")
        held.release.set()
        await attempt
    finally:
        held.release.set()
        held.stop()
        await slow_db.close()
        await db.close()
    row = await outbox_row(settings, slow_row)
    assert (row["state"], row["attempts"], row["last_error"]) == ("done", 1, None)
    db = await Database.open(settings.gateway.database)
    try:
        async with db.reading() as conn:
            kinds = [e.kind for e in await queries.events_of(conn, row["conversation_id"])]
    finally:
        await db.close()
    assert kinds.count("notified") == 1 and "notify_failed" not in kinds
