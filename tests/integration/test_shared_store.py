"""Several daemons sharing one PostgreSQL store (DESIGN §15), in one test process: each
mailbox polled by one of them, and what one process commits wakes the others' work."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from email.policy import SMTP
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from gateway.config import Settings
from tests.conftest import RunningDaemon, config_file, free_port, mail, wait_until
from tests.dovecot import Dovecot
from tests.integration.test_imap import connected, imap_inbox, raw

pytestmark = [pytest.mark.integration, pytest.mark.postgresql_only]


@pytest.fixture
def mailbox_settings(
    make_settings: Callable[..., Settings], dovecot: Dovecot, tmp_path: Path
) -> Settings:
    return make_settings(inboxes=[imap_inbox(dovecot, tmp_path, mode="poll", poll_interval=1)])


def gateway(settings: Settings, *args: str, stdin: bytes = b"") -> str:
    done = subprocess.run(
        [sys.executable, "-m", "gateway", *args, "--config", str(config_file(settings))],
        input=stdin,
        capture_output=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.decode()


def events(logs: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [entry for entry in logs if entry["event"] == name]


def test_a_mailbox_is_polled_by_one_daemon_and_check_says_which(
    mailbox_settings: Settings,
    start_daemon: Callable[..., RunningDaemon],
    dovecot: Dovecot,
) -> None:
    with capture_logs() as logs:
        first = start_daemon(mailbox_settings)
        connected(first)
        start_daemon(mailbox_settings)
        wait_until(lambda: events(logs, "imap.held_elsewhere"), what="the second to wait")
    assert len(events(logs, "imap.lease_taken")) == 1
    assert len(dovecot._sessions("support")) == 1  # one login to the mailbox, not two
    dovecot.append("support", raw("Printer on fire"))
    first.drain()
    wait_until(lambda: first.conversations(), what="the appended message routed")
    said = gateway(mailbox_settings, "check")
    assert "daemons:     2 running" in said
    assert "  routing:     by gateway " in said
    [line] = [line for line in said.splitlines() if line.strip().startswith("mailbox:")]
    assert "polled by gateway " in line


def test_another_daemon_takes_a_mailbox_over_when_its_poller_stops(
    mailbox_settings: Settings,
    start_daemon: Callable[..., RunningDaemon],
    dovecot: Dovecot,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("gateway.leading.LEASE_SECONDS", 0.2)
    with capture_logs() as logs:
        holder = start_daemon(mailbox_settings)
        connected(holder)
        waiting = start_daemon(mailbox_settings)
        wait_until(lambda: events(logs, "imap.held_elsewhere"), what="the second to wait")
        holder.stop()
        wait_until(lambda: len(events(logs, "imap.lease_taken")) == 2, what="the takeover")
    dovecot.append("support", raw("after the takeover"))
    wait_until(lambda: waiting.conversations(), what="the appended message routed")
    assert [c["subject"] for c in waiting.conversations()] == ["after the takeover"]


def test_mail_piped_by_gateway_ingest_wakes_a_daemons_intake_without_polling(
    make_settings: Callable[..., Settings],
    start_daemon: Callable[..., RunningDaemon],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("gateway.drainloop.SWEEP_SECONDS", 3600.0)  # no look of its own
    running = start_daemon(make_settings())
    piped = mail("through the pipe").as_bytes(policy=SMTP)
    gateway(running.settings, "ingest", "--to", "support@example.com", stdin=piped)
    wait_until(lambda: running.conversations(), what="the piped mail routed")
    assert running.conversations()[0]["assignee"] == "alice"


def test_an_alert_a_command_queued_wakes_a_daemons_outbox_without_polling(
    make_settings: Callable[..., Settings],
    start_daemon: Callable[..., RunningDaemon],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("gateway.drainloop.SWEEP_SECONDS", 3600.0)
    running = start_daemon(make_settings())
    running.send(mail("who takes it?"))
    running.drain()
    alerts = Path(running.settings.notify.file_dir)
    before = set(alerts.glob("*.eml"))
    gateway(running.settings, "assign", "1", "bob", "--by", "carol")
    wait_until(lambda: set(alerts.glob("*.eml")) - before, what="bob's alert written")
    [new] = set(alerts.glob("*.eml")) - before
    assert "bob@agents.test" in new.read_text()


def test_daemons_sharing_a_store_share_its_smtp_port(
    make_settings: Callable[..., Settings], start_daemon: Callable[..., RunningDaemon]
) -> None:
    port = free_port()
    settings = make_settings(smtp={"listen": [f"127.0.0.1:{port}"], "max_message_size": "1MB"})
    first, second = start_daemon(settings), start_daemon(settings)
    assert first.port == second.port == port
    for n in range(20):
        assert first.send(mail(f"question {n}")) == {}
    first.drain()
    assert len(first.conversations()) == 20


def test_an_alert_a_dead_process_held_goes_at_once_while_others_run(
    make_settings: Callable[..., Settings], start_daemon: Callable[..., RunningDaemon]
) -> None:
    """Its lease would end in two minutes: its holder has no session with the store left,
    so the outbox of a live daemon takes it now (while others run, none is alone)."""
    running = start_daemon(make_settings())
    running.send(mail("who takes it?"))
    running.drain()
    alerts = Path(running.settings.notify.file_dir)
    wait_until(lambda: list(alerts.glob("*.eml")), what="the first alert")
    [sent] = alerts.glob("*.eml")
    sent.unlink()
    running.query(  # as a process killed mid-attempt leaves it: pending, its lease running
        "UPDATE outbox SET state = 'pending', attempts = 0, due_at = ?,"
        " leased_by = 'gone.example:4242/0123456789ab',"
        " lease_until = '2999-01-01T00:00:00.000000+00:00' WHERE kind = 'alert'",
        ("2000-01-01T00:00:00.000000+00:00",),
    )
    wait_until(lambda: list(alerts.glob("*.eml")), what="the alert sent again")
    [row] = running.query("SELECT state, leased_by FROM outbox WHERE kind = 'alert'")
    assert (row["state"], row["leased_by"]) == ("done", None)


def test_one_daemon_routes_every_daemons_mail_and_another_takes_over_when_it_stops(
    make_settings: Callable[..., Settings],
    start_daemon: Callable[..., RunningDaemon],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Routing is one process's at a time (the rotation and threads are one order anyway):
    the others accept, and their mail wakes the one that routes."""
    monkeypatch.setattr("gateway.leading.LEASE_SECONDS", 0.2)
    settings = make_settings()
    with capture_logs() as logs:
        routing = start_daemon(settings)
        wait_until(lambda: events(logs, "intake.lease_taken"), what="the first to route")
        accepting = start_daemon(settings)
        wait_until(lambda: events(logs, "intake.held_elsewhere"), what="the second to wait")
        assert accepting.send(mail("to the one that does not route")) == {}
        wait_until(lambda: accepting.conversations(), what="that mail routed")
        routing.stop()
        wait_until(lambda: len(events(logs, "intake.lease_taken")) == 2, what="the takeover")
        assert accepting.send(mail("after the takeover")) == {}
        wait_until(lambda: len(accepting.conversations()) == 2, what="routed after it")
    assert [c["assignee"] for c in accepting.conversations()] == ["alice", "bob"]
