"""Several `gateway run` processes on one PostgreSQL database (DESIGN §15).

Three real processes share one database, each its own configuration file that differs
from the others' only in the SMTP port. Mail comes to all three at once; what the store
holds at the end is one fair rotation, each message stored and routed once, each alert
sent. Alerts go by SMTP to one real aiosmtpd sink: the outbox counts an alert sent when
a peer answered 250, and the sink sees every copy with its Message-ID, whichever
process sent it (a shared folder of files would not tell a copy sent twice from two).

CRASH_SEED=<seed> replays the kill schedule of the second test (the mail's timing differs).
"""

from __future__ import annotations

import functools
import random
import statistics
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import BASE, Sink, free_port, smtp_notify, wait_until
from tests.dovecot import Dovecot
from tests.reliability.harness import (
    LONGEST_LIFE,
    SEED,
    Appender,
    Client,
    DaemonProcess,
    Sender,
    count,
    drain,
    imap_inbox,
    message_bytes,
    query,
    write_config,
)
from tests.reliability.test_crash import (
    alerts_received,
    assert_rotation_took_every_turn_in_order,
    assert_stored_once_and_routed,
    assigned_once_each,
)

pytestmark = [pytest.mark.integration, pytest.mark.postgresql]

PROCESSES = 3
MESSAGES = 3000
CONNECTIONS_PER_PORT = 4
KILLS = 10
SENDERS_PER_PORT = 2
# Waiting for another process to take the mailbox over: a guard against a hang, not a
# measure (the others try every LEASE_SECONDS; the delays are reported).
TAKEOVER_GUARD = 60.0
OUTSTANDING = (
    "SELECT (SELECT count(*) FROM messages WHERE state = 'pending')"
    " + (SELECT count(*) FROM outbox WHERE state = 'pending')"
)


class Group:
    """PROCESSES `gateway run` processes on one database, each its own configuration file
    and SMTP port."""

    def __init__(self, folder: Path, database: str) -> None:
        self.folder = folder
        self.database = database
        self.ports = [free_port() for _ in range(PROCESSES)]
        self.daemons: list[DaemonProcess] = []

    def start(self, **sections: Any) -> None:
        for n, port in enumerate(self.ports):
            folder = self.folder / f"gateway{n}"
            folder.mkdir()
            config = write_config(folder, settings(self.database, port, **sections))
            daemon = DaemonProcess(config, folder / "daemon.log")
            self.daemons.append(daemon)
            daemon.start()
        for daemon in self.daemons:
            wait_until(daemon.ready, 60, "every process to be ready")

    def stop(self) -> None:
        """SIGTERM each, as systemd stops them: each exits 0, having logged no error."""
        for daemon in self.daemons:
            assert daemon.stop() == 0, daemon.log_path
        for daemon in self.daemons:
            assert not daemon.log_lines("error"), daemon.log_lines("error")[:5]

    def close(self) -> None:
        for daemon in self.daemons:
            daemon.close()
            print(f"daemon log: {daemon.log_path}")


@pytest.fixture
def group(tmp_path: Path, postgres_url: str) -> Iterator[Group]:
    processes = Group(tmp_path, postgres_url)
    yield processes
    processes.close()


@pytest.fixture
def stop() -> Iterator[threading.Event]:
    """Set when the test is done, however it ends: the mail threads stop."""
    event = threading.Event()
    yield event
    event.set()


def settings(database: str, smtp_port: int, **sections: Any) -> dict[str, Any]:
    data = {**BASE, **sections}
    data["gateway"] = {**BASE["gateway"], "database": database}
    data["smtp"] = {
        **BASE["smtp"],
        "listen": [f"127.0.0.1:{smtp_port}"],
        # Every sender here is 127.0.0.1: its rate limit would test the throttle instead.
        "max_messages_per_minute_per_client": 0,
    }
    return data


def send(port: int, name: str, messages: int) -> list[str]:
    """`messages` new customers' mail on one connection; the Message-IDs not answered 250."""
    client = Client(port)
    refused = []
    for number in range(messages):
        message_id = f"{name}.{number}@processes.test"
        customer = f"{name}.{number}@customers.test"
        if not client.send(customer, ["support@example.com"], message_bytes(message_id, customer)):
            refused.append(message_id)
    client.close()
    return refused


def assert_every_alert_sent(database: str, sink: Sink) -> dict[int, list[str]]:
    """Every assignment's alert reached the sink, none unowed, each copy with one Message-ID;
    what the sink received, by event."""
    owed = {int(row[0]) for row in query(database, "SELECT id FROM events WHERE kind = 'assigned'")}
    received = alerts_received(sink)
    missing = owed - set(received)
    assert not missing, f"{len(missing)} alerts owed never reached the sink: {sorted(missing)[:5]}"
    assert set(received) <= owed, "an alert nobody was owed"
    assert all(len(set(copies)) == 1 for copies in received.values())
    return received


@pytest.mark.timeout(300)
def test_three_processes_store_route_and_alert_3000_messages_once_each_in_one_rotation(
    group: Group, sink: Sink
) -> None:
    group.start(notify=smtp_notify(sink.port))
    per_connection = MESSAGES // (PROCESSES * CONNECTIONS_PER_PORT)
    began = time.monotonic()
    with ThreadPoolExecutor(PROCESSES * CONNECTIONS_PER_PORT) as pool:
        refused = [
            pool.submit(send, port, f"p{p}c{c}", per_connection)
            for p, port in enumerate(group.ports)
            for c in range(CONNECTIONS_PER_PORT)
        ]
        not_acknowledged = [m for future in refused for m in future.result()]
    accepted = time.monotonic() - began
    assert not not_acknowledged, f"{len(not_acknowledged)} refused: {not_acknowledged[:5]}"
    drain(group.database, OUTSTANDING)
    done = time.monotonic() - began
    group.stop()

    sent = {
        f"p{p}c{c}.{n}@processes.test"
        for p in range(PROCESSES)
        for c in range(CONNECTIONS_PER_PORT)
        for n in range(per_connection)
    }
    assert count(group.database, "SELECT count(*) FROM messages") == MESSAGES
    assert_stored_once_and_routed(group.database, sent, "smtp")
    agents = assigned_once_each(group.database)
    # Every assignment holds the rotation's row: across processes the turns are one
    # rotation, in order, so within one of fair.
    assert_rotation_took_every_turn_in_order(agents)
    received = assert_every_alert_sent(group.database, sink)
    twice = {event: copies for event, copies in received.items() if len(copies) > 1}
    assert not twice, f"{len(twice)} alerts sent more than once: {list(twice.items())[:3]}"
    once = count(
        group.database,
        "SELECT count(*) FROM outbox WHERE kind = 'alert' AND state = 'done' AND attempts = 1",
    )
    assert once == MESSAGES, f"{MESSAGES - once} alerts not done at their first attempt"

    print(
        f"3 processes: {MESSAGES} messages accepted in {accepted:.1f} s,"
        f" stored, routed and alerted in {done:.1f} s; turns {dict(Counter(agents))}"
    )


@pytest.fixture
def rng() -> random.Random:
    print(f"kill schedule: CRASH_SEED={SEED}")
    return random.Random(SEED)


def lease_taken(daemon: DaemonProcess) -> list[datetime]:
    """When `daemon` took the mailbox's lease, over all its runs."""
    return [datetime.fromisoformat(line["timestamp"]) for line in daemon.events("imap.lease_taken")]


def outstanding(database: str, appended: set[str]) -> str:
    """What keeps a drain from ending: what a failure shows."""
    pending = query(database, "SELECT id, message_id FROM messages WHERE state = 'pending'")
    outbox = query(
        database,
        "SELECT id, kind, attempts, due_at, last_error, leased_by, lease_until FROM outbox"
        " WHERE state = 'pending'",
    )
    stored = {row[0] for row in query(database, "SELECT dedup_key FROM messages")}
    return (
        f"pending messages {[tuple(row) for row in pending]},"
        f" pending outbox rows {[tuple(row) for row in outbox]},"
        f" appended and not stored {sorted(appended - stored)}"
    )


def lease_history(group: Group) -> list[str]:
    """Each process's kills and takings of the lease, in time order: what a failure shows."""
    lines = [
        (line["timestamp"], f"gateway{n} {line['event']}")
        for n, daemon in enumerate(group.daemons)
        for event in ("test.killed", "imap.lease_taken")
        for line in daemon.events(event)
    ]
    return [f"{when} {what}" for when, what in sorted(lines)]


def taken_over(
    group: Group, victim: DaemonProcess, since: dict[int, int]
) -> tuple[DaemonProcess, datetime] | None:
    """Which live process took the lease the victim had, and when, once one has; `since`
    is how many times each had taken it before."""
    for n, daemon in enumerate(group.daemons):
        if daemon is not victim and len(taken := lease_taken(daemon)) > since[n]:
            return daemon, taken[-1]
    return None


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_one_of_three_processes_sigkilled_ten_times_loses_and_repeats_nothing_mailbox_taken_over(
    group: Group, sink: Sink, dovecot: Dovecot, rng: random.Random, stop: threading.Event
) -> None:
    inbox = imap_inbox(dovecot, group.folder)
    group.start(notify=smtp_notify(sink.port), inboxes=[inbox])
    holder = wait_until(
        lambda: next((d for d in group.daemons if lease_taken(d)), None),
        TAKEOVER_GUARD,
        "a process to take the mailbox's lease",
    )
    senders = [
        Sender(f"p{p}s{s}", port, stop)
        for p, port in enumerate(group.ports)
        for s in range(SENDERS_PER_PORT)
    ]
    appender = Appender(dovecot.port, "support", dovecot.users["support"], stop)
    for writer in [*senders, appender]:
        writer.start()

    takeovers: list[float] = []
    # Alerts a killed process held leased: a live outbox releases them, their holder dead.
    left_leased = 0
    for kill in range(1, KILLS + 1):
        time.sleep(rng.uniform(0.05, LONGEST_LIFE))  # the only sleep: it picks the moment
        # Every other kill takes the mailbox's holder down; the rest a process at random.
        victim = holder if kill % 2 else rng.choice(group.daemons)
        since = {n: len(lease_taken(daemon)) for n, daemon in enumerate(group.daemons)}
        pid = victim.pid
        killed_at = victim.kill()
        # The others go on answering, but every 250 given so far was given after its commit.
        acknowledged = [m for sender in senders for m in list(sender.acknowledged)]
        stored = {row[0] for row in query(group.database, "SELECT dedup_key FROM messages")}
        lost = [message_id for message_id in acknowledged if message_id not in stored]
        assert not lost, f"kill {kill}: {len(lost)} acknowledged, not stored: {lost[:5]}"
        left_leased += count(
            group.database,
            "SELECT count(*) FROM outbox WHERE state = 'pending' AND leased_by LIKE ?",
            (f"%:{pid}/%",),
        )
        if victim is holder:
            holder, taken_at = wait_until(
                functools.partial(taken_over, group, victim, since),
                TAKEOVER_GUARD,
                f"kill {kill}: another process to take the mailbox over",
            )
            takeovers.append((taken_at - killed_at).total_seconds())
        victim.start()  # as systemd restarts it

    for daemon in group.daemons:
        wait_until(daemon.ready, 60, "every process to be ready")
    stop.set()
    for writer in [*senders, appender]:
        writer.join(60)
    assert appender.error is None, appender.error
    acknowledged = {m for sender in senders for m in sender.acknowledged}
    appended = set(appender.appended)
    assert acknowledged and appended, "no mail got through: nothing was tested"
    # An alert a killed process held leased goes at once: its holder has no session left
    # (not after its two-minute lease), so the drain's usual stall bound holds.
    try:
        drain(
            group.database,
            f"{OUTSTANDING} + GREATEST(0, {len(appended)}"
            " - (SELECT count(*) FROM messages WHERE source = 'imap'))",
        )
    except AssertionError as stuck:
        raise AssertionError(f"{stuck}; {outstanding(group.database, appended)}") from None
    group.stop()

    assert_stored_once_and_routed(group.database, acknowledged, "smtp")
    assert_stored_once_and_routed(group.database, appended, "imap")
    # None skipped, none taken twice, whichever process held the mailbox.
    uids = [row[0] for row in query(group.database, "SELECT uid FROM imap_sources ORDER BY uid")]
    assert uids == list(range(1, len(appended) + 1))
    assert query(group.database, "SELECT last_uid FROM imap_cursors")[0][0] == len(appended)
    agents = assigned_once_each(group.database)
    assert_rotation_took_every_turn_in_order(agents)
    received = assert_every_alert_sent(group.database, sink)
    # The lease moved only with a kill of its holder: one process polled at a time.
    assert sum(len(lease_taken(daemon)) for daemon in group.daemons) == 1 + len(takeovers), (
        lease_history(group)
    )
    assert not any(daemon.logged("imap.lease_lost") for daemon in group.daemons)

    twice = sum(len(copies) > 1 for copies in received.values())
    print(
        f"kills {KILLS} ({sum(d.killed_while_starting for d in group.daemons)} while starting),"
        f" smtp: sent {sum(sender.attempts for sender in senders)} (again included),"
        f" acknowledged {len(acknowledged)}, imap: appended {len(appended)};"
        f" stored {count(group.database, 'SELECT count(*) FROM messages')},"
        f" sent again after a lost answer and kept once"
        f" {sum(d.logged('message.duplicate') for d in group.daemons)};"
        f" turns {dict(Counter(agents))}; alerts owed {len(received)}, delivered twice {twice},"
        f" left leased by a killed process {left_leased};"
        f" takeovers {len(takeovers)}: min {min(takeovers):.2f} s,"
        f" median {statistics.median(takeovers):.2f} s, max {max(takeovers):.2f} s"
    )
