"""Assignment alerts at a real SMTP sink, and the mail that must not be routed like a customer's."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path

import pytest

from gateway.config import Settings
from tests.conftest import (
    RunningDaemon,
    Sink,
    free_port,
    hold_oldest_alert,
    mail,
    smtp_notify,
    wait_until,
)

pytestmark = pytest.mark.integration

RULES = [
    {"name": "ACME is Alice's", "sender_domain": ["acme.com"], "assign_to": "agent:alice"},
    {"name": "Quiet Carol", "sender_domain": ["quiet.test"], "assign_to": "agent:carol"},
]


def parsed(envelope: object) -> EmailMessage:
    data = envelope.original_content  # type: ignore[attr-defined]
    result = message_from_bytes(data, policy=policy.default)
    assert isinstance(result, EmailMessage)
    return result


@pytest.fixture
def alerting(
    make_settings: Callable[..., Settings], start_daemon: Callable[..., RunningDaemon], sink: Sink
) -> RunningDaemon:
    return start_daemon(make_settings(notify=smtp_notify(sink.port), rules=RULES))


def test_alert_has_the_designed_headers_and_contents(alerting: RunningDaemon, sink: Sink) -> None:
    alerting.send(
        mail("Rocket exploded", sender="Wile E. <wile@acme.com>", body="It went boom.\nTwice.\n")
    )
    alerting.drain()
    [envelope] = wait_until(lambda: sink.received, what="the alert")
    assert envelope.rcpt_tos == ["alice@agents.test"]
    alert = parsed(envelope)
    [assigned] = alerting.events(1, "assigned")
    assert alert["Subject"] == "[#1] Assigned: Rocket exploded"
    assert alert["To"].addresses[0].addr_spec == "alice@agents.test"
    assert alert["Reply-To"].addresses[0].addr_spec == "wile@acme.com"
    assert alert["Auto-Submitted"] == "auto-generated"
    assert alert["X-Gateway-Conversation"] == "1"
    assert alert["X-Gateway-Notification"].startswith(f"{assigned['id']}.")
    assert alert["Message-ID"] == f"<alert.{assigned['id']}@gw.test>"
    text = alert.get_body(preferencelist=("plain",)).get_content()
    assert "assigned to you by rule 'ACME is Alice's'" in text
    assert "wile@acme.com" in text and "It went boom." in text
    assert "gateway show 1" in text
    [attached] = [part for part in alert.iter_attachments()]
    assert attached.get_content_type() == "message/rfc822"
    assert attached.get_content()["Subject"] == "Rocket exploded"
    [notified] = alerting.events(1, "notified")
    assert notified["agent"] == "alice"


def test_subject_with_cr_lf_cannot_inject_a_header(alerting: RunningDaemon, sink: Sink) -> None:
    raw = (
        b"From: wile@acme.com\r\nTo: support@example.com\r\nMessage-ID: <inj@acme.com>\r\n"
        b"Subject: =?utf-8?q?Hi=0D=0ABcc:_evil@attacker.test=0D=0AX-Evil:_1?=\r\n\r\nbody\r\n"
    )
    alerting.send(raw)
    alerting.drain()
    [envelope] = wait_until(lambda: sink.received, what="the alert")
    assert envelope.rcpt_tos == ["alice@agents.test"]
    alert = parsed(envelope)
    assert alert["Bcc"] is None and alert["X-Evil"] is None
    assert "\n" not in alert["Subject"] and "\r" not in alert["Subject"]
    assert alert["Subject"].startswith("[#1] Assigned: Hi")


def test_agent_with_notify_false_gets_no_alert(
    make_settings: Callable[..., Settings], start_daemon: Callable[..., RunningDaemon], sink: Sink
) -> None:
    agents = [
        {"id": "alice", "email": "alice@agents.test"},
        {"id": "bob", "email": "bob@agents.test"},
        {"id": "carol", "email": "carol@agents.test", "notify": False},
    ]
    running = start_daemon(make_settings(notify=smtp_notify(sink.port), rules=RULES, agents=agents))
    running.send(mail(sender="someone@quiet.test"))
    running.send(mail(sender="wile@acme.com"))  # alice's alert shows the worker ran
    running.drain()
    wait_until(lambda: sink.received, what="alice's alert")
    assert [e.rcpt_tos for e in sink.received] == [["alice@agents.test"]]
    assert running.conversations()[0]["assignee"] == "carol"


def test_global_switch_off_sends_no_alert(
    make_settings: Callable[..., Settings], start_daemon: Callable[..., RunningDaemon], sink: Sink
) -> None:
    running = start_daemon(make_settings(notify=smtp_notify(sink.port, enabled=False), rules=RULES))
    running.send(mail(sender="wile@acme.com"))
    running.drain()
    assert running.conversations()[0]["assignee"] == "alice"
    assert running.query("SELECT count(*) FROM outbox")[0][0] == 0
    assert sink.received == []


def test_alert_is_retried_while_the_smarthost_is_down_and_delivered_once_back(
    make_settings: Callable[..., Settings], start_daemon: Callable[..., RunningDaemon]
) -> None:
    port = free_port()
    running = start_daemon(make_settings(notify=smtp_notify(port), rules=RULES))
    running.send(mail(sender="wile@acme.com"))
    wait_until(lambda: running.events(1, "notify_failed"), what="a failed attempt")
    wait_until(
        lambda: running.query("SELECT attempts FROM outbox")[0][0] >= 2, what="a second attempt"
    )
    late = Sink(port)
    late.start()
    try:
        wait_until(lambda: late.received, what="the alert once the sink is up")
        wait_until(lambda: running.events(1, "notified"), what="the notified event")
        assert len(late.received) == 1
        assert [e.rcpt_tos for e in late.received] == [["alice@agents.test"]]
        assert running.query("SELECT state FROM outbox")[0][0] == "done"
    finally:
        late.stop()


def test_customer_reply_alerts_the_assignee(alerting: RunningDaemon, sink: Sink) -> None:
    alerting.send(mail("Broken", sender="wile@acme.com", Message_ID="<a1@acme.com>"))
    alerting.drain()
    alerting.send(mail("Re: Broken", sender="wile@acme.com", In_Reply_To="<a1@acme.com>"))
    alerting.drain()
    wait_until(lambda: len(sink.received) == 2, what="two alerts")
    assert parsed(sink.received[1])["Subject"] == "[#1] New reply: Broken"


def test_the_gateways_own_alert_coming_back_is_dropped(alerting: RunningDaemon, sink: Sink) -> None:
    alerting.send(mail("Loop?", sender="wile@acme.com"))
    alerting.drain()
    [envelope] = wait_until(lambda: sink.received, what="the alert")
    alerting.send(envelope.original_content, sender="gateway@gw.test")  # forwarded back in
    alerting.drain()
    assert len(alerting.conversations()) == 1
    states = [r["state"] for r in alerting.query("SELECT state FROM messages ORDER BY id")]
    assert states == ["routed", "dropped"]
    assert len(sink.received) == 1


def test_a_forged_notification_header_is_routed_like_any_mail(alerting: RunningDaemon) -> None:
    alerting.send(mail("Not really an alert", X_Gateway_Notification="1.00000000deadbeef"))
    alerting.drain()
    [conversation] = alerting.conversations()
    assert conversation["assignee"] == "alice"  # round-robin's first


@pytest.mark.parametrize(
    "headers",
    [{"Auto_Submitted": "auto-replied"}, {"Precedence": "bulk"}, {"X_Autoreply": "yes"}],
    ids=["auto-submitted", "precedence", "x-autoreply"],
)
def test_auto_reply_goes_unassigned_tagged_auto_without_a_turn_or_alert(
    alerting: RunningDaemon, sink: Sink, headers: dict[str, str]
) -> None:
    alerting.send(mail("Out of office", **headers))
    alerting.send(mail("A real question"))
    alerting.drain()
    first, second = alerting.conversations()
    assert first["assignee"] is None
    assert [r["tag"] for r in alerting.query("SELECT tag FROM tags WHERE conversation_id = 1")] == [
        "auto"
    ]
    assert second["assignee"] == "alice"  # the auto-reply took no turn
    wait_until(lambda: sink.received, what="the real question's alert")
    assert len(sink.received) == 1


def test_bounce_with_null_sender_goes_unassigned_tagged_auto(alerting: RunningDaemon) -> None:
    alerting.send(mail("Undelivered Mail Returned to Sender"), sender="")
    alerting.drain()
    [conversation] = alerting.conversations()
    assert conversation["assignee"] is None
    assert alerting.query("SELECT envelope_from FROM messages")[0][0] == ""
    assert alerting.query("SELECT tag FROM tags")[0][0] == "auto"


def test_delivery_status_report_is_a_bounce(alerting: RunningDaemon) -> None:
    raw = (
        b"From: MAILER-DAEMON@mx.example.org\r\nTo: support@example.com\r\n"
        b"Message-ID: <dsn-1@mx>\r\nSubject: failure notice\r\nMIME-Version: 1.0\r\n"
        b"Content-Type: multipart/report; report-type=delivery-status; boundary=b\r\n\r\n"
        b"--b\r\nContent-Type: text/plain\r\n\r\nfailed\r\n--b--\r\n"
    )
    alerting.send(raw, sender="postmaster@mx.example.org")
    alerting.drain()
    [conversation] = alerting.conversations()
    assert conversation["assignee"] is None
    assert alerting.query("SELECT tag FROM tags")[0][0] == "auto"


def test_an_alert_in_the_hands_of_one_process_is_not_sent_by_another(
    make_settings: Callable[..., Settings], sink: Sink
) -> None:
    import asyncio
    import time

    from gateway import alertmark
    from gateway.ingress.accept import Accept
    from gateway.intake.worker import Intake
    from gateway.model import RawMail
    from gateway.notify.worker import Outbox
    from gateway.store.db import Database

    settings = make_settings(notify=smtp_notify(sink.port), rules=RULES)

    async def scenario() -> None:
        mine = await Database.open(settings.gateway.database)
        other = await Database.open(settings.gateway.database)  # as a second process would
        try:
            async with mine.transaction() as conn:
                secret = await alertmark.load_secret(conn)
            raw = mail(sender="wile@acme.com").as_bytes(policy=policy.SMTP)
            await Accept(mine)(RawMail("support@example.com", raw, "smtp", "w@acme.com", ()))
            await Intake(mine, settings, secret).drain()
            second = Outbox(other, settings, secret)
            await hold_oldest_alert(mine, seconds=0.5)  # an attempt under way, a slow smarthost
            assert await second.drain() == 0
            # The first process died mid-attempt: its lease ends, by the store's clock.
            deadline = time.monotonic() + 15
            while await second.drain() == 0:
                assert time.monotonic() < deadline, "timed out waiting for the lease to end"
                await asyncio.sleep(0.05)
        finally:  # aiosqlite's threads would keep the test run from ending
            await mine.close()
            await other.close()

    asyncio.run(scenario())
    assert len(sink.received) == 1


def test_an_alert_for_an_agent_the_conversation_has_left_is_superseded_not_sent(
    make_settings: Callable[..., Settings],
    start_daemon: Callable[..., RunningDaemon],
    sink: Sink,
    tmp_path: Path,
) -> None:
    from gateway.cli import main as gateway

    settings = make_settings(notify=smtp_notify(sink.port), rules=RULES)
    running = start_daemon(settings)
    running.send(mail(sender="wile@acme.com"))
    wait_until(lambda: running.events(1, "notified"), what="alice's alert")
    running.stop()  # the outbox is held: what is queued now waits
    config = str(tmp_path / "gateway.toml")
    assert gateway(["assign", "1", "bob", "--by", "dave", "--config", config]) == 0
    assert gateway(["assign", "1", "carol", "--by", "dave", "--config", config]) == 0
    running = start_daemon(settings)
    wait_until(lambda: len(running.events(1, "notified")) == 2, what="carol's alert")
    running.drain()
    assert [e.rcpt_tos for e in sink.received] == [["alice@agents.test"], ["carol@agents.test"]]
    [superseded] = running.events(1, "notify_superseded")
    assert superseded["agent"] == "bob"
    assert json.loads(superseded["detail"]) == {"reason": "reassigned", "assignee": "carol"}
    assert [r["state"] for r in running.query("SELECT state FROM outbox ORDER BY id")] == [
        "done",
        "done",
        "done",
    ]


def test_an_alert_goes_out_with_the_null_envelope_sender_so_bounces_reach_no_inbox(
    alerting: RunningDaemon, sink: Sink
) -> None:
    alerting.send(mail(sender="wile@acme.com"))
    [envelope] = wait_until(lambda: sink.received, what="the alert")
    assert envelope.mail_from == "<>"  # aiosmtpd's form of MAIL FROM:<>
    assert parsed(envelope)["From"].addresses[0].addr_spec == "gateway@gw.test"


def test_an_alert_goes_out_from_the_bounce_address_when_one_is_set(
    make_settings: Callable[..., Settings], start_daemon: Callable[..., RunningDaemon], sink: Sink
) -> None:
    notify = smtp_notify(sink.port, bounce_address="bounces@gw.test")
    running = start_daemon(make_settings(notify=notify, rules=RULES))
    running.send(mail(sender="wile@acme.com"))
    [envelope] = wait_until(lambda: sink.received, what="the alert")
    assert envelope.mail_from == "bounces@gw.test"


def test_a_senders_alert_count_is_dropped_once_its_hour_is_over(
    make_settings: Callable[..., Settings], start_daemon: Callable[..., RunningDaemon], sink: Sink
) -> None:
    from datetime import timedelta

    now = [datetime.now(UTC)]
    running = start_daemon(
        make_settings(notify=smtp_notify(sink.port), rules=RULES), clock=lambda: now[0]
    )

    def counted() -> list[str]:
        return [r[0] for r in running.query("SELECT sender FROM alert_senders ORDER BY sender")]

    running.send(mail(sender="wile@acme.com"))
    running.drain()
    assert counted() == ["wile@acme.com"]
    now[0] += timedelta(hours=1, minutes=1)
    running.send(mail(sender="road@acme.com"))  # its hour has just begun: kept
    wait_until(lambda: counted() == ["road@acme.com"], what="wile's hour to be dropped")
