"""Broken mail is stored and routed; a message intake fails on is shunted, not lost."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gateway.cli import main as gateway
from gateway.model import Decision
from tests.conftest import RunningDaemon, config_file, mail, wait_until

pytestmark = pytest.mark.integration

MALFORMED = sorted((Path(__file__).parent.parent / "data" / "malformed").glob("*.eml"))


def config_of(running: RunningDaemon) -> str:
    return str(config_file(running.settings))


@pytest.mark.parametrize("sample", MALFORMED, ids=[p.stem for p in MALFORMED])
def test_malformed_message_is_stored_and_routed(daemon: RunningDaemon, sample: Path) -> None:
    assert daemon.send(sample.read_bytes(), sender="sender@example.org") == {}
    daemon.drain()
    [message] = daemon.query("SELECT state, error, conversation_id FROM messages")
    assert (message["state"], message["error"]) == ("routed", None)
    [conversation] = daemon.conversations()
    assert conversation["assignee"] == "alice"  # the rotation took it like any mail
    # ...and its alert, with the broken original attached, was written.
    wait_until(lambda: daemon.events(conversation["id"], "notified"), what="the alert")
    assert daemon.events(conversation["id"], "notify_failed") == []


def test_message_without_from_falls_back_to_the_envelope_sender(daemon: RunningDaemon) -> None:
    daemon.send((MALFORMED[0].parent / "no-from.eml").read_bytes(), sender="env@example.org")
    daemon.drain()
    assert daemon.conversations()[0]["customer"] == "env@example.org"


@pytest.mark.parametrize(
    ("sample", "subject"),
    [("eight-bit-headers.eml", "Grüße aus München €"), ("latin1-headers.eml", "Grüße aus München")],
)
def test_eight_bit_headers_keep_their_characters(
    daemon: RunningDaemon, sample: str, subject: str
) -> None:
    daemon.send((MALFORMED[0].parent / sample).read_bytes())
    daemon.drain()
    [conversation] = daemon.conversations()
    assert conversation["subject"] == subject


def test_failing_message_is_shunted_the_rest_flow_and_retry_routes_it(
    daemon: RunningDaemon, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from gateway.intake import worker

    real_route = worker.route

    def faulty(delivery, policy, state) -> Decision:  # type: ignore[no-untyped-def]
        if "explode" in delivery.facts.subject:
            raise RuntimeError("injected fault")
        return real_route(delivery, policy, state)

    monkeypatch.setattr(worker, "route", faulty)
    daemon.send(mail("before"))
    daemon.send(mail("please explode"))
    daemon.send(mail("after"))
    daemon.drain()
    states = [r["state"] for r in daemon.query("SELECT state FROM messages ORDER BY id")]
    assert states == ["routed", "shunted", "routed"]
    assert len(daemon.conversations()) == 2

    capsys.readouterr()
    assert gateway(["shunted", "--json", "--config", config_of(daemon)]) == 0
    [listed] = json.loads(capsys.readouterr().out)
    assert listed["id"] == 2 and "injected fault" in listed["error"]

    assert gateway(["retry", "2", "--config", config_of(daemon)]) == 1  # the fault is still there
    monkeypatch.setattr(worker, "route", real_route)
    assert gateway(["retry", "2", "--config", config_of(daemon)]) == 0
    assert "opened conversation 3" in capsys.readouterr().out
    states = [r["state"] for r in daemon.query("SELECT state FROM messages ORDER BY id")]
    assert states == ["routed", "routed", "routed"]
    assert [c["subject"] for c in daemon.conversations()] == ["before", "after", "please explode"]


def test_retry_of_a_message_that_is_not_shunted_is_refused(
    daemon: RunningDaemon, capsys: pytest.CaptureFixture[str]
) -> None:
    daemon.send(mail())
    daemon.drain()
    assert gateway(["retry", "1", "--config", config_of(daemon)]) == 1
    assert "not shunted" in capsys.readouterr().err


@pytest.mark.parametrize(
    "header",
    [
        "X-Gateway-Notification: 1.\xe9",
        "X-Gateway-Notification: \xb2.00000000000000000000000000000000",
        "X-Gateway-Notification: " + "9" * 900 + ".0",
        "Subject: about [#99999999999999999999999]",
    ],
    ids=["non-ascii-mark", "superscript-digit", "huge-event-id", "huge-token"],
)
def test_hostile_header_values_are_routed_not_shunted(daemon: RunningDaemon, header: str) -> None:
    raw = (
        f"From: a@example.org\r\nTo: support@example.com\r\nMessage-ID: <h@x>\r\n{header}\r\n"
        "\r\nbody\r\n"
    ).encode()
    daemon.send(raw)
    daemon.drain()
    assert [r["state"] for r in daemon.query("SELECT state FROM messages")] == ["routed"]


def test_eight_bit_envelope_sender_is_accepted_and_stored(daemon: RunningDaemon) -> None:
    import smtplib

    raw = b"From: j@example.org\r\nTo: support@example.com\r\nMessage-ID: <e@x>\r\n\r\nx\r\n"
    with smtplib.SMTP("127.0.0.1", daemon.port) as client:
        client.ehlo()
        client.send(b"MAIL FROM:<j\xf6rg@example.org>\r\n")  # Latin-1, not UTF-8
        assert client.getreply()[0] == 250
        assert client.rcpt("support@example.com")[0] == 250
        assert client.data(raw)[0] == 250
    daemon.drain()
    [row] = daemon.query("SELECT envelope_from, state FROM messages")
    assert (row["envelope_from"], row["state"]) == ("jörg@example.org", "routed")


def test_a_retried_message_keeps_its_arrival_time(
    daemon: RunningDaemon, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gateway.intake import worker

    real_route = worker.route
    monkeypatch.setattr(worker, "route", lambda *a: (_ for _ in ()).throw(RuntimeError("x")))
    daemon.send(mail("late"))
    daemon.drain()
    monkeypatch.setattr(worker, "route", real_route)
    assert gateway(["retry", "1", "--config", config_of(daemon)]) == 0
    [message] = daemon.query("SELECT received_at FROM messages")
    [conversation] = daemon.conversations()
    assert conversation["created_at"] == conversation["last_message_at"] == message[0]


@pytest.mark.parametrize(
    ("statement", "kinds"),
    [
        (
            "SELECT 1 WHERE 0 IN (" + ", ".join(["?"] * 300_000) + ")",
            ("too many SQL variables", "query arguments cannot exceed"),
        ),
        ("SELECT * FROM no_such_table", ("no such table", '"no_such_table" does not exist')),
    ],
    ids=["too-many-variables", "a-bad-statement"],
)
def test_an_sql_error_a_message_causes_shunts_it_instead_of_stalling_intake(
    daemon: RunningDaemon,
    monkeypatch: pytest.MonkeyPatch,
    statement: str,
    kinds: tuple[str, str],
    store_url: str,
) -> None:
    """Only a store in trouble (locked, full, failing) keeps mail pending; an error that
    this message's data causes would meet it again on every retry, holding up the rest."""
    from gateway.store import queries

    real = queries.create_conversation

    async def poisoned(conn, **fields):  # type: ignore[no-untyped-def]
        if fields["subject"] == "poison":
            await conn.run(statement, tuple(range(statement.count("?"))))
        return await real(conn, **fields)

    monkeypatch.setattr(queries, "create_conversation", poisoned)
    for subject in ("before", "poison", "after"):
        daemon.send(mail(subject))
    daemon.drain()
    rows = daemon.query("SELECT state, error FROM messages ORDER BY id")
    assert [r["state"] for r in rows] == ["routed", "shunted", "routed"]
    assert kinds[bool(store_url)] in rows[1]["error"]  # SQLite's words, or PostgreSQL's
