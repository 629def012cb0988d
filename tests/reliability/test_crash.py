"""Crash safety: the daemon SIGKILLed at random moments loses and duplicates nothing.

Mail keeps coming (SMTP senders, a mail program appending over IMAP, or an
agent answering customers by replying to their alerts) while the daemon, a real
`gateway run` process, is killed with SIGKILL at random moments and started
again. After each kill the store it left is checked; at the end it is left to
drain, and the store is read with sqlite3: what was acknowledged is there once,
routed (or applied) once, and each alert and answer owed went out.

CRASH_KILLS=100 runs a longer schedule (default 15); the seed is printed, and
CRASH_SEED=<seed> replays the same kill moments (the mail's timing differs).
"""

from __future__ import annotations

import itertools
import random
import re
import sqlite3
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from email import message_from_bytes, policy
from email.message import EmailMessage
from email.policy import SMTP as SMTP_POLICY
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import BASE, Sink, free_port, smtp_notify, wait_until
from tests.dovecot import Dovecot
from tests.e2e.test_replies import reply, text_of
from tests.reliability.harness import (
    KILLS,
    SEED,
    Appender,
    Client,
    DaemonProcess,
    Mail,
    Sender,
    Writer,
    count,
    crash_repeatedly,
    drain,
    imap_inbox,
    message_bytes,
    query,
    write_config,
)

# The kills take under 2 s each; a drain takes about 5 s per 1,000 messages left.
pytestmark = [pytest.mark.integration, pytest.mark.timeout(120 + KILLS * 8)]

SENDERS = 4
ROTATION = ["alice", "bob", "carol"]
NOTIFIED = ["alice", "bob"]


@pytest.fixture
def rng() -> random.Random:
    print(f"crash schedule: CRASH_SEED={SEED} CRASH_KILLS={KILLS}")
    return random.Random(SEED)


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[DaemonProcess]:
    process = DaemonProcess(tmp_path / "gateway.toml", tmp_path / "daemon.log")
    yield process
    process.close()
    print(f"daemon log: {process.log_path}")


@pytest.fixture
def stop() -> Iterator[threading.Event]:
    """Set when the test is done, however it ends: the mail threads stop."""
    event = threading.Event()
    yield event
    event.set()


def settings(smtp_port: int, **sections: Any) -> dict[str, Any]:
    data = {**BASE, **sections}
    data["smtp"] = {
        **BASE["smtp"],
        "listen": [f"127.0.0.1:{smtp_port}"],
        # Every sender here is 127.0.0.1: its rate limit would test the throttle instead.
        "max_messages_per_minute_per_client": 0,
    }
    # Carol reads her queue: her turns owe no alert, so alerts owed are not just turns.
    data["agents"] = [{**agent, "notify": agent["id"] in NOTIFIED} for agent in BASE["agents"]]
    return data


def stored_keys(database: Path) -> set[str]:
    """Dedup keys (the Message-ID without <>) of what the store holds, pending or not."""
    if not database.exists():
        return set()  # killed before it opened the store
    try:
        return {row[0] for row in query(database, "SELECT dedup_key FROM messages")}
    except sqlite3.OperationalError:  # killed before the schema was made: nothing accepted
        return set()


def assert_pointer_names_the_last_turn(database: Path, kill: int) -> None:
    """The pointer moves in the transaction that assigns: a crash cannot part them."""
    if not stored_keys(database):
        return
    [row] = query(
        database,
        "SELECT (SELECT last_agent FROM rotations WHERE key = 'round_robin') AS pointer,"
        " (SELECT agent FROM events WHERE kind = 'assigned' ORDER BY id DESC LIMIT 1) AS last",
    )
    assert row["pointer"] == row["last"], f"kill {kill}: pointer {row['pointer']}, {row['last']}"


def assert_stored_once_and_routed(database: Path | str, expected: set[str], source: str) -> None:
    rows = query(
        database,
        "SELECT message_id, state, error, conversation_id FROM messages WHERE source = ?",
        (source,),
    )
    stored = Counter(row["message_id"] for row in rows)
    missing = expected - set(stored)
    assert not missing, f"{len(missing)} acknowledged but not stored: {sorted(missing)[:10]}"
    twice = {message_id: n for message_id, n in stored.items() if n > 1}
    assert not twice, f"stored more than once: {twice}"
    unrouted = [tuple(row) for row in rows if row["state"] != "routed"]
    assert not unrouted, f"{len(unrouted)} not routed: {unrouted[:10]}"
    # One conversation each: each message has its own customer, so none joins another.
    conversations = Counter(row["conversation_id"] for row in rows)
    assert len(conversations) == len(rows), "a conversation holds two messages"
    assert count(database, "SELECT count(*) FROM conversations") == count(
        database, "SELECT count(*) FROM messages"
    ), "a conversation without a message"


def assigned_once_each(database: Path | str) -> list[str]:
    """The agents assigned, in the order intake took the messages; one assignment each."""
    events = query(
        database,
        "SELECT e.conversation_id, e.agent, c.assignee FROM events e"
        " JOIN conversations c ON c.id = e.conversation_id"
        " WHERE e.kind = 'assigned' ORDER BY e.id",
    )
    per_conversation = Counter(event["conversation_id"] for event in events)
    twice = {c: n for c, n in per_conversation.items() if n > 1}
    assert not twice, f"conversations assigned more than once: {twice}"
    assert len(events) == count(database, "SELECT count(*) FROM conversations")
    assert all(event["agent"] == event["assignee"] for event in events)
    return [event["agent"] for event in events]


def assert_rotation_took_every_turn_in_order(agents: list[str]) -> None:
    """No crash made the rotation skip a turn or give one twice."""
    for n, (agent, following) in enumerate(itertools.pairwise(agents)):
        expected = ROTATION[(ROTATION.index(agent) + 1) % len(ROTATION)]
        assert following == expected, f"turn {n + 1}: {agent} then {following}"
    turns = Counter(agents)
    assert max(turns.values()) - min(turns.values()) <= 1, turns


def alerts_received(sink: Sink) -> dict[int, list[str]]:
    """The event id in X-Gateway-Notification → the Message-ID of each copy the sink got."""
    found: dict[int, list[str]] = {}
    for envelope in list(sink.received):
        alert = message_from_bytes(envelope.original_content or b"")
        event_id = int(str(alert["X-Gateway-Notification"]).split(".", 1)[0])
        found.setdefault(event_id, []).append(str(alert["Message-ID"]))
    return found


def test_smtp_mail_acknowledged_survives_sigkill_once_each_routed_once_and_alerted(
    tmp_path: Path,
    sink: Sink,
    rng: random.Random,
    daemon: DaemonProcess,
    stop: threading.Event,
) -> None:
    port = free_port()
    write_config(tmp_path, settings(port, notify=smtp_notify(sink.port)))
    database = tmp_path / "gateway.db"
    senders = [Sender(f"s{n}", port, stop) for n in range(SENDERS)]
    for sender in senders:
        sender.start()

    def after_kill(kill: int) -> None:
        # Nobody answers for the dead process now: every 250 it gave is final.
        acknowledged = [m for sender in senders for m in list(sender.acknowledged)]
        stored = stored_keys(database)
        lost = [message_id for message_id in acknowledged if message_id not in stored]
        assert not lost, f"kill {kill}: {len(lost)} acknowledged, not stored: {lost[:5]}"
        assert_pointer_names_the_last_turn(database, kill)

    crash_repeatedly(daemon, rng, KILLS, after_kill)
    wait_until(daemon.ready, what="the last start to be ready")
    stop.set()
    for sender in senders:
        sender.join(60)
    acknowledged = {m for sender in senders for m in sender.acknowledged}
    assert acknowledged, "no message got through: the kills came too soon to test anything"

    drain(
        database,
        "SELECT (SELECT count(*) FROM messages WHERE state = 'pending')"
        " + (SELECT count(*) FROM outbox WHERE state = 'pending')",
    )
    assert daemon.stop() == 0

    assert_stored_once_and_routed(database, acknowledged, "smtp")
    agents = assigned_once_each(database)
    assert_rotation_took_every_turn_in_order(agents)
    marks = ", ".join(f"'{agent}'" for agent in NOTIFIED)
    owed = {
        int(row["id"])
        for row in query(
            database, f"SELECT id FROM events WHERE kind = 'assigned' AND agent IN ({marks})"
        )
    }
    received = alerts_received(sink)
    missing = owed - set(received)
    assert not missing, f"{len(missing)} alerts owed never reached the sink: {sorted(missing)[:5]}"
    assert set(received) <= owed, "an alert nobody was owed"
    # A resend is recognisably the same alert: the same Message-ID every time.
    assert all(len(set(copies)) == 1 for copies in received.values())
    assert not daemon.log_lines("error"), daemon.log_lines("error")[:5]

    print(
        f"smtp: sent {sum(sender.attempts for sender in senders)} (again included),"
        f" acknowledged {len(acknowledged)},"
        f" stored {count(database, 'SELECT count(*) FROM messages')},"
        f" sent again after a lost answer and kept once {daemon.logged('message.duplicate')},"
        f" killed {KILLS} ({daemon.killed_while_starting} while starting),"
        f" turns {dict(Counter(agents))}, alerts owed {len(owed)},"
        f" delivered {len(received)}, delivered twice or more"
        f" {sum(len(copies) > 1 for copies in received.values())},"
        f" leases of a dead process released {daemon.logged('outbox.leases_released')} times"
    )


def test_imap_mail_appended_through_sigkills_is_stored_once_and_routed_none_skipped(
    tmp_path: Path,
    dovecot: Dovecot,
    rng: random.Random,
    daemon: DaemonProcess,
    stop: threading.Event,
) -> None:
    inbox = imap_inbox(dovecot, tmp_path)
    write_config(tmp_path, settings(free_port(), inboxes=[inbox], notify={"enabled": False}))
    database = tmp_path / "gateway.db"
    appender = Appender(dovecot.port, "support", dovecot.users["support"], stop)
    appender.start()
    killed_with_mail_waiting: list[int] = []

    def after_kill(kill: int) -> None:
        # The checkpoint moves only with the commit that stores: every UID up to it
        # (a fresh folder numbers them 1, 2, ...) is stored.
        if not stored_keys(database):
            return
        cursor = query(database, "SELECT last_uid FROM imap_cursors")
        checkpoint = cursor[0][0] if cursor else 0
        taken = count(
            database,
            "SELECT count(*) FROM imap_sources s JOIN messages m"
            " ON m.inbox = s.inbox AND m.dedup_key = s.dedup_key WHERE s.uid <= ?",
            (checkpoint,),
        )
        assert taken == checkpoint, f"kill {kill}: checkpoint {checkpoint}, stored {taken}"
        if len(appender.appended) > checkpoint:
            killed_with_mail_waiting.append(kill)

    crash_repeatedly(daemon, rng, KILLS, after_kill)
    stop.set()
    appender.join(60)
    assert appender.error is None, appender.error
    appended = set(appender.appended)

    drain(
        database,
        f"SELECT max(0, {len(appended)} - (SELECT count(*) FROM messages WHERE state != 'pending'))"
        " + (SELECT count(*) FROM messages WHERE state = 'pending')",
    )
    assert daemon.stop() == 0

    assert_stored_once_and_routed(database, appended, "imap")
    assert count(database, "SELECT count(*) FROM messages") == len(appended)
    assigned_once_each(database)
    # None skipped: every UID the folder holds is recorded as taken, once.
    uids = [row[0] for row in query(database, "SELECT uid FROM imap_sources ORDER BY uid")]
    assert uids == list(range(1, len(appended) + 1))
    assert query(database, "SELECT last_uid FROM imap_cursors")[0][0] == len(appended)
    assert not daemon.log_lines("error"), daemon.log_lines("error")[:5]
    routed = count(database, "SELECT count(*) FROM messages WHERE state = 'routed'")
    print(
        f"imap: appended {len(appended)},"
        f" stored {count(database, 'SELECT count(*) FROM messages')}, routed {routed},"
        f" fetched again after a kill and kept once {daemon.logged('message.duplicate')},"
        f" killed {KILLS} ({daemon.killed_while_starting} while starting,"
        f" {len(killed_with_mail_waiting)} with mail appended and not yet taken)"
    )


REPLIES = "replies@gw.test"
CUSTOMERS = 40
ANSWER_TEXT = re.compile(rb"Answer \d+ from \w+\.")


@dataclass(frozen=True)
class Alerted:
    customer: str
    agent: str  # the address the alert went to
    alert: EmailMessage


@dataclass(frozen=True)
class Owed:
    customer: str
    message_id: str  # the agent's mail's, without <>


def alerts_to_answer(daemon: DaemonProcess, port: int, sink: Sink) -> list[Alerted]:
    """CUSTOMERS customers write, each their own address and subject; once each one's
    alert has reached the sink the daemon stops. The alerts, in the customers' order."""
    daemon.start()
    wait_until(daemon.ready, what="the daemon to be ready")
    client = Client(port)
    customers = [f"c{n}@customers.test" for n in range(CUSTOMERS)]
    for n, customer in enumerate(customers):
        raw = message_bytes(f"c{n}@crash.test", customer)
        assert client.send(customer, ["support@example.com"], raw), customer
    client.close()
    wait_until(lambda: len(sink.received) >= CUSTOMERS, 60, "every customer's alert")
    assert daemon.stop() == 0
    found = {}
    for envelope in sink.received:
        alert = message_from_bytes(envelope.original_content or b"", policy=policy.default)
        assert isinstance(alert, EmailMessage)
        [agent] = envelope.rcpt_tos
        customer = str(alert["Subject"]).rsplit("Case ", 1)[1]
        found[customer] = Alerted(customer, agent, alert)
    return [found[customer] for customer in customers]


def answers_delivered(sink: Sink, customers: set[str]) -> dict[str, list[tuple[str, str]]]:
    """The text of each mail the sink got for a customer → (recipient, Message-ID) of each copy."""
    found: dict[str, list[tuple[str, str]]] = {}
    for envelope in list(sink.received):
        [recipient] = envelope.rcpt_tos
        if recipient not in customers:
            continue
        answer = message_from_bytes(envelope.original_content or b"", policy=policy.default)
        assert isinstance(answer, EmailMessage)
        text = text_of(answer).strip()
        found.setdefault(text, []).append((recipient, str(answer["Message-ID"])))
    return found


def test_answers_queued_and_sent_through_sigkills_reach_the_customer_at_least_once_none_lost(
    tmp_path: Path,
    sink: Sink,
    rng: random.Random,
    daemon: DaemonProcess,
    stop: threading.Event,
) -> None:
    port = free_port()
    data = settings(port, notify=smtp_notify(sink.port), replies={"address": REPLIES})
    data["agents"] = BASE["agents"]  # all alerted: every customer has an alert to answer
    write_config(tmp_path, data)
    database = tmp_path / "gateway.db"
    alerts = alerts_to_answer(daemon, port, sink)
    owed: dict[str, Owed] = {}  # the answer's text → whose it is

    def answer(n: int) -> Mail:
        """The agent's nth reply: to the alerts in order, round and round."""
        alerted = alerts[n % len(alerts)]
        text = f"Answer {n} from {alerted.agent.split('@')[0]}."
        message = reply(alerted.alert, text, sender=alerted.agent)
        owed[text] = Owed(alerted.customer, str(message["Message-ID"]).strip("<>"))
        raw = message.as_bytes(policy=SMTP_POLICY)
        return Mail(text, alerted.agent, [str(alerted.alert["Reply-To"])], raw)

    agent = Writer("agent", port, answer, stop)
    agent.start()
    killed_in_flight: list[int] = []

    def after_kill(kill: int) -> None:
        stored = stored_keys(database)
        lost = [t for t in list(agent.acknowledged) if owed[t].message_id not in stored]
        assert not lost, f"kill {kill}: {len(lost)} answers acknowledged, not stored: {lost[:5]}"
        in_flight = count(
            database,
            "SELECT (SELECT count(*) FROM messages WHERE inbox = ? AND state = 'pending')"
            " + (SELECT count(*) FROM outbox WHERE kind = 'answer' AND state = 'pending')",
            (REPLIES,),
        )
        if in_flight:
            killed_in_flight.append(kill)

    crash_repeatedly(daemon, rng, KILLS, after_kill)
    wait_until(daemon.ready, what="the last start to be ready")
    stop.set()
    agent.join(60)
    assert not agent.is_alive(), "the agent's last answer was never acknowledged"
    acknowledged = set(agent.acknowledged)
    assert acknowledged, "no answer got through: the kills came too soon to test anything"
    drain(
        database,
        "SELECT (SELECT count(*) FROM messages WHERE state = 'pending')"
        " + (SELECT count(*) FROM outbox WHERE state = 'pending')",
    )
    assert daemon.stop() == 0

    # Every answer tried was acknowledged (the agent finished its last): each is
    # stored once and applied, and made one answer, sent.
    rows = query(database, "SELECT message_id, state FROM messages WHERE inbox = ?", (REPLIES,))
    stored = Counter(row["message_id"] for row in rows)
    assert sorted(stored) == sorted(owed[text].message_id for text in acknowledged)
    assert set(stored.values()) == {1}, "an agent's mail stored twice"
    assert {row["state"] for row in rows} == {"applied"}, Counter(row["state"] for row in rows)
    answer_ids = {
        f"<{row[0]}>"
        for row in query(database, "SELECT message_id FROM messages WHERE source = 'agent'")
    }
    assert len(answer_ids) == len(acknowledged), "an agent's mail made no answer, or two"
    assert count(database, "SELECT count(*) FROM outbox WHERE state != 'done'") == 0

    customers = {alerted.customer for alerted in alerts}
    delivered = answers_delivered(sink, customers)
    missing = acknowledged - set(delivered)
    assert not missing, f"{len(missing)} answers never reached the customer: {sorted(missing)[:5]}"
    assert set(delivered) == acknowledged, "the customer got a text no agent wrote"
    for text, copies in delivered.items():
        assert {recipient for recipient, _ in copies} == {owed[text].customer}, (text, copies)
        [message_id] = {message_id for _, message_id in copies}  # a copy is the same answer
        assert re.fullmatch(r"<reply\.\d+@gw\.test>", message_id), message_id
    # Each Message-ID is one answer, and the ones the store made are the ones delivered.
    sent_as = Counter(copies[0][1] for copies in delivered.values())
    assert set(sent_as.values()) == {1}, "two answers under one Message-ID"
    assert set(sent_as) == answer_ids
    # No answer's words reached anyone but its customer; the agents got their alerts alone.
    for envelope in sink.received:
        for found in ANSWER_TEXT.findall(envelope.original_content or b""):
            assert envelope.rcpt_tos == [owed[found.decode()].customer], (found, envelope.rcpt_tos)
    assert sum(envelope.rcpt_tos[0] not in customers for envelope in sink.received) == CUSTOMERS
    assert not daemon.log_lines("error"), daemon.log_lines("error")[:5]

    print(
        f"answers: sent {agent.attempts} (again included), acknowledged {len(acknowledged)},"
        f" to {CUSTOMERS} customers, sent again after a lost answer and kept once"
        f" {daemon.logged('message.duplicate')}, delivered {len(delivered)},"
        f" delivered twice or more {sum(len(copies) > 1 for copies in delivered.values())},"
        f" killed {KILLS} ({daemon.killed_while_starting} while starting,"
        f" {len(killed_in_flight)} with answers not yet taken or sent)"
    )
