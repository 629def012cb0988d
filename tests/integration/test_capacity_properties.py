"""Capacity and absence over generated sequences of events, against the real store.

Agents with generated limits and statuses; mail arrives, conversations close,
agents go away and come back, people reassign, reloads change limits. After
every step the store is read and held to DESIGN §14: nobody took a conversation
from the rotation or the queue while away, dnd or full; the queue goes out
oldest first; and nothing waits while an agent of its rotation has room.
"""

from __future__ import annotations

import asyncio
import tempfile
from copy import deepcopy
from email.policy import SMTP
from pathlib import Path
from typing import Any

import pytest
import tomli_w
from hypothesis import example, given, settings
from hypothesis import strategies as st

from gateway import actions, alertmark, config
from gateway.config import Settings
from gateway.ingress.accept import Accept
from gateway.intake.worker import Intake
from gateway.model import RawMail
from gateway.store.db import Database
from tests.conftest import BASE, mail

pytestmark = pytest.mark.integration

AGENTS = ("alice", "bob", "carol")
DAVE = actions.Actor("dave", "cli")  # a supervisor at the command line
LIMIT = st.one_of(st.none(), st.integers(1, 2))
STATUS = st.sampled_from(["available", "away", "dnd"])
STEP = st.one_of(
    st.tuples(st.just("arrive")),  # twice as likely as each other step: queues form
    st.tuples(st.just("arrive")),
    st.tuples(st.just("close"), st.integers(0, 30)),
    st.tuples(st.just("status"), st.sampled_from(AGENTS), STATUS),
    st.tuples(st.just("reassign"), st.integers(0, 30), st.sampled_from(AGENTS)),
    st.tuples(st.just("reload"), st.sampled_from(AGENTS), LIMIT),
)


def desk_settings(folder: Path, limits: dict[str, int | None]) -> Settings:
    data: dict[str, Any] = deepcopy(BASE)
    data["gateway"]["database"] = str(folder / "gateway.db")
    data["agents"] = [
        {**agent, **({"max_open": limits[agent["id"]]} if limits[agent["id"]] else {})}
        for agent in BASE["agents"]
    ]
    path = folder / "gateway.toml"
    path.write_text(tomli_w.dumps(data))
    return config.load(path)


class Desk:
    def __init__(self, db: Database, settings: Settings, secret: bytes) -> None:
        self.db, self.settings, self.secret = db, settings, secret
        self.arrived = 0
        self.ever_queued: list[int] = []  # in the order they began to wait

    async def intake(self) -> None:
        await Intake(self.db, self.settings, self.secret).drain()

    async def arrive(self) -> None:
        raw = mail(f"question {self.arrived}", sender=f"c{self.arrived}@example.org")
        self.arrived += 1
        item = RawMail("support@example.com", raw.as_bytes(policy=SMTP), "smtp", "c@x.org", ())
        await Accept(self.db).together([(item, None)])
        await self.intake()

    async def rows(self) -> list[dict[str, Any]]:
        async with self.db.reading() as tx:
            found = await tx.all(
                "SELECT id, assignee, status, queued_for FROM conversations ORDER BY id"
            )
        return [dict(row) for row in found]

    async def statuses(self) -> dict[str, str]:
        async with self.db.reading() as tx:
            found = await tx.all("SELECT agent, status FROM agent_status")
        return {row["agent"]: row["status"] for row in found}

    async def given_by_gateway(self, after: int) -> list[tuple[int, str, str]]:
        """(conversation, agent, via) of every assignment by the rotation or the queue
        since event `after`."""
        async with self.db.reading() as tx:
            found = await tx.all(
                "SELECT conversation_id, agent, json_extract(detail, '$.via') FROM events"
                " WHERE id > ? AND kind = 'assigned'"
                " AND json_extract(detail, '$.via') IN ('round_robin', 'queue') ORDER BY id",
                (after,),
            )
        return [(row[0], row[1], row[2]) for row in found]

    async def last_event(self) -> int:
        async with self.db.reading() as tx:
            row = await tx.one("SELECT coalesce(max(id), 0) FROM events")
        assert row is not None
        return int(row[0])


async def check(desk: Desk, since: int) -> None:
    rows = await desk.rows()
    statuses = await desk.statuses()
    limits = {a.id: a.max_open for a in desk.settings.agents}
    open_ = {
        a: sum(1 for r in rows if r["assignee"] == a and r["status"] == "open") for a in AGENTS
    }

    def has_room(agent: str) -> bool:
        limit = limits[agent]
        available = statuses.get(agent, "available") == "available"
        return available and (limit is None or open_[agent] < limit)

    given = await desk.given_by_gateway(since)
    for conversation, agent, _ in given:
        # Taken while able: available now as then (a step changes one thing), and within
        # the limit once it had what it was given.
        assert statuses.get(agent, "available") == "available", (conversation, agent)
        limit = limits[agent]
        assert limit is None or open_[agent] <= limit, (agent, open_[agent], limit)
    waiting = [r["id"] for r in rows if r["queued_for"] is not None]
    for conversation in waiting:
        if conversation not in desk.ever_queued:
            desk.ever_queued.append(conversation)
    if waiting:
        assert not any(has_room(agent) for agent in AGENTS), (waiting, open_, statuses)
    # Oldest first: each handed out had waited longer than any still waiting.
    order = desk.ever_queued.index
    for conversation, _, via in given:
        if via == "queue":
            assert all(order(conversation) < order(still) for still in waiting)


async def run(limits: dict[str, int | None], start: dict[str, str], steps: list[tuple]) -> None:
    with tempfile.TemporaryDirectory(prefix="gateway-capacity-") as folder:
        desk_config = desk_settings(Path(folder), limits)
        db = await Database.open(desk_config.gateway.database)
        try:
            async with db.transaction() as tx:
                secret = await alertmark.load_secret(tx)
            desk = Desk(db, desk_config, secret)
            for agent, status in start.items():
                await actions.perform(db, desk_config, DAVE, actions.SetStatus(agent, status))
            for step in steps:
                since = await desk.last_event()
                rows = await desk.rows()
                if step[0] == "arrive":
                    await desk.arrive()
                elif step[0] == "close" and rows:
                    close = actions.Close(rows[step[1] % len(rows)]["id"])
                    await actions.perform(db, desk.settings, DAVE, close)
                elif step[0] == "status":
                    status_ = actions.SetStatus(step[1], step[2])
                    await actions.perform(db, desk.settings, DAVE, status_)
                elif step[0] == "reassign" and rows:
                    target = rows[step[1] % len(rows)]["id"]
                    await actions.perform(db, desk.settings, DAVE, actions.Assign(target, step[2]))
                elif step[0] == "reload":
                    limits = {**limits, step[1]: step[2]}
                    desk.settings = desk_settings(Path(folder), limits)
                    await desk.intake()  # a reload: the queues handed out again
                await check(desk, since)
        finally:
            await db.close()


@settings(max_examples=100, deadline=None)
@example(  # a queue of two, then room for one: the older goes
    limits=dict.fromkeys(AGENTS, 1), start={}, steps=[("arrive",)] * 5 + [("close", 0)]
)
@given(
    limits=st.fixed_dictionaries({agent: LIMIT for agent in AGENTS}),
    start=st.dictionaries(st.sampled_from(AGENTS), STATUS),
    steps=st.lists(STEP, max_size=25),
)
def test_capacity_and_absence_hold_after_every_step(
    limits: dict[str, int | None], start: dict[str, str], steps: list[tuple]
) -> None:
    asyncio.run(run(limits, start, steps))
