"""Alerts go to agents only, and no loop or flood turns them into a storm."""

from __future__ import annotations

from collections.abc import Callable
from copy import deepcopy
from pathlib import Path
from typing import Any

import pytest
import tomli_w

from gateway import config
from gateway.config import Settings
from tests.conftest import BASE, RunningDaemon, Sink, free_port, mail, smtp_notify, wait_until

pytestmark = pytest.mark.integration


def test_an_alert_goes_to_the_agent_alone_whatever_addresses_the_mail_names(
    make_settings: Callable[..., Settings], start_daemon: Callable[..., RunningDaemon], sink: Sink
) -> None:
    running = start_daemon(make_settings(notify=smtp_notify(sink.port)))
    running.send(
        mail(
            "Please forward",
            sender='"alice@agents.test, victim@else.test" <wile@acme.com>',
            to="support@example.com, victim@else.test",
            Cc="boss@else.test",
            Reply_To="reply@else.test",
            Disposition_Notification_To="receipt@else.test",
            Return_Receipt_To="receipt@else.test",
            Errors_To="errors@else.test",
        ),
        to=["support@example.com"],
        sender="bounce@else.test",
    )
    [envelope] = wait_until(lambda: sink.received, what="the alert")
    assert envelope.rcpt_tos == ["alice@agents.test"]
    alert = envelope.original_content.decode()
    headers = alert.split("\r\n\r\n", 1)[0]
    assert "else.test" not in headers.replace("Reply-To: <wile@acme.com>", "")
    assert "\nCc:" not in headers and "\nBcc:" not in headers


def _settings_in(folder: Path, **sections: Any) -> Settings:
    folder.mkdir()
    data = deepcopy(BASE)
    data.update(sections)
    (folder / "gateway.toml").write_text(tomli_w.dumps(data))
    return config.load(folder / "gateway.toml")


def test_two_gateways_alerting_each_other_stop_after_one_hop(
    tmp_path: Path, start_daemon: Callable[..., RunningDaemon]
) -> None:
    a_port, b_port = free_port(), free_port()
    # Each one's agents read their mail through the other gateway's inbox.
    agents_at = [{**agent, "email": "support@example.com"} for agent in BASE["agents"]]
    a = start_daemon(
        _settings_in(
            tmp_path / "a",
            smtp={**BASE["smtp"], "listen": [f"127.0.0.1:{a_port}"]},
            notify=smtp_notify(b_port),
            agents=agents_at,
        )
    )
    b = start_daemon(
        _settings_in(
            tmp_path / "b",
            smtp={**BASE["smtp"], "listen": [f"127.0.0.1:{b_port}"]},
            notify=smtp_notify(a_port),
            agents=agents_at,
        )
    )
    a.send(mail("Help", sender="wile@acme.com"))
    wait_until(lambda: b.conversations(), what="A's alert to arrive at B")
    b.drain()
    a.drain()
    [at_a], [at_b] = a.conversations(), b.conversations()
    assert at_a["assignee"] == "alice"
    # B sees an automatic message: unassigned, tagged auto, no alert back to A.
    assert at_b["assignee"] is None
    assert [r["tag"] for r in b.query("SELECT tag FROM tags")] == ["auto"]
    assert b.query("SELECT count(*) FROM outbox")[0][0] == 0
    assert len(a.query("SELECT id FROM messages")) == 1


def test_alerts_caused_by_one_sender_are_held_back_past_the_hourly_limit(
    make_settings: Callable[..., Settings], start_daemon: Callable[..., RunningDaemon], sink: Sink
) -> None:
    running = start_daemon(
        make_settings(notify=smtp_notify(sink.port, max_alerts_per_sender_per_hour=2))
    )
    for n in range(4):
        running.send(mail(f"flood {n}", sender="loop@peer.test"))
    running.send(mail("a real customer", sender="wile@acme.com"))
    running.drain()
    wait_until(lambda: len(sink.received) == 3, what="three alerts")
    conversations = running.conversations()
    assert all(c["assignee"] for c in conversations)  # still assigned: only the alert waits
    held = running.query("SELECT conversation_id, detail FROM events WHERE kind = 'notify_skipped'")
    assert [row["conversation_id"] for row in held] == [3, 4]
    assert "more than 2 alerts from loop@peer.test this hour" in held[0]["detail"]
    assert running.query("SELECT count(*) FROM outbox")[0][0] == 3
