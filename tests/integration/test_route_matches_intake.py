"""`gateway route` (the dry run) decides exactly what intake then does, for any rules and mail."""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path
from typing import Any

import tomli_w
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway import alertmark, config, views
from gateway.ingress.accept import Accept
from gateway.intake.worker import Intake
from gateway.model import RawMail
from gateway.store import queries
from gateway.store.db import Database
from tests.conftest import BASE

CONDITIONS = st.fixed_dictionaries(
    {},
    optional={
        "sender_domain": st.lists(
            st.sampled_from(["acme.com", "b.org", "mail.acme.com"]),
            min_size=1,
            max_size=2,
            unique=True,
        ),
        "subject_keywords": st.lists(
            st.sampled_from(["refund", "late invoice", "urgent"]),
            min_size=1,
            max_size=2,
            unique=True,
        ),
        "recipient": st.lists(
            st.sampled_from(["support@example.com", "sales@example.com", "support@gw.test"]),
            min_size=1,
            max_size=1,
        ),
    },
)
TARGETS = st.sampled_from(["agent:alice", "agent:bob", "team:billing", None])
RULES = st.lists(st.tuples(CONDITIONS, TARGETS, st.booleans()), max_size=5)
MESSAGES = st.lists(
    st.tuples(
        st.sampled_from(["Refund please", "A LATE invoice", "urgent!", "hello", "Re: hello"]),
        st.sampled_from(["a@acme.com", "b@mail.acme.com", "c@b.org", "d@elsewhere.net"]),
        st.sampled_from(["support@example.com", "sales@example.com", "support@gw.test"]),
        st.sampled_from([None, "auto-replied"]),
        st.booleans(),  # whether the To header names the envelope recipient
        st.sampled_from([None, "", "bounces@example.org"]),  # envelope sender; "" is <>
    ),
    min_size=1,
    max_size=6,
)
STATUSES = st.dictionaries(
    st.sampled_from(["alice", "bob", "carol"]), st.sampled_from(["available", "away", "dnd"])
)
# Capacity (DESIGN §14): each agent's max_open, the rotation's mode, what a rule naming an
# absent agent does.
CAPACITY = st.fixed_dictionaries(
    {
        "limits": st.fixed_dictionaries(
            {agent: st.sampled_from([0, 1, 2]) for agent in ("alice", "bob", "carol")}
        ),
        "mode": st.sampled_from(["rotation", "balanced"]),
        "rule_agent_away": st.sampled_from(["assign", "next", "unassign"]),
    }
)


def rule_table(rules: list[tuple[dict[str, list[str]], str | None, bool]]) -> list[dict[str, Any]]:
    table = []
    for n, (conditions, target, tagged) in enumerate(rules):
        rule: dict[str, Any] = {"name": f"rule {n}", **conditions}
        if target is not None:
            rule["assign_to"] = target
        if tagged or target is None:
            rule["tags"] = [f"t{n}"]
        table.append(rule)
    return table


async def compare(
    folder: Path,
    rules: list[dict[str, Any]],
    messages: list[Any],
    statuses: dict[str, str],
    rotation: bool,
    capacity: dict[str, Any],
) -> None:
    data = {
        **BASE,
        "rules": rules,
        "round_robin": {
            "enabled": rotation,
            "agents": ["alice", "bob", "carol"],
            "mode": capacity["mode"],
        },
        "agents": [
            {**agent, "max_open": capacity["limits"][agent["id"]]} for agent in BASE["agents"]
        ],
        "routing": {"rule_agent_away": capacity["rule_agent_away"]},
    }
    (folder / "gateway.toml").write_text(tomli_w.dumps(data))
    gateway = config.load(folder / "gateway.toml")
    db = await Database.open(gateway.gateway.database)
    try:
        async with db.transaction() as conn:
            secret = await alertmark.load_secret(conn)
            for agent, status in statuses.items():
                await queries.set_agent_status(conn, agent, status, "2026-01-01T00:00:00+00:00")
        intake = Intake(db, gateway, secret)
        for n, (subject, sender, to, auto, to_header, envelope) in enumerate(messages):
            header = to if to_header else "Someone <someone@example.org>"
            message = (
                f"From: {sender}\r\nTo: {header}\r\nSubject: {subject}\r\n"
                f"Message-ID: <m{n}@test>\r\n"
            )
            if auto:
                message += f"Auto-Submitted: {auto}\r\n"
            raw = (message + "\r\nbody\r\n").encode()
            said = await views.explain_route(db, gateway, raw, to, envelope)
            inbox = gateway.inbox_for(to)
            assert inbox is not None
            await Accept(db)(RawMail(inbox, raw, "ingest", envelope, (to,)))
            await intake.drain()
            async with db.reading() as conn:
                rows = await queries.list_conversations(conn, status=None)
                done = max(rows, key=lambda r: r.last_message_at)
                tags = (await queries.tags_of(conn, [done.id]))[done.id]
                events = await queries.events_of(conn, done.id)
                assigned = [e for e in events if e.kind == "assigned"]
            if said["joins"] is not None:
                assert done.id == said["joins"] and done.message_count > 1
                continue
            assert done.message_count == 1
            assert (done.assignee, done.team) == (said["assignee"], said["team"])
            assert sorted(tags) == sorted(said["tags"])
            assert [e.rule for e in assigned] == ([said["rule"]] if said["assignee"] else [])
            [received] = [e for e in events if e.kind == "received"]
            assert received.detail["route"] == said["reason"]
    finally:
        await db.close()


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    rules=RULES,
    messages=MESSAGES,
    statuses=STATUSES,
    rotation=st.booleans(),
    capacity=CAPACITY,
)
def test_route_gives_the_decision_intake_then_takes(
    rules: list[tuple[dict[str, list[str]], str | None, bool]],
    messages: list[Any],
    statuses: dict[str, str],
    rotation: bool,
    capacity: dict[str, Any],
) -> None:
    with tempfile.TemporaryDirectory() as folder:
        table = rule_table(rules)
        asyncio.run(compare(Path(folder), table, messages, statuses, rotation, capacity))
