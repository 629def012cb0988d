"""Agents work from their mail (DESIGN §12): real SMTP both ways.

Customers and agents write to the daemon's relay with smtplib; alerts, answers and
notices arrive at a real aiosmtpd sink standing in as the smarthost.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime, timedelta
from email import message_from_bytes, policy
from email.message import EmailMessage
from email.utils import make_msgid
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.smtp import Envelope

from gateway.clock import utcnow
from gateway.config import Settings
from gateway.replies.marker import MARKER
from tests.conftest import RunningDaemon, Sink, free_port, mail, smtp_notify, wait_until
from tests.dovecot import Dovecot
from tests.e2e.test_people import gateway, ok, show
from tests.integration.test_imap import connected, imap_inbox

pytestmark = pytest.mark.integration

REPLIES = "replies@gw.test"
ANN = "ann@example.org"
ALICE = "alice@agents.test"
BOB = "bob@agents.test"


class Clock:
    """The daemon's clock, which a test can move on (to age a token)."""

    def __init__(self) -> None:
        self.ahead = timedelta()

    def __call__(self) -> datetime:
        return utcnow() + self.ahead


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def desk(
    make_settings: Callable[..., Settings],
    start_daemon: Callable[..., RunningDaemon],
    sink: Sink,
    clock: Clock,
) -> RunningDaemon:
    """Ann's question is alice's (the rotation has her alone); her alert has arrived."""
    settings = make_settings(
        round_robin={"enabled": True, "agents": ["alice"]},
        notify=smtp_notify(sink.port),
        replies={"address": REPLIES, "token_days": 7},
    )
    running = start_daemon(settings, clock=clock)
    running.send(
        mail(
            "Where is my parcel?",
            sender=f"Ann <{ANN}>",
            Message_ID="<parcel-1@example.org>",
            body="Hello,\nI ordered a lamp on Monday.\nWhere is it?\n",
        )
    )
    running.drain()
    alert_to(sink, ALICE)
    return running


def received(sink: Sink, recipient: str) -> list[EmailMessage]:
    found = []
    for envelope in sink.received:
        if envelope.rcpt_tos == [recipient]:
            msg = message_from_bytes(envelope.original_content, policy=policy.default)
            assert isinstance(msg, EmailMessage)
            found.append(msg)
    return found


def alert_to(sink: Sink, recipient: str, count: int = 1) -> EmailMessage:
    """The `count`th alert `recipient` received (waiting for it)."""
    wait_until(lambda: len(received(sink, recipient)) >= count, what=f"an alert to {recipient}")
    return received(sink, recipient)[count - 1]


def text_of(msg: EmailMessage) -> str:
    body = msg.get_body(("plain",))
    assert body is not None
    return str(body.get_content()).replace("\r\n", "\n")


def quoted(alert: EmailMessage) -> str:
    """The alert as a mail client quotes it under a reply."""
    lines = text_of(alert).splitlines()
    return "On Mon, 30 Nov 2026 at 10:00, Assignments <gateway@gw.test> wrote:\n" + "\n".join(
        f"> {line}" for line in lines
    )


def reply(
    alert: EmailMessage,
    text: str,
    *,
    sender: str = ALICE,
    html: bool = False,
    **headers: str,
) -> EmailMessage:
    """An agent's reply to `alert`: `text` above the quoted alert, as mail clients write it."""
    message = EmailMessage()
    message["From"] = sender
    message["To"] = str(alert["Reply-To"])
    message["Subject"] = f"Re: {alert['Subject']}"
    message["In-Reply-To"] = str(alert["Message-ID"])
    message["Message-ID"] = make_msgid(domain="agents.test")
    for name, value in headers.items():
        message[name.replace("_", "-")] = value
    if html:  # Outlook's way: no plain part, the alert under a header block, unquoted
        original = "<br>\n".join(text_of(alert).splitlines())
        paragraphs = "".join(f"<p>{line}</p>" for line in text.split("\n"))
        message.set_content(
            f"<html><body>{paragraphs}<hr><div><b>From:</b> Assignments &lt;gateway@gw.test&gt;"
            f"<br><b>Sent:</b> Monday<br><b>To:</b> Alice<br><b>Subject:</b> {alert['Subject']}"
            f"</div><div>{original}</div></body></html>",
            subtype="html",
        )
    else:
        message.set_content(f"{text}\n\n{quoted(alert)}\n")
    return message


def send_reply(desk: RunningDaemon, message: EmailMessage, to: str | None = None) -> None:
    desk.send(message, to=[to or str(message["To"])], sender=str(message["From"]))
    desk.drain()


def answers(sink: Sink) -> list[EmailMessage]:
    return received(sink, ANN)


def test_an_alert_carries_the_token_reply_to_the_marker_and_the_whole_text(
    desk: RunningDaemon, sink: Sink
) -> None:
    alert = alert_to(sink, ALICE)
    reply_to = str(alert["Reply-To"])
    assert reply_to.startswith("replies+") and reply_to.endswith("@gw.test")
    text = text_of(alert)
    assert text.splitlines()[0] == MARKER
    assert "I ordered a lamp on Monday.\nWhere is it?" in text
    assert "#claim, #assign AGENT" in text


def test_the_customer_gets_exactly_what_the_agent_wrote_above_the_alert(
    desk: RunningDaemon, sink: Sink
) -> None:
    alert = alert_to(sink, ALICE)
    send_reply(desk, reply(alert, "Hello Ann,\nit left our store today.\n\nAlice"))
    wait_until(lambda: answers(sink), what="the answer at the customer")
    [answer] = answers(sink)
    assert text_of(answer).strip() == "Hello Ann,\nit left our store today.\n\nAlice"
    assert answer["From"].addresses[0].addr_spec == "support@example.com"
    assert answer["From"].addresses[0].display_name == "Alice Doe"
    assert answer["In-Reply-To"] == "<parcel-1@example.org>"
    assert answer["Subject"] == "Re: Where is my parcel? [#1]"
    envelope = next(e for e in sink.received if e.rcpt_tos == [ANN])
    assert envelope.mail_from == "support@example.com"
    whole = envelope.original_content.decode()
    for internal in ("replies", "agents.test", "Assignments", "##-", "lamp", "#claim"):
        assert internal not in whole
    view = show(desk)
    [stored] = [m for m in view["messages"] if m["source"] == "agent"]
    assert stored["text"] == "Hello Ann,\nit left our store today.\n\nAlice"
    assert f"<{stored['message_id']}>" == answer["Message-ID"]
    [replied] = [e for e in view["events"] if e["kind"] == "replied"]
    assert (replied["actor"], replied["detail"]["via"]) == ("alice", "email")
    assert [e["kind"] for e in view["events"]][-1] == "answer_sent"


def test_the_customers_reply_to_the_answer_joins_the_conversation_and_alerts_the_assignee(
    desk: RunningDaemon, sink: Sink
) -> None:
    send_reply(desk, reply(alert_to(sink, ALICE), "It ships today."))
    [answer] = wait_until(lambda: answers(sink), what="the answer")
    desk.send(
        mail(  # neither the subject nor [#ID]: the answer's Message-ID alone threads it
            "Thanks",
            sender=ANN,
            In_Reply_To=str(answer["Message-ID"]),
            body="Thank you!\n",
        )
    )
    desk.drain()
    assert len(desk.conversations()) == 1
    again = alert_to(sink, ALICE, count=2)
    assert "Thank you!" in text_of(again)
    assert show(desk)["message_count"] == 3


@pytest.mark.parametrize(
    ("commands", "assignee", "status"),
    [
        ("#assign bob", "bob", "open"),
        ("#ASSIGN Bob@Agents.test", "bob", "open"),
        ("#unassign", None, "open"),
        ("#close", "alice", "closed"),
        ("#close\n#reopen", "alice", "open"),
    ],
)
def test_commands_act_as_the_agent_by_email_and_send_the_customer_nothing(
    desk: RunningDaemon, sink: Sink, commands: str, assignee: str | None, status: str
) -> None:
    send_reply(desk, reply(alert_to(sink, ALICE), commands))
    [row] = desk.conversations()
    assert (row["assignee"], row["status"]) == (assignee, status)
    acts = [e for e in show(desk)["events"] if e["detail"].get("via") == "email"]
    assert acts and all(e["actor"] == "alice" for e in acts)
    assert answers(sink) == []


def test_assign_by_mail_alerts_the_new_assignee(desk: RunningDaemon, sink: Sink) -> None:
    send_reply(desk, reply(alert_to(sink, ALICE), "#assign bob"))
    bobs = alert_to(sink, BOB)
    assert "reassigned to you by alice" in text_of(bobs)
    [event] = [e for e in show(desk)["events"] if e["kind"] == "reassigned"]
    assert (event["actor"], event["agent"], event["detail"]["via"]) == ("alice", "bob", "email")


def test_away_and_available_by_mail_set_the_agents_status(desk: RunningDaemon, sink: Sink) -> None:
    send_reply(desk, reply(alert_to(sink, ALICE), "#away"))
    assert status_of(desk, "alice") == "away"
    send_reply(desk, reply(alert_to(sink, ALICE), "#available"))
    assert status_of(desk, "alice") == "available"


def status_of(desk: RunningDaemon, agent: str) -> str:
    agents: list[dict[str, Any]] = json.loads(ok(desk, "agents", "--json"))
    return next(a["status"] for a in agents if a["id"] == agent)


def test_a_command_and_an_answer_in_one_mail_both_apply(desk: RunningDaemon, sink: Sink) -> None:
    send_reply(desk, reply(alert_to(sink, ALICE), "#close\n\nIt is on its way, Ann."))
    [answer] = wait_until(lambda: answers(sink), what="the answer")
    assert text_of(answer).strip() == "It is on its way, Ann."
    assert desk.conversations()[0]["status"] == "closed"


def test_an_html_only_reply_from_outlook_answers_the_same(desk: RunningDaemon, sink: Sink) -> None:
    send_reply(desk, reply(alert_to(sink, ALICE), "It ships today.\nAlice", html=True))
    [answer] = wait_until(lambda: answers(sink), what="the answer")
    assert text_of(answer).strip() == "It ships today.\n\nAlice"  # each line was a <p>


def test_a_reply_whose_client_quoted_the_marker_answers_the_same(
    desk: RunningDaemon, sink: Sink
) -> None:
    alert = alert_to(sink, ALICE)
    message = reply(alert, "It ships today.")
    assert f"> {MARKER}" in text_of(message)
    send_reply(desk, message)
    [answer] = wait_until(lambda: answers(sink), what="the answer")
    assert text_of(answer).strip() == "It ships today."


def refused(desk: RunningDaemon, sink: Sink, agent: str = ALICE) -> tuple[str, EmailMessage]:
    """The reason on the timeline, and the notice the agent got; nothing at the customer."""
    [event] = [e for e in show(desk)["events"] if e["kind"] == "reply_refused"]
    notice = wait_until(lambda: received(sink, agent)[-1:], what="the notice")[0]
    assert str(notice["Subject"]).startswith("Not done:")
    assert event["detail"]["reason"] in text_of(notice)
    desk.drain()
    assert answers(sink) == []
    return event["detail"]["reason"], notice


def unchanged(desk: RunningDaemon, assignee: str = "alice") -> None:
    [row] = desk.conversations()
    assert (row["assignee"], row["status"]) == (assignee, "open")
    assert [e for e in show(desk)["events"] if e["kind"] == "replied"] == []


def test_a_forged_from_is_refused_and_the_named_agent_told(desk: RunningDaemon, sink: Sink) -> None:
    send_reply(desk, reply(alert_to(sink, ALICE), "#assign carol\nHi!", sender=BOB))
    reason, _ = refused(desk, sink, agent=BOB)
    assert reason == "the alert was sent to alice, and this mail is from bob's address"
    unchanged(desk)


def test_a_stranger_with_the_token_changes_nothing(desk: RunningDaemon, sink: Sink) -> None:
    send_reply(desk, reply(alert_to(sink, ALICE), "#close\nHi!", sender="eve@evil.test"))
    reason, notice = refused(desk, sink, agent=ALICE)
    assert reason == "it is from eve@evil.test, not an agent's address"
    assert notice["To"].addresses[0].addr_spec == ALICE
    assert all(e.rcpt_tos != ["eve@evil.test"] for e in sink.received)
    unchanged(desk)


def test_a_bad_token_is_refused(desk: RunningDaemon, sink: Sink) -> None:
    alert = alert_to(sink, ALICE)
    forged = str(alert["Reply-To"])[:-12] + "aaaaa@gw.test"
    message = reply(alert, "#close")
    message.replace_header("To", forged)
    send_reply(desk, message, to=forged)
    # The token names no conversation that can be trusted: the agent is told, the
    # timeline is not (it is not known which one).
    wait_until(lambda: len(received(sink, ALICE)) == 2, what="the notice")
    notice = received(sink, ALICE)[-1]
    assert "its token is not one of this gateway's alerts" in text_of(notice)
    unchanged(desk)


def test_an_expired_token_is_refused(desk: RunningDaemon, sink: Sink, clock: Clock) -> None:
    alert = alert_to(sink, ALICE)
    clock.ahead = timedelta(days=8)
    send_reply(desk, reply(alert, "#close"))
    reason, _ = refused(desk, sink)
    assert reason.startswith("the alert is older than 7 days")
    unchanged(desk)


def test_an_unknown_command_applies_nothing_of_the_mail(desk: RunningDaemon, sink: Sink) -> None:
    send_reply(desk, reply(alert_to(sink, ALICE), "#close\n#asign bob\nHello Ann"))
    reason, _ = refused(desk, sink)
    assert reason.startswith("'#asign bob': there is no command #asign")
    unchanged(desk)


def test_claiming_what_bob_has_is_refused_with_the_answer(desk: RunningDaemon, sink: Sink) -> None:
    ok(desk, "assign", "1", "bob", "--by", "carol")
    # The #close before it is undone with it: a mail is applied whole or not at all.
    send_reply(desk, reply(alert_to(sink, ALICE), "#close\n#claim\nI will take this one, Ann."))
    reason, _ = refused(desk, sink)
    assert reason == "'#claim': Conversation 1 is already assigned to bob."
    unchanged(desk, assignee="bob")


def test_an_attribution_the_cut_does_not_know_is_refused_not_sent(
    desk: RunningDaemon, sink: Sink
) -> None:
    """Whatever the cut lets through, no internal address reaches the customer."""
    alert = alert_to(sink, ALICE)
    message = reply(alert, "It ships today.")
    text = text_of(message).replace(
        "On Mon, 30 Nov 2026 at 10:00, Assignments <gateway@gw.test> wrote:",
        "Dnia 30.11.2026 o 10:00 Assignments <gateway@gw.test> napisał(a):",
    )
    message.set_content(text)
    send_reply(desk, message)
    reason, _ = refused(desk, sink)
    assert reason.startswith("'the answer': The answer holds gateway@gw.test")
    unchanged(desk)


def test_the_alert_attached_to_a_reply_never_reaches_the_customer(
    desk: RunningDaemon, sink: Sink
) -> None:
    alert = alert_to(sink, ALICE)
    message = reply(alert, "It ships today.")
    message.add_attachment(alert, filename="alert.eml")  # message/rfc822: left out
    send_reply(desk, message)
    [answer] = wait_until(lambda: answers(sink), what="the answer")
    assert list(answer.iter_attachments()) == []
    again = reply(alert, "And here is the invoice.")
    again.add_attachment(  # the alert as a file: its token and addresses are in it
        alert.as_bytes(), maintype="application", subtype="octet-stream", filename="a.bin"
    )
    send_reply(desk, again)
    [event] = [e for e in show(desk)["events"] if e["kind"] == "reply_refused"]
    assert "(in a.bin)" in event["detail"]["reason"]
    assert len(answers(sink)) == 1


def test_a_customer_sending_the_answers_message_id_first_does_not_stop_it(
    desk: RunningDaemon, sink: Sink
) -> None:
    [last] = desk.query("SELECT max(id) FROM events")
    # The squatter's mail takes three events (received, assigned, notified): the answer's
    # `replied` event comes next, and its Message-ID is taken first.
    squatted = f"reply.{last[0] + 4}@gw.test"
    desk.send(mail("Squat", sender="mallory@example.org", Message_ID=f"<{squatted}>"))
    desk.drain()
    send_reply(desk, reply(alert_to(sink, ALICE), "It ships today."))
    [answer] = wait_until(lambda: answers(sink), what="the answer")
    assert answer["Message-ID"] == f"<{squatted}>"
    assert text_of(answer).strip() == "It ships today."


def test_an_answer_to_a_customer_on_an_international_domain_goes_to_its_ascii_form(
    desk: RunningDaemon, sink: Sink
) -> None:
    desk.send(mail("Hallo", sender="Jörg <jorg@bücher.example>"))
    desk.drain()
    done = gateway(desk, "reply", "2", "--by", "alice", stdin=b"Guten Tag!\n")
    assert done.returncode == 0, done.stderr
    wait_until(
        lambda: any(e.rcpt_tos == ["jorg@xn--bcher-kva.example"] for e in sink.received),
        what="the answer at the ASCII address",
    )


def test_an_answer_to_an_address_no_header_can_hold_is_refused_not_shunted(
    desk: RunningDaemon, sink: Sink
) -> None:
    desk.send(mail("Hei", sender="jöns@example.org"))
    desk.drain()
    [alert] = received(sink, ALICE)[1:] or [alert_to(sink, ALICE, count=2)]
    send_reply(desk, reply(alert, "Hei!"))
    [state] = desk.query("SELECT state, error FROM messages WHERE inbox = ?", (REPLIES,))
    assert state["state"] == "refused"
    assert "is not plain ASCII" in state["error"]


def test_unassign_and_an_answer_in_one_mail_leave_it_unassigned(
    desk: RunningDaemon, sink: Sink
) -> None:
    send_reply(desk, reply(alert_to(sink, ALICE), "#unassign\nSomeone else will follow up, Ann."))
    wait_until(lambda: answers(sink), what="the answer")
    assert desk.conversations()[0]["assignee"] is None


def test_an_out_of_office_to_the_replies_address_is_dropped_without_a_word(
    desk: RunningDaemon, sink: Sink
) -> None:
    message = reply(alert_to(sink, ALICE), "I am away until Monday.", Auto_Submitted="auto-replied")
    send_reply(desk, message)
    [state] = desk.query("SELECT state FROM messages WHERE inbox = ?", (REPLIES,))
    assert state["state"] == "dropped"
    assert len(sink.received) == 1  # the alert alone: no notice, no answer
    assert [e["kind"] for e in show(desk)["events"] if e["kind"] == "reply_refused"] == []


def test_gateway_reply_sends_the_answer_from_standard_input(
    desk: RunningDaemon, sink: Sink
) -> None:
    done = gateway(desk, "reply", "1", "--by", "alice", stdin=b"Hello Ann,\nit ships today.\n")
    assert done.returncode == 0, done.stderr
    [answer] = wait_until(lambda: answers(sink), what="the answer")
    assert text_of(answer).strip() == "Hello Ann,\nit ships today."
    [replied] = [e for e in show(desk)["events"] if e["kind"] == "replied"]
    assert replied["detail"]["via"] == "cli"


def test_answering_an_unassigned_conversation_claims_it(desk: RunningDaemon, sink: Sink) -> None:
    ok(desk, "unassign", "1", "--by", "carol")
    done = gateway(desk, "reply", "1", "--by", "bob", stdin=b"Bob here: it ships today.\n")
    assert done.returncode == 0, done.stderr
    [row] = desk.conversations()
    assert row["assignee"] == "bob"
    claimed = [e for e in show(desk)["events"] if e["kind"] == "claimed"]
    assert [(e["actor"], e["detail"]["via"]) for e in claimed] == [("bob", "cli")]


def test_gateway_reply_refuses_an_empty_answer(desk: RunningDaemon) -> None:
    done = gateway(desk, "reply", "1", "--by", "alice", stdin=b"\n \n")
    assert done.returncode == 1
    assert done.stderr.strip() == "The answer is empty: there is nothing to send the customer."


def test_show_prints_what_the_customer_wrote(desk: RunningDaemon) -> None:
    out = ok(desk, "show", "1")
    assert "I ordered a lamp on Monday.\nWhere is it?" in out


def test_without_replies_the_alert_is_answered_to_the_customer(
    make_settings: Callable[..., Settings], start_daemon: Callable[..., RunningDaemon], sink: Sink
) -> None:
    running = start_daemon(make_settings(notify=smtp_notify(sink.port)))
    running.send(mail("Hi", sender=f"Ann <{ANN}>"))
    running.drain()
    alert = alert_to(sink, ALICE)
    assert str(alert["Reply-To"]) == ANN
    assert MARKER not in text_of(alert)


def test_the_replies_address_can_be_a_mailbox_the_gateway_polls(
    make_settings: Callable[..., Settings],
    start_daemon: Callable[..., RunningDaemon],
    sink: Sink,
    dovecot: Dovecot,
    tmp_path: Path,
) -> None:
    """`[replies.imap]`: the agent's reply is taken from the mailbox (its To holds the
    token); the answer reaches the customer as it does by SMTP."""
    mailbox = imap_inbox(dovecot, tmp_path, user="sales", address=REPLIES)
    running = start_daemon(
        make_settings(
            round_robin={"enabled": True, "agents": ["alice"]},
            notify=smtp_notify(sink.port),
            replies={"address": REPLIES, "imap": mailbox["imap"]},
        )
    )
    connected(running, REPLIES)
    running.send(mail("Where is my parcel?", sender=f"Ann <{ANN}>"))
    running.drain()
    message = reply(alert_to(sink, ALICE), "It ships today.")
    dovecot.append("sales", message.as_bytes(policy=policy.SMTP))
    [answer] = wait_until(lambda: answers(sink), what="the answer")
    assert text_of(answer).strip() == "It ships today."
    [state] = running.query("SELECT source, state FROM messages WHERE inbox = ?", (REPLIES,))
    assert tuple(state) == ("imap", "applied")


class RefusingAnn(Sink):
    """A smarthost that takes mail for everybody but Ann, whose address it refuses."""

    async def handle_RCPT(
        self, server: object, session: object, envelope: Envelope, address: str, options: object
    ) -> str:
        if address == ANN:
            return "550 5.1.1 <ann@example.org>: no such user"
        envelope.rcpt_tos.append(address)
        return "250 OK"


def test_an_answer_given_up_on_is_told_to_its_agent(
    make_settings: Callable[..., Settings],
    start_daemon: Callable[..., RunningDaemon],
    clock: Clock,
) -> None:
    smarthost = RefusingAnn(free_port())
    smarthost.start()
    try:
        running = start_daemon(
            make_settings(
                round_robin={"enabled": True, "agents": ["alice"]},
                notify=smtp_notify(smarthost.port),
                replies={"address": REPLIES},
            ),
            clock=clock,
        )
        running.send(mail("Where is my parcel?", sender=f"Ann <{ANN}>"))
        running.drain()
        send_reply(running, reply(alert_to(smarthost, ALICE), "It ships today."))
        wait_until(lambda: running.events(1, "answer_failed"), what="the first failure")
        clock.ahead = timedelta(days=3)  # past the two days an answer is tried for
        notice = alert_to(smarthost, ALICE, count=2)
    finally:
        smarthost.stop()
    assert str(notice["Subject"]) == "Not delivered: Re: Where is my parcel? [#1]"
    assert "Your answer to ann@example.org could not be delivered" in text_of(notice)
    assert "no such user" in text_of(notice)
    failures = running.events(1, "answer_failed")
    assert json.loads(failures[-1]["detail"])["retry_at"] is None


def test_twenty_agents_mail_racing_ends_in_one_serial_order_with_every_event_once(
    make_settings: Callable[..., Settings], start_daemon: Callable[..., RunningDaemon], sink: Sink
) -> None:
    import random
    import threading

    from gateway.replies import token

    names = [f"a{n}" for n in range(20)]
    agents = [{"id": name, "email": f"{name}@agents.test"} for name in names]
    running = start_daemon(
        make_settings(
            round_robin={"enabled": False, "agents": []},
            agents=agents,
            teams=[],
            notify=smtp_notify(sink.port),
            replies={"address": REPLIES},
        )
    )
    running.send(mail("Lamp", sender=f"Ann <{ANN}>"))
    running.drain()
    [secret] = running.query("SELECT value FROM meta WHERE key = 'alert_mark_secret'")
    [first] = running.query("SELECT id FROM events WHERE conversation_id = 1")
    choices = ["#claim", "#unassign", "#close", "#reopen", "#away", "#available", "answer"]
    chosen = random.Random(20).choices
    mails = {}
    for name in names:
        lines = [c for c in chosen(choices, k=2) if c != "answer"]
        lines += [f"#assign {chosen(names)[0]}"] if name.endswith(("1", "5")) else []
        text = "\n".join(lines) + (f"\n\nAnswer from {name}." if name.endswith("3") else "")
        address = token.reply_address(REPLIES, token.make(bytes.fromhex(secret[0]), first[0], name))
        message = EmailMessage()
        message["From"], message["To"], message["Subject"] = f"{name}@agents.test", address, "Re"
        message["Message-ID"] = f"<race-{name}@agents.test>"
        message.set_content(text)
        mails[name] = message
    threads = [
        threading.Thread(
            target=running.send, args=(m,), kwargs={"to": [str(m["To"])], "sender": str(m["From"])}
        )
        for m in mails.values()
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    running.drain()
    order = running.query(
        "SELECT message_id, state FROM messages WHERE inbox = ? ORDER BY id", (REPLIES,)
    )
    assert len(order) == 20
    # Replay them in the order intake took them (arrival), each mail all or nothing.
    assignee: str | None = None
    status = "open"
    expected: list[tuple[str, str, str | None]] = []
    for row in order:
        name = row["message_id"].split("-", 1)[1].split("@")[0]
        text = text_of(mails[name])
        commands = [line for line in text.splitlines() if line.startswith("#")]
        # A mail with nothing to do is refused too.
        new_assignee, new_status, events = assignee, status, []
        ok_ = bool(commands) or "Answer from" in text
        for line in commands:
            word, _, target = line[1:].partition(" ")
            if word == "claim":
                if new_assignee not in (None, name):
                    ok_ = False
                    break
                if new_assignee is None:
                    events.append(("claimed", name, name))
                new_assignee = name
            elif word == "assign" and target != new_assignee:
                kind = "assigned" if new_assignee is None else "reassigned"
                events.append((kind, name, target))
                new_assignee = target
            elif word == "unassign" and new_assignee is not None:
                events.append(("unassigned", name, None))
                new_assignee = None
            elif word in ("close", "reopen"):
                wanted = "closed" if word == "close" else "open"
                if new_status != wanted:
                    events.append(("closed" if word == "close" else "reopened", name, new_assignee))
                    new_status = wanted
        owners = any(line.split()[0] in ("#claim", "#assign", "#unassign") for line in commands)
        if ok_ and "Answer from" in text:
            if new_assignee is None and not owners:  # a mail saying who has it is obeyed
                events.append(("claimed", name, name))
                new_assignee = name
            events.append(("replied", name, name))
        assert row["state"] == ("applied" if ok_ else "refused"), (name, text)
        if ok_:
            assignee, status = new_assignee, new_status
            expected += events
    [conversation] = running.conversations()
    assert (conversation["assignee"], conversation["status"]) == (assignee, status)
    kinds = {"claimed", "assigned", "reassigned", "unassigned", "closed", "reopened", "replied"}
    happened = [
        (e["kind"], e["actor"], e["agent"]) for e in running.events(1) if e["kind"] in kinds
    ]
    assert happened == expected
