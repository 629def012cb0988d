"""The views read by index, so their time does not grow with the store.

Each test runs a view on a freshly migrated store, notes every statement it
gives SQLite, and asks SQLite how it would run each one (EXPLAIN QUERY PLAN):
no full scan of a table, no sort of everything that matched (a temp B-tree
for ORDER BY or GROUP BY); a queue is a walk along one index in waiting
order, which LIMIT stops after a page. bench/views.py measures the same on a
million conversations.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import aiosqlite
import pytest

from gateway import views
from gateway.config import Settings
from gateway.store.db import Database
from gateway.store.sqlite import SqliteDatabase

pytestmark = pytest.mark.sqlite_only("SQLite's own query plans (EXPLAIN QUERY PLAN)")

PAGE = 50
Statement = tuple[str, tuple[Any, ...]]


class Recording:
    """An aiosqlite connection that notes each statement it is given."""

    def __init__(self, conn: aiosqlite.Connection) -> None:
        self._conn = conn
        self.statements: list[Statement] = []

    def execute(self, sql: str, parameters: Sequence[Any] = ()) -> Any:
        self.statements.append((sql, tuple(parameters)))
        return self._conn.execute(sql, parameters)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings()


@pytest.fixture
async def store(settings: Settings) -> Path:
    """A store with every migration applied, and one conversation with all it can have."""
    path = settings.gateway.database
    db = await Database.open(path)
    await db.close()
    with sqlite3.connect(path) as conn:
        add_conversation(conn, 1, "2025-01-01T09:00:00.000000+00:00", assignee="alice")
        conn.execute(
            "INSERT INTO messages (inbox, dedup_key, source, envelope_to, size, received_at,"
            " state, conversation_id, message_id, sender, subject) VALUES ('support@example.com',"
            " '<m1@x>', 'smtp', '[]', 1, '2025-01-01T09:00:00.000000+00:00', 'routed', 1,"
            " 'm1@x', 'ann@example.org', 'Where is my order')"
        )
        conn.execute("INSERT INTO raw_mail (message, raw) VALUES (1, x'00')")
        conn.execute(
            "INSERT INTO events (conversation_id, at, kind, actor, agent)"
            " VALUES (1, '2025-01-01T09:00:00.000000+00:00', 'assigned', 'gateway', 'alice')"
        )
        conn.execute("INSERT INTO tags (conversation_id, tag) VALUES (1, 'billing')")
    return Path(path)


def add_conversation(
    conn: sqlite3.Connection,
    conversation_id: int,
    last_message_at: str,
    *,
    assignee: str | None = None,
    team: str | None = None,
    status: str = "open",
) -> None:
    conn.execute(
        "INSERT INTO conversations (id, inbox, customer, subject, thread_subject, assignee, team,"
        " status, created_at, last_message_at, message_count)"
        " VALUES (?, 'support@example.com', 'ann@example.org', 'Where is my order',"
        " 'where is my order', ?, ?, ?, ?, ?, 1)",
        (conversation_id, assignee, team, status, last_message_at, last_message_at),
    )


async def statements_of(path: Path, view: Callable[[Database], Any]) -> list[Statement]:
    """The SELECT statements `view` gives SQLite, with their parameters."""
    conn = await aiosqlite.connect(path, isolation_level=None)
    conn.row_factory = sqlite3.Row
    recording = Recording(conn)
    db = SqliteDatabase(recording, str(path))  # type: ignore[arg-type]
    try:
        await view(db)
    finally:
        await db.close()
    return [(sql, args) for sql, args in recording.statements if sql.startswith("SELECT")]


def plan(path: Path, statement: Statement) -> list[str]:
    sql, args = statement
    with sqlite3.connect(path) as conn:
        return [row[3] for row in conn.execute(f"EXPLAIN QUERY PLAN {sql}", args)]


def assert_index_walks(path: Path, statements: list[Statement]) -> list[list[str]]:
    """Every statement searches by a key; none reads a whole table or sorts what it found."""
    assert statements, "the view ran no query"
    plans = []
    for statement in statements:
        steps = plan(path, statement)
        assert any(step.startswith("SEARCH ") for step in steps), (statement, steps)
        for step in steps:
            assert not step.startswith("SCAN "), (statement, steps)
            # "TEMP B-TREE FOR RIGHT PART OF ORDER BY" sorts within one key (the
            # few tags of one conversation): that does not grow with the store.
            assert "TEMP B-TREE FOR ORDER BY" not in step, (statement, steps)
            assert "TEMP B-TREE FOR GROUP BY" not in step, (statement, steps)
        plans.append(steps)
    return plans


def assert_queue(path: Path, statements: list[Statement], index: str) -> None:
    """The list query walks `index` in waiting order and stops after a page."""
    plans = assert_index_walks(path, statements)
    sql, args = statements[0]
    assert sql.endswith("LIMIT ?") and args[-1] == PAGE, statements[0]
    walks = [step for step in plans[0] if step.startswith("SEARCH conversations")]
    assert walks and all(f"INDEX {index} " in step for step in walks), plans[0]


async def test_the_unassigned_queue_is_an_index_walk_in_waiting_order(store: Path) -> None:
    found = await statements_of(
        store, lambda db: views.conversations(db, status="open", unassigned=True, limit=PAGE)
    )
    assert_queue(store, found, "conversations_assignee")


async def test_an_agents_queue_is_an_index_walk_in_waiting_order(store: Path) -> None:
    found = await statements_of(
        store, lambda db: views.conversations(db, status="open", assignee="alice", limit=PAGE)
    )
    assert_queue(store, found, "conversations_assignee")


async def test_a_teams_queue_is_an_index_walk_in_waiting_order(store: Path) -> None:
    found = await statements_of(
        store, lambda db: views.conversations(db, status="open", team="billing", limit=PAGE)
    )
    assert_queue(store, found, "conversations_team")


async def test_the_open_conversations_are_an_index_walk_in_waiting_order(store: Path) -> None:
    found = await statements_of(
        store, lambda db: views.conversations(db, status="open", limit=PAGE)
    )
    assert_queue(store, found, "conversations_queue")


async def test_closed_conversations_are_an_index_walk_in_waiting_order(store: Path) -> None:
    found = await statements_of(
        store, lambda db: views.conversations(db, status="closed", limit=PAGE)
    )
    assert_queue(store, found, "conversations_queue")


async def test_every_status_merges_one_index_walk_per_status_without_sorting(
    store: Path,
) -> None:
    queues: list[dict[str, Any]] = [
        {},
        {"assignee": "alice"},
        {"team": "billing"},
        {"unassigned": True},
    ]
    for filters in queues:
        found = await statements_of(
            store, partial(views.conversations, status=None, limit=PAGE, **filters)
        )
        assert_index_walks(store, found)
        assert "MERGE (UNION ALL)" in plan(store, found[0]), filters


async def test_show_reads_one_conversation_by_its_keys(store: Path) -> None:
    found = await statements_of(store, lambda db: views.show(db, 1))
    plans = assert_index_walks(store, found)
    assert len(found) == 6  # the conversation, its tags, messages, events, texts and sizes
    assert "USING INTEGER PRIMARY KEY" in plans[0][0]


async def test_agents_counts_open_conversations_from_the_index_alone(
    store: Path, settings: Settings
) -> None:
    found = await statements_of(store, lambda db: views.agents(db, settings))
    # agent_status and rotations hold a row per agent or rotation: read whole, as they are.
    counts = [(sql, args) for sql, args in found if "FROM conversations" in sql]
    assert len(counts) == 1, found
    (steps,) = assert_index_walks(store, counts)
    assert all("COVERING INDEX conversations_assignee " in step for step in steps), steps


async def test_every_status_lists_oldest_waiting_first_up_to_the_limit(store: Path) -> None:
    with sqlite3.connect(store) as conn:
        for n, status in ((2, "closed"), (3, "open"), (4, "closed"), (5, "open")):
            add_conversation(conn, n, f"2024-12-0{n}T00:00:00.000000+00:00", status=status)
    db = await Database.open(str(store), readonly=True)
    try:
        everything = await views.conversations(db, status=None)
        first = await views.conversations(db, status=None, limit=3)
        closed = await views.conversations(db, status="closed", limit=1)
    finally:
        await db.close()
    assert [c["id"] for c in everything] == [2, 3, 4, 5, 1]
    assert [c["id"] for c in first] == [2, 3, 4]
    assert [c["id"] for c in closed] == [2]


async def test_a_long_list_asks_for_tags_in_batches_sqlite_accepts(store: Path) -> None:
    """Unpaged, a queue of 1,200 would have been one IN list of 1,200 parameters,
    past the 999 of older SQLite builds (32,766 now): 'too many SQL variables'."""
    with sqlite3.connect(store) as conn:
        for n in range(2, 1202):
            add_conversation(conn, n, f"2024-06-01T00:00:00.{n:06}+00:00")
            conn.execute("INSERT INTO tags (conversation_id, tag) VALUES (?, ?)", (n, f"t{n}"))
    found = await statements_of(store, lambda db: views.conversations(db, status="open"))
    assert max(len(args) for _, args in found) < 999
    db = await Database.open(str(store), readonly=True)
    try:
        listed = await views.conversations(db, status="open")
    finally:
        await db.close()
    assert len(listed) == 1201
    assert all(c["tags"] == ([f"t{c['id']}"] if c["id"] > 1 else ["billing"]) for c in listed)
