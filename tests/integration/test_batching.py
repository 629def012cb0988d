"""Group commit and batched intake: fewer fsyncs, the same guarantees per message."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest

from gateway import alertmark
from gateway.config import Settings
from gateway.ingress.accept import Accept
from gateway.intake.worker import Intake
from gateway.model import RawMail
from gateway.store import queries
from gateway.store.db import Database
from tests.store import begins_a_write

INBOX = "support@example.com"


def raw(n: int, subject: str = "Question") -> bytes:
    return (
        f"From: c{n}@example.org\r\nTo: {INBOX}\r\nSubject: {subject} {n}\r\n"
        f"Message-ID: <batch-{n}@example.org>\r\n\r\nbody {n}\r\n"
    ).encode()


def mail(n: int, subject: str = "Question") -> RawMail:
    return RawMail(INBOX, raw(n, subject), "smtp", f"c{n}@example.org", (INBOX,))


@pytest.fixture
async def store(make_settings: Callable[..., Settings]) -> AsyncIterator[tuple[Settings, Database]]:
    settings = make_settings()
    db = await Database.open(settings.gateway.database)
    yield settings, db
    await db.close()


async def count_commits(db: Database) -> list[str]:
    """The write transactions `db` begins from now on (each one commit, or none)."""
    seen: list[str] = []
    await db.trace(lambda sql: seen.append(sql) if begins_a_write(sql) else None)
    return seen


async def test_concurrent_messages_share_commits_and_each_is_stored(
    store: tuple[Settings, Database],
) -> None:
    _, db = store
    commits = await count_commits(db)
    ids = await asyncio.gather(*(Accept(db)(mail(n)) for n in range(50)))
    # Each Accept is its own door here; one door groups what reaches it together.
    door = Accept(db)
    grouped = await asyncio.gather(*(door(mail(n)) for n in range(50, 100)))
    assert None not in ids + grouped and len(set(ids + grouped)) == 100
    async with db.reading() as conn:
        stored = [await queries.message(conn, i) for i in grouped]
    assert [s.mail.raw for s in stored if s] == [raw(n) for n in range(50, 100)]
    assert len(commits) - 50 < 10  # the 50 sent together took a handful of commits


async def test_the_same_message_twice_in_one_group_is_stored_once(
    store: tuple[Settings, Database],
) -> None:
    _, db = store
    door = Accept(db)
    first, second, other = await asyncio.gather(door(mail(1)), door(mail(1)), door(mail(2)))
    assert first is not None and second is None and other is not None


async def test_a_message_that_fails_in_a_batch_is_shunted_alone_and_leaves_nothing(
    store: tuple[Settings, Database], monkeypatch: pytest.MonkeyPatch
) -> None:
    settings, db = store
    door = Accept(db)
    await asyncio.gather(*(door(mail(n, "explode" if n == 3 else "Question")) for n in range(6)))
    real = queries.finish_message

    async def faulty(tx, message_pk, state, facts, *args):  # type: ignore[no-untyped-def]
        if "explode" in facts.subject:
            raise RuntimeError("injected after the conversation was written")
        await real(tx, message_pk, state, facts, *args)

    monkeypatch.setattr(queries, "finish_message", faulty)
    async with db.transaction() as conn:
        secret = await alertmark.load_secret(conn)
    commits = await count_commits(db)
    assert await Intake(db, settings, secret).drain() == 6
    assert len(commits) == 1  # the six in one transaction
    async with db.reading() as conn:
        states = [(await queries.message(conn, i)) for i in range(1, 7)]
        subjects = [r.subject for r in await queries.list_conversations(conn, status=None)]
    assert [s.state for s in states if s] == ["routed"] * 3 + ["shunted"] + ["routed"] * 2
    assert sorted(subjects) == [f"Question {n}" for n in (0, 1, 2, 4, 5)]


async def test_intake_keeps_routing_while_accept_is_busy(
    store: tuple[Settings, Database],
) -> None:
    settings, db = store
    door = Accept(db)
    await asyncio.gather(*(door(mail(n)) for n in range(25)))
    async with db.transaction() as conn:
        secret = await alertmark.load_secret(conn)
    intake = Intake(db, settings, secret, accept_busy=lambda: True)
    assert await intake.drain() == 25
    async with db.reading() as conn:
        assert await queries.pending_messages(conn, 100, 1 << 20) == []


@pytest.mark.parametrize("mode", ["rotation", "balanced"])
async def test_a_batch_routes_as_its_messages_one_at_a_time_would(
    make_settings: Callable[..., Settings], tmp_path_factory: pytest.TempPathFactory, mode: str
) -> None:
    """Intake reads the routing state once a batch and keeps it by its own decisions: the
    limits, turns and loads it goes by are those a read before each message would give,
    also with a shunted message and a reply in the batch."""
    agents = [
        {"id": "alice", "email": "alice@agents.test", "max_open": 3},
        {"id": "bob", "email": "bob@agents.test", "max_open": 2},
        {"id": "carol", "email": "carol@agents.test", "max_open": 2},
    ]
    rules = [{"name": "VIP", "subject_keywords": ["vip"], "assign_to": "agent:bob"}]
    rotation = {"enabled": True, "agents": ["alice", "bob", "carol"], "mode": mode}
    mails = [mail(n, "vip" if n % 5 == 0 else "Question") for n in range(14)]
    mails.insert(7, RawMail(INBOX, b"\xff" * 3, "smtp", None, (INBOX,)))
    reply = (
        raw(2)
        .replace(b"<batch-2@", b"<again@")
        .replace(b"Subject:", b"In-Reply-To: <batch-2@example.org>\r\nSubject:")
    )
    mails.insert(9, RawMail(INBOX, reply, "smtp", "c2@example.org", (INBOX,)))

    async def assignments(batch: int) -> list[tuple[object, ...]]:
        folder = tmp_path_factory.mktemp(f"batch{batch}")
        settings = make_settings(agents=agents, teams=[], rules=rules, round_robin=rotation)
        settings = settings.model_copy(
            update={
                "gateway": settings.gateway.model_copy(update={"database": str(folder / "g.db")})
            }
        )
        db = await Database.open(settings.gateway.database, create=True)
        try:
            async with db.transaction() as tx:
                secret = await alertmark.load_secret(tx)
            for one in mails:
                await Accept(db)(one)
            intake = Intake(db, settings, secret)
            async with db.reading() as conn:
                pending = await queries.pending_messages(conn, 100, 10**8)
            for start in range(0, len(pending), batch):
                await intake.process_batch(pending[start : start + batch])
            async with db.reading() as conn:
                rows = await conn.all(
                    "SELECT id, assignee, queued_for FROM conversations ORDER BY id"
                )
        finally:
            await db.close()
        return [tuple(row) for row in rows]

    one_by_one = await assignments(1)
    assert await assignments(len(mails)) == one_by_one
    assert any(row[2] is not None for row in one_by_one)  # some waited: the limits bit
