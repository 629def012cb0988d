"""Replies join their conversation, keep the assignee and are never routed again."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest

from gateway.config import Settings
from tests.conftest import RunningDaemon, config_file, mail

pytestmark = pytest.mark.integration


def first_message(running: RunningDaemon, subject: str = "Printer jams") -> tuple[str, str]:
    original = mail(subject, Message_ID="<first-1@customer.example.org>")
    running.send(original)
    running.drain()
    [conversation] = running.conversations()
    return "<first-1@customer.example.org>", conversation["assignee"]


def assert_joined(running: RunningDaemon, assignee: str) -> None:
    running.drain()
    [conversation] = running.conversations()
    assert conversation["message_count"] == 2
    assert conversation["assignee"] == assignee
    assert len(running.events(conversation["id"], "assigned")) == 1  # no new routing
    assert running.query("SELECT last_agent FROM rotations")[0][0] == assignee


def test_reply_by_in_reply_to_joins_and_keeps_the_assignee(daemon: RunningDaemon) -> None:
    original, assignee = first_message(daemon)
    daemon.send(mail("Something else entirely", In_Reply_To=original))
    assert_joined(daemon, assignee)


def test_reply_by_references_only_joins(daemon: RunningDaemon) -> None:
    original, assignee = first_message(daemon)
    daemon.send(mail("Unrelated words", References=f"<zzz@elsewhere> {original}"))
    assert_joined(daemon, assignee)


def test_reply_by_conversation_token_joins(daemon: RunningDaemon) -> None:
    _, assignee = first_message(daemon)
    daemon.send(mail("Different [#1] subject", sender="other@example.net"))
    assert_joined(daemon, assignee)


def test_reply_by_subject_fallback_joins(daemon: RunningDaemon) -> None:
    _, assignee = first_message(daemon)
    daemon.send(mail("RE: AW: Fwd:  printer   JAMS"))
    assert_joined(daemon, assignee)


def test_same_subject_from_another_customer_is_a_new_conversation(daemon: RunningDaemon) -> None:
    first_message(daemon)
    daemon.send(mail("Re: Printer jams", sender="someone.else@example.org"))
    daemon.drain()
    assert len(daemon.conversations()) == 2


def test_subject_fallback_stops_after_the_configured_days(
    make_settings: Callable[..., Settings], start_daemon: Callable[..., RunningDaemon]
) -> None:
    settings = make_settings(threading={"subject_fallback_days": 3})
    now = [datetime.now(UTC)]
    running = start_daemon(settings, clock=lambda: now[0])
    first_message(running)
    now[0] += timedelta(days=4)
    running.send(mail("Re: Printer jams"))
    running.drain()
    assert len(running.conversations()) == 2


def test_subject_fallback_off_with_zero_days(
    make_settings: Callable[..., Settings], start_daemon: Callable[..., RunningDaemon]
) -> None:
    running = start_daemon(make_settings(threading={"subject_fallback_days": 0}))
    first_message(running)
    running.send(mail("Re: Printer jams"))
    running.drain()
    assert len(running.conversations()) == 2


def test_reply_to_a_closed_conversation_reopens_it(daemon: RunningDaemon) -> None:
    original, assignee = first_message(daemon)
    daemon.query("UPDATE conversations SET status = 'closed'")
    daemon.send(mail("Re: Printer jams", In_Reply_To=original))
    daemon.drain()
    [conversation] = daemon.conversations()
    assert (conversation["status"], conversation["assignee"]) == ("open", assignee)
    assert len(daemon.events(conversation["id"], "reopened")) == 1


def test_an_auto_reply_or_an_agents_copy_does_not_reopen(daemon: RunningDaemon) -> None:
    original, _ = first_message(daemon)
    daemon.query("UPDATE conversations SET status = 'closed'")
    daemon.send(mail("Re: Printer jams", In_Reply_To=original, Auto_Submitted="auto-replied"))
    daemon.send(mail("Re: Printer jams", sender="alice@agents.test", In_Reply_To=original))
    daemon.drain()
    [conversation] = daemon.conversations()
    assert (conversation["status"], conversation["message_count"]) == ("closed", 3)
    assert daemon.events(conversation["id"], "reopened") == []


def test_token_of_another_inbox_does_not_join(daemon: RunningDaemon) -> None:
    first_message(daemon)
    daemon.send(mail("About [#1]", to="sales@example.com"), to=["sales@example.com"])
    daemon.drain()
    assert len(daemon.conversations()) == 2


def test_mail_without_a_sender_joins_but_neither_reopens_nor_alerts(
    daemon: RunningDaemon,
) -> None:
    """Nobody to answer (no From, no envelope sender, as a pipe may deliver): like an
    auto-reply it is kept with its conversation, and it wakes nobody."""
    original, _ = first_message(daemon)
    import subprocess
    import sys
    from email.policy import SMTP

    daemon.query("UPDATE conversations SET status = 'closed'")
    nobody = mail("Re: Printer jams", In_Reply_To=original)
    del nobody["From"]
    config = config_file(daemon.settings)
    command = ["ingest", "--to", "support@example.com", "--config", str(config)]
    piped = subprocess.run(
        [sys.executable, "-m", "gateway", *command], input=nobody.as_bytes(policy=SMTP)
    )
    assert piped.returncode == 0
    daemon.drain()
    [conversation] = daemon.conversations()
    assert (conversation["status"], conversation["message_count"]) == ("closed", 2)
    assert daemon.events(conversation["id"], "reopened") == []
    assert daemon.query("SELECT count(*) FROM outbox WHERE kind = 'alert'")[0][0] == 1
