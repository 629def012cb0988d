"""The pure router: microseconds per message at 10, 1,000 and 10,000 rules, indexed and naive.

    .venv/bin/python -m bench.routing

The rules are a mix of customer domains, product keywords and phrases, desk
addresses, tagging rules and two-condition rules; the mail is made to match rules
in the last tenth of the list (or anywhere, with 10 rules), through subdomains,
other cases and +tags, and one message in five matches nothing and goes to the
rotation. Each round measures every size indexed then naive (`route(...,
naive=True)` checks every rule one by one), so the machine's noise falls on both;
the figure is the median of the rounds. Then 10,000 rules with a rotation of
1,000 agents with limits, half of them full and a tenth away, in rotation and in
balanced mode; the query that hands out the queue, on 100,000 waiting
conversations: its plan and time; and intake's cost per new conversation on a
real store with those 1,000 agents and 20,000 open conversations, the routing
state read once a batch against read for every message (as before).
"""

from __future__ import annotations

import asyncio
import logging
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gateway import alertmark, logs
from gateway.config import (
    Agent,
    GatewaySection,
    Inbox,
    NotifySection,
    RoundRobinSection,
    Rule,
    Settings,
)
from gateway.ingress.accept import Accept
from gateway.intake.worker import Intake
from gateway.model import Decision, Delivery, MailFacts, RawMail, RoutingState
from gateway.routing.rotation import GLOBAL
from gateway.routing.router import Policy, route
from gateway.routing.rules import compile_rules
from gateway.store import queries
from gateway.store.db import Database

SIZES = (10, 1_000, 10_000)
ROUNDS = 3
SECONDS = 0.4  # per size, mode and round
AGENTS = ("a1", "a2", "a3")
INBOX = "support@example.com"


def rule(i: int) -> Rule:
    """Rule i of a configuration: which kind it is depends on i modulo 10."""
    name, kind = f"rule {i}", i % 10
    if kind < 3:
        return Rule(name=name, sender_domain=[f"customer{i}.example"], assign_to="agent:a1")
    if kind < 6:
        words = [f"product{i} outage", f"SKU-{i}"]
        return Rule(name=name, subject_keywords=words, assign_to="team:ops")
    if kind == 6:
        return Rule(name=name, recipient=[f"desk{i}@example.com"], assign_to="agent:a2")
    if kind == 7:
        return Rule(name=name, subject_keywords=[f"priority{i}"], tags=["priority"])
    if kind == 8:
        domains = [f"partner{i}.example"]
        return Rule(name=name, sender_domain=domains, subject_keywords=["invoice"], tags=["ap"])
    return Rule(name=name, sender_domain=[f"vip{i}.example"], tags=["vip"])


def message(i: int, n: int) -> Delivery:
    """Mail for rule i (or, for i < 0, mail that no rule matches)."""
    sender, subject, to = "someone@mail.example.net", "Question about my order", (INBOX,)
    kind = i % 10
    if i < 0:
        pass
    elif kind < 3:
        sender = f"Jo@Support.Customer{i}.example".lower()
    elif kind < 6:
        subject = f"Re: PRODUCT{i}  Outage since this morning" if n % 2 else f"Broken sku-{i}!"
    elif kind == 6:
        to = (INBOX, f"Desk{i}+urgent@example.com")
    elif kind == 7:
        subject = f"[priority{i}] Question about my order"
    elif kind == 8:
        sender, subject = f"billing@partner{i}.example", f"Invoice {n} overdue"
    else:
        sender = f"ceo@vip{i}.example"
    domain = sender.rpartition("@")[2]
    facts = MailFacts(None, sender, "", domain, subject, to, (), None, None, None)
    return Delivery(facts, INBOX, (INBOX,))


def workload(size: int) -> tuple[Policy, list[Delivery]]:
    policy = Policy(
        compile_rules([rule(i) for i in range(size)]), {"ops": AGENTS}, round_robin=AGENTS
    )
    late = range(size - max(size // 10, 10), size)
    mail = [message(late[n * 7 % len(late)] if n % 5 else -1, n) for n in range(200)]
    return policy, mail


def per_message(one: Callable[[Delivery], Decision], mail: list[Delivery]) -> float:
    """Microseconds per message, routing the mail round and round for SECONDS."""
    done, started = 0, time.perf_counter()
    while True:
        for delivery in mail:
            one(delivery)
            done += 1
            elapsed = time.perf_counter() - started
            if elapsed >= SECONDS:
                return elapsed / done * 1e6


CROWD = 1_000  # agents in the rotation, each with a limit


def crowded(size: int, balanced: bool) -> tuple[Policy, RoutingState]:
    """`size` rules and a rotation of CROWD agents with a limit of 20: every other one
    full, every tenth away, so that a pick skips some on its way."""
    agents = tuple(f"agent{n}" for n in range(CROWD))
    policy = Policy(
        compile_rules([rule(i) for i in range(size)]),
        {"ops": AGENTS},
        round_robin=agents,
        limits=dict.fromkeys(agents, 20),
        balanced=frozenset({GLOBAL}) if balanced else frozenset(),
    )
    state = RoutingState(
        statuses={agent: "away" for agent in agents[::10]},
        last_served={GLOBAL: agents[CROWD // 2]},
        open={agent: 20 if n % 2 else n % 20 for n, agent in enumerate(agents)},
        last_assigned={agent: f"2026-11-30T{n % 24:02d}:00" for n, agent in enumerate(agents)},
    )
    return policy, state


def measure() -> str:
    return f"{rules()}\n\n{queue()}\n\n{crowd_intake()}"


def rules() -> str:
    state = RoutingState()
    workloads = {size: workload(size) for size in SIZES}
    for policy, mail in workloads.values():  # the same decisions, and the caches warm
        assert all(route(d, policy, state) == route(d, policy, state, naive=True) for d in mail)
    times: dict[tuple[int, bool], list[float]] = {}
    for _ in range(ROUNDS):
        for size, (policy, mail) in workloads.items():
            for naive in (False, True):

                def one(d: Delivery, p: Policy = policy, naive: bool = naive) -> Decision:
                    return route(d, p, state, naive=naive)

                times.setdefault((size, naive), []).append(per_message(one, mail))
    median = {key: statistics.median(found) for key, found in times.items()}
    lines = [
        "| rules | indexed µs/msg | naive µs/msg | indexed / indexed at 10 rules |",
        "| --- | --- | --- | --- |",
    ]
    for size in SIZES:
        indexed, naive = median[size, False], median[size, True]
        ratio = indexed / median[SIZES[0], False]
        lines.append(f"| {size:,} | {indexed:.1f} | {naive:,.1f} | {ratio:.2f} |")
    mail = workloads[SIZES[-1]][1]
    for mode in ("rotation", "balanced"):
        policy, crowd = crowded(SIZES[-1], mode == "balanced")

        def pick(d: Delivery, p: Policy = policy, s: RoutingState = crowd) -> Decision:
            return route(d, p, s)

        cost = statistics.median(per_message(pick, mail) for _ in range(ROUNDS))
        ratio = cost / median[SIZES[0], False]
        lines.append(
            f"| {SIZES[-1]:,} and {CROWD:,} agents with limits, half full, a tenth away"
            f" ({mode}) | {cost:.1f} | | {ratio:.2f} |"
        )
    return "\n".join(lines)


WAITING = 100_000


async def _oldest_of_the_queue() -> tuple[str, float]:
    """The plan of the query the hand-out runs for each queue, and its time, on a store
    where WAITING conversations wait in the rotation's queue and one in a team's."""
    with tempfile.TemporaryDirectory(prefix="bench-queue-") as folder:
        db = await Database.open(str(Path(folder) / "gateway.db"))
        try:
            rows = [
                (
                    "support@example.com",
                    f"c{n}@example.org",
                    "Question",
                    "question",
                    "2026-11-30T00:00",
                    "2026-11-30T00:00",
                    GLOBAL if n else "team:ops",
                    f"2026-11-30T{n // 3600 % 24:02d}:{n // 60 % 60:02d}:{n % 60:02d}",
                )
                for n in range(WAITING)
            ]
            async with db.transaction() as tx:
                await tx.run_many(
                    "INSERT INTO conversations (inbox, customer, subject, thread_subject,"
                    " created_at, last_message_at, message_count, queued_for, queued_at)"
                    " VALUES (?, ?, ?, ?, ?, ?, 1, ?, ?)",
                    rows,
                )
            async with db.transaction() as tx:  # as the hand-out runs it: inline, locked
                plan = await tx.all(
                    "EXPLAIN QUERY PLAN SELECT id, queued_at FROM conversations"
                    " WHERE queued_for = ? ORDER BY queued_at, id LIMIT 1",
                    (GLOBAL,),
                )
                started, runs = time.perf_counter(), 2_000
                for _ in range(runs):
                    await queries.oldest_waiting(tx, [GLOBAL, "team:ops"])
                seconds = (time.perf_counter() - started) / runs
        finally:
            await db.close()
    return "; ".join(str(row["detail"]) for row in plan), seconds


def queue() -> str:
    plan, seconds = asyncio.run(_oldest_of_the_queue())
    return (
        "| waiting conversations | the oldest of two queues (rotation, team) | plan |\n"
        "| --- | --- | --- |\n"
        f"| {WAITING:,} | {seconds * 1e6:.0f} µs (two index seeks, in a write transaction"
        f" as the hand-out runs them) | `{plan}` |"
    )


OPEN_EACH = 20  # open conversations of each of the CROWD agents
BURST = 300  # new messages routed in the measurement


class _Rereading(Intake):
    """Intake as it was: the routing state read again for every new conversation."""

    async def _open(self, *args: Any, **kwargs: Any) -> Any:
        self._state = None
        return await super()._open(*args, **kwargs)


def crowd_intake() -> str:
    kept, reread, alone = asyncio.run(_crowd_intake())
    return (
        f"| intake of {BURST} new conversations, {CROWD:,} agents with limits,"
        f" {CROWD * OPEN_EACH:,} open | per message |\n| --- | --- |\n"
        f"| batches of 100, the routing state read once a batch | {kept * 1e3:.2f} ms |\n"
        f"| batches of 100, read for every message (before) | {reread * 1e3:.2f} ms |\n"
        f"| one message a batch (a quiet desk: a read and a commit each) | {alone * 1e3:.2f} ms |"
    )


async def _crowd_intake() -> tuple[float, float, float]:
    logs.configure(logging.WARNING)  # a line a message would be the most of what is printed
    agents = [
        {"id": f"agent{n}", "email": f"agent{n}@example.com", "max_open": OPEN_EACH + 5}
        for n in range(CROWD)
    ]
    results = []
    for intake_class, batch in ((Intake, 100), (_Rereading, 100), (Intake, 1)):
        with tempfile.TemporaryDirectory(prefix="bench-crowd-") as folder:
            settings = Settings(
                gateway=GatewaySection(database=str(Path(folder) / "gateway.db")),
                round_robin=RoundRobinSection(enabled=True, agents=[a["id"] for a in agents]),
                agents=[Agent(**a) for a in agents],
                inboxes=[Inbox(address="support@example.com")],
                notify=NotifySection(enabled=False),
            )
            db = await Database.open(settings.gateway.database, create=True)
            try:
                results.append(await _route_burst(db, settings, intake_class, batch))
            finally:
                await db.close()
    return results[0], results[1], results[2]


async def _route_burst(db: Database, settings: Settings, kind: type[Intake], batch: int) -> float:
    at = "2026-11-30T00:00:00+00:00"
    async with db.transaction() as tx:
        secret = await alertmark.load_secret(tx)
        await tx.run_many(
            "INSERT INTO conversations (inbox, customer, subject, thread_subject, assignee,"
            " created_at, last_message_at, message_count) VALUES (?, ?, 's', 's', ?, ?, ?, 1)",
            [
                ("support@example.com", f"old{n}@example.org", f"agent{n % CROWD}", at, at)
                for n in range(CROWD * OPEN_EACH)
            ],
        )
    accept = Accept(db)
    for n in range(BURST):
        raw = (
            f"From: c{n}@example.org\r\nTo: support@example.com\r\nSubject: Case {n}\r\n"
            f"Message-ID: <crowd-{n}@example.org>\r\n\r\nbody\r\n"
        ).encode()
        await accept(RawMail("support@example.com", raw, "smtp", None, ("support@example.com",)))
    intake = kind(db, settings, secret)
    async with db.reading() as conn:
        pending = await queries.pending_messages(conn, BURST, 10**9)
    started = time.perf_counter()
    for start in range(0, len(pending), batch):
        await intake.process_batch(pending[start : start + batch])
    return (time.perf_counter() - started) / len(pending)


if __name__ == "__main__":
    print(measure())
