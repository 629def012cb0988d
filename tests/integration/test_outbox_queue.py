"""The outbox as a queue: claimed in batches, read from both ends, and a smarthost that
cannot be reached costing one connection, not one per alert.

The outbox runs here on the test's loop with a clock the test moves; the
smarthost is real (aiosmtpd), or a listener that hangs up on every connection.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email import message_from_bytes
from email.policy import SMTP

import pytest
from aiosmtpd.smtp import Envelope

from gateway import alertmark
from gateway.clock import stamp
from gateway.config import Settings
from gateway.ingress.accept import Accept
from gateway.intake.worker import Intake
from gateway.model import RawMail
from gateway.notify.render import Alert, AlertInput, ProcessRenderer, render_each
from gateway.notify.worker import BATCH, SESSIONS, Outbox, Renderer, RetryPolicy
from gateway.store.db import Database
from tests.conftest import Sink, free_port, mail, smtp_notify
from tests.store import begins_a_write

pytestmark = pytest.mark.integration

START = datetime(2026, 11, 30, 9, 0, tzinfo=UTC)
RETRY = RetryPolicy(first=timedelta(seconds=30), probe_cap=timedelta(minutes=5))


class Clock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> datetime:
        return self.now


@dataclass
class Desk:
    """A store with conversations routed, and the outbox that owes their alerts."""

    db: Database
    settings: Settings
    secret: bytes
    clock: Clock
    port: int

    async def routed(self, subjects: list[str]) -> None:
        """A conversation for each subject, routed now (by the clock): an alert each."""
        items = [
            (RawMail("support@example.com", self._raw(subject), "smtp", "c@example.org", ()), None)
            for subject in subjects
        ]
        await Accept(self.db, clock=self.clock).together(items)
        await Intake(self.db, self.settings, self.secret, clock=self.clock).drain()

    def _raw(self, subject: str) -> bytes:
        # A sender each: the per-sender alert limit is not what these tests are about.
        return mail(subject, sender=f"{subject.replace(' ', '-')}@example.org").as_bytes(
            policy=SMTP
        )

    def outbox(self, render: Renderer | None = None) -> Outbox:
        return Outbox(
            self.db, self.settings, self.secret, clock=self.clock, retry=RETRY, render=render
        )

    async def rows(self) -> list[dict[str, object]]:
        async with self.db.reading() as tx:
            found = await tx.all("SELECT * FROM outbox WHERE kind = 'alert' ORDER BY id")
        return [dict(row) for row in found]

    async def events(self, kind: str) -> list[dict[str, object]]:
        async with self.db.reading() as tx:
            found = await tx.all("SELECT * FROM events WHERE kind = ? ORDER BY id", (kind,))
        return [dict(row) for row in found]


@pytest.fixture
async def desk(make_settings: Callable[..., Settings]) -> AsyncIterator[Desk]:
    port = free_port()
    settings = make_settings(notify=smtp_notify(port))
    db = await Database.open(settings.gateway.database)
    try:
        async with db.transaction() as tx:
            secret = await alertmark.load_secret(tx)
        yield Desk(db, settings, secret, Clock(), port)
    finally:
        await db.close()


class HangUp:
    """A smarthost that is there and is not: it takes each connection and closes it at once."""

    def __init__(self, port: int) -> None:
        self.connections = 0
        self._listener = socket.create_server(("127.0.0.1", port))
        self._listener.settimeout(0.1)
        self._stopping = False
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stopping:
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            self.connections += 1
            conn.close()

    def stop(self) -> None:
        self._stopping = True
        self._thread.join()
        self._listener.close()


@pytest.fixture
def hang_up(desk: Desk) -> AsyncIterator[HangUp]:
    server = HangUp(desk.port)
    yield server
    server.stop()


def subjects_of(sink: Sink) -> list[str]:
    return [str(message_from_bytes(e.original_content)["Subject"]) for e in sink.received]


async def test_a_fresh_alert_goes_out_in_the_first_batch_behind_a_backlog(desk: Desk) -> None:
    desk.clock.now = START - timedelta(hours=1)  # owed since an outage, say
    await desk.routed([f"backlog {n}" for n in range(3 * BATCH)])
    desk.clock.now = START
    await desk.routed(["fresh"])
    sink = Sink(desk.port)
    sink.start()
    try:
        assert await desk.outbox().drain() == 3 * BATCH + 1
    finally:
        sink.stop()
    sent = subjects_of(sink)
    assert len(sent) == 3 * BATCH + 1
    assert sent.index("[#151] Assigned: fresh") < BATCH


async def test_a_drains_alerts_are_claimed_in_one_commit_and_recorded_in_one_more(
    desk: Desk,
) -> None:
    await desk.routed([f"question {n}" for n in range(30)])
    commits: list[str] = []
    await desk.db.trace(lambda sql: commits.append(sql) if begins_a_write(sql) else None)
    sink = Sink(desk.port)
    sink.start()
    try:
        assert await desk.outbox().drain() == 30
    finally:
        sink.stop()
        await desk.db.trace(None)
    assert len(sink.received) == 30
    # The claim, the outcomes, the claim that finds nothing more, and the once-a-minute
    # pruning of senders' counts: not two for each alert.
    assert len(commits) == 4


async def test_a_smarthost_that_hangs_up_costs_one_connection_for_every_alert_due(
    desk: Desk, hang_up: HangUp
) -> None:
    await desk.routed([f"question {n}" for n in range(30)])
    assert await desk.outbox().drain() == 1  # the one that found it down
    assert hang_up.connections == 1
    probe = stamp(START + RETRY.first)
    assert {(row["state"], row["due_at"]) for row in await desk.rows()} == {("pending", probe)}
    failed = await desk.events("notify_failed")
    assert sorted(event["conversation_id"] for event in failed) == list(range(1, 31))
    assert {json.loads(str(event["detail"]))["retry_at"] for event in failed} == {probe}


async def test_an_alert_queued_while_the_smarthost_is_down_fails_at_once_without_a_connection(
    desk: Desk, hang_up: HangUp
) -> None:
    await desk.routed(["first"])
    outbox = desk.outbox()
    await outbox.drain()
    desk.clock.now = START + timedelta(seconds=10)
    await desk.routed(["second"])
    assert await outbox.drain() == 0
    assert hang_up.connections == 1
    [_, told] = await desk.events("notify_failed")
    assert told["conversation_id"] == 2
    detail = json.loads(str(told["detail"]))
    assert detail["retry_at"] == stamp(START + RETRY.first)
    assert detail["attempts"] == 0
    assert detail["error"].startswith("not attempted: the smarthost has been unreachable since")


async def test_a_probe_that_fails_again_waits_twice_as_long(desk: Desk, hang_up: HangUp) -> None:
    await desk.routed(["first", "second"])
    outbox = desk.outbox()
    await outbox.drain()
    desk.clock.now = START + RETRY.first
    assert await outbox.drain() == 1
    assert hang_up.connections == 2
    again = stamp(desk.clock.now + 2 * RETRY.first)
    assert {row["due_at"] for row in await desk.rows()} == {again}
    assert len(await desk.events("notify_failed")) == 3  # the probe's twice, the other's once


async def test_at_the_probe_a_smarthost_back_takes_the_whole_backlog(
    desk: Desk, hang_up: HangUp
) -> None:
    await desk.routed([f"question {n}" for n in range(30)])
    outbox = desk.outbox()
    await outbox.drain()
    hang_up.stop()
    sink = Sink(desk.port)
    sink.start()
    try:
        desk.clock.now = START + timedelta(seconds=10)
        assert await outbox.drain() == 0  # not before the probe
        desk.clock.now = START + RETRY.first
        assert await outbox.drain() == 30
    finally:
        sink.stop()
    assert len(sink.received) == 30
    assert {row["state"] for row in await desk.rows()} == {"done"}
    assert len(await desk.events("notified")) == 30


async def test_an_alert_past_the_deadline_while_the_smarthost_is_down_is_given_up(
    desk: Desk, hang_up: HangUp
) -> None:
    desk.clock.now = START - RETRY.deadline
    await desk.routed(["old"])
    desk.clock.now = START
    await desk.routed(["new"])
    await desk.outbox().drain()
    assert [row["state"] for row in await desk.rows()] == ["dead", "pending"]
    given_up = [
        json.loads(str(e["detail"]))["retry_at"] for e in await desk.events("notify_failed")
    ]
    assert given_up == [None, stamp(START + RETRY.first)]


class Overlapping(Sink):
    """A smarthost slow to take each alert, that notes how many it was given at once."""

    def __init__(self, port: int) -> None:
        super().__init__(port)
        self.now = 0
        self.most = 0
        self.sessions: set[int] = set()

    async def handle_DATA(self, server: object, session: object, envelope: Envelope) -> str:
        self.sessions.add(id(session))
        self.now += 1
        self.most = max(self.most, self.now)
        await asyncio.sleep(0.02)
        self.now -= 1
        return await super().handle_DATA(server, session, envelope)


async def test_a_backlog_goes_out_over_several_sessions_at_once(desk: Desk) -> None:
    await desk.routed([f"question {n}" for n in range(30)])
    sink = Overlapping(desk.port)
    sink.start()
    try:
        assert await desk.outbox().drain() == 30
    finally:
        sink.stop()
    assert len(sink.received) == 30
    assert 1 < sink.most <= len(sink.sessions) <= SESSIONS


class Refusing(Sink):
    """A smarthost that refuses one address and takes the rest."""

    async def handle_RCPT(
        self, server: object, session: object, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        if address == "alice@agents.test":
            return "550 5.1.1 No such mailbox"
        envelope.rcpt_tos.append(address)
        return "250 OK"


async def test_an_alert_the_smarthost_refuses_holds_back_no_other(desk: Desk) -> None:
    await desk.routed(["to alice", "to bob", "to carol"])  # the rotation: one each
    sink = Refusing(desk.port)
    sink.start()
    try:
        assert await desk.outbox().drain() == 3
    finally:
        sink.stop()
    assert sorted(e.rcpt_tos[0] for e in sink.received) == ["bob@agents.test", "carol@agents.test"]
    [failed] = await desk.events("notify_failed")
    assert failed["agent"] == "alice"
    assert json.loads(str(failed["detail"]))["retry_at"] == stamp(START + RETRY.first)


def hangs_on_one(inputs: Sequence[AlertInput]) -> list[Alert | Exception]:
    if any(alert.subject == "Hangs" for alert in inputs):
        time.sleep(3600)  # as a build caught in a loop would
    return render_each(inputs)


class HangingRenderer(ProcessRenderer):
    work = staticmethod(hangs_on_one)
    timeout = 2.0


async def test_an_alert_whose_building_hangs_fails_alone_and_the_others_go_out(
    desk: Desk,
) -> None:
    await desk.routed(["Hangs", "Fine"])
    renderer = HangingRenderer()
    sink = Sink(desk.port)
    sink.start()
    try:
        assert await desk.outbox(renderer).drain() == 2
    finally:
        sink.stop()
        renderer.close()
    assert subjects_of(sink) == ["[#2] Assigned: Fine"]
    [failed] = await desk.events("notify_failed")
    assert failed["conversation_id"] == 1
    error = json.loads(str(failed["detail"]))["error"]
    assert error == "BuilderLost: building the alert took longer than 2 s"
