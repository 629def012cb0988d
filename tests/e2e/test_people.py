"""People's side: `gateway` run as a subprocess against a running daemon and a real SMTP sink."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from email import message_from_bytes, policy
from pathlib import Path
from typing import Any

import pytest

from gateway.config import Settings
from tests.conftest import BASE, RunningDaemon, Sink, config_file, mail, smtp_notify, wait_until

pytestmark = pytest.mark.integration

NO_ROTATION = {"enabled": False, "agents": []}


def gateway(
    running: RunningDaemon, *args: str, stdin: bytes | None = None
) -> subprocess.CompletedProcess[str]:
    config = config_file(running.settings)
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args, "--config", str(config)],
        input=stdin.decode("latin-1") if stdin is not None else None,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONIOENCODING": "latin-1"} if stdin is not None else None,
    )


def ok(running: RunningDaemon, *args: str) -> str:
    done = gateway(running, *args)
    assert done.returncode == 0, done.stderr
    return done.stdout


def show(running: RunningDaemon, conversation_id: int = 1) -> dict[str, Any]:
    view: dict[str, Any] = json.loads(ok(running, "show", str(conversation_id), "--json"))
    return view


@pytest.fixture
def desk(
    make_settings: Callable[..., Settings], start_daemon: Callable[..., RunningDaemon], sink: Sink
) -> RunningDaemon:
    running = start_daemon(make_settings(round_robin=NO_ROTATION, notify=smtp_notify(sink.port)))
    running.send(
        mail(
            "Where is my parcel?",
            sender="Ann <ann@example.org>",
            Message_ID="<parcel-1@example.org>",
        )
    )
    running.drain()
    assert running.conversations()[0]["assignee"] is None
    return running


def test_assign_reassign_unassign_claim_close_reopen_make_that_timeline(
    desk: RunningDaemon,
) -> None:
    ok(desk, "assign", "1", "alice", "--by", "carol")
    ok(desk, "assign", "1", "bob", "--by", "carol")
    ok(desk, "unassign", "1", "--by", "dave")
    ok(desk, "claim", "1", "carol", "--by", "carol")
    ok(desk, "close", "1", "--by", "carol")
    ok(desk, "reopen", "1", "--by", "alice")
    view = show(desk)
    timeline = [
        (e["kind"], e["actor"], e["agent"], e["previous_agent"])
        for e in view["events"]
        if e["kind"] not in {"received", "notified", "notify_failed", "notify_superseded"}
    ]
    assert timeline == [
        ("assigned", "carol", "alice", None),
        ("reassigned", "carol", "bob", "alice"),
        ("unassigned", "dave", None, "bob"),
        ("claimed", "carol", "carol", None),
        ("closed", "carol", "carol", None),
        ("reopened", "alice", "carol", None),
    ]
    assert [e["detail"].get("via") for e in view["events"] if e["kind"] == "assigned"] == ["cli"]
    assert (view["assignee"], view["status"]) == ("carol", "open")
    human = ok(desk, "show", "1")
    positions = [
        human.index(line)
        for line in (
            "assigned to alice by carol",
            "reassigned from alice to bob by carol",
            "unassigned from bob by dave",
            "claimed by carol",
            "closed by carol",
            "reopened by alice",
        )
    ]
    assert positions == sorted(positions)


def test_the_reassigned_agent_is_alerted_and_the_claimer_is_not(
    desk: RunningDaemon, sink: Sink
) -> None:
    ok(desk, "assign", "1", "alice", "--by", "carol")
    wait_until(lambda: sink.received, what="alice's alert")  # before it would be superseded
    ok(desk, "assign", "1", "bob", "--by", "carol")
    wait_until(lambda: len(sink.received) == 2, what="two alerts")
    bob = message_from_bytes(sink.received[1].original_content, policy=policy.default)
    assert sink.received[1].rcpt_tos == ["bob@agents.test"]
    assert bob["Subject"] == "[#1] Assigned: Where is my parcel?"
    assert "reassigned to you by carol" in bob.get_body(("plain",)).get_content()
    ok(desk, "unassign", "1", "--by", "carol")
    ok(desk, "claim", "1", "carol", "--by", "carol")
    ok(desk, "assign", "1", "alice", "--by", "Alice@Agents.test")  # to oneself: no alert either
    desk.drain()
    notified = [e["agent"] for e in show(desk)["events"] if e["kind"] == "notified"]
    assert notified == ["alice", "bob"]
    assert len(sink.received) == 2


def test_assigning_to_the_current_assignee_is_a_no_op(desk: RunningDaemon) -> None:
    ok(desk, "assign", "1", "alice", "--by", "carol")
    out = ok(desk, "assign", "1", "alice", "--by", "carol")
    assert "nothing changed" in out
    assert [e["kind"] for e in show(desk)["events"]].count("assigned") == 1


def test_claim_of_an_assigned_conversation_is_refused_naming_who_has_it(
    desk: RunningDaemon,
) -> None:
    ok(desk, "assign", "1", "alice", "--by", "carol")
    done = gateway(desk, "claim", "1", "bob")
    assert done.returncode == 1
    assert done.stderr.strip() == "Conversation 1 is already assigned to alice."


def test_a_customer_reply_reopens_a_closed_conversation_and_keeps_its_assignee(
    desk: RunningDaemon,
) -> None:
    ok(desk, "assign", "1", "bob", "--by", "carol")
    ok(desk, "close", "1", "--by", "bob")
    desk.send(
        mail(
            "Re: Where is my parcel?",
            sender="ann@example.org",
            In_Reply_To="<parcel-1@example.org>",
        )
    )
    desk.drain()
    view = show(desk)
    assert (view["status"], view["assignee"], view["message_count"]) == ("open", "bob", 2)
    kinds = [e["kind"] for e in view["events"] if e["kind"] not in {"notified", "notify_failed"}]
    assert kinds[-2:] == ["received", "reopened"]


def test_twenty_people_claiming_at_once_exactly_one_wins(
    make_settings: Callable[..., Settings], start_daemon: Callable[..., RunningDaemon]
) -> None:
    agents = [{"id": f"a{n}", "email": f"a{n}@agents.test"} for n in range(20)]
    running = start_daemon(make_settings(round_robin=NO_ROTATION, agents=agents, teams=[]))
    running.send(mail("Anyone?"))
    running.drain()
    config = config_file(running.settings)
    claims = [
        subprocess.Popen(
            [sys.executable, "-m", "gateway", "claim", "1", f"a{n}", "--config", str(config)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for n in range(20)
    ]
    results = [(p.wait(60), p.communicate()[1]) for p in claims]
    winners = [n for n, (code, _) in enumerate(results) if code == 0]
    assert len(winners) == 1
    assert all(code == 1 for code, _ in results if code != 0)
    winner = f"a{winners[0]}"
    assert all(
        err.strip() == f"Conversation 1 is already assigned to {winner}."
        for code, err in results
        if code == 1
    )
    events = running.events(1, "claimed")
    assert [e["agent"] for e in events] == [winner]


def test_status_takes_an_agent_out_of_the_rotation_and_back_without_a_restart(
    make_settings: Callable[..., Settings], start_daemon: Callable[..., RunningDaemon]
) -> None:
    running = start_daemon(make_settings())  # rotation alice, bob, carol

    def route_three() -> list[str | None]:
        before = len(running.conversations())
        for n in range(3):
            running.send(mail(f"question {before + n}"))
        running.drain()
        return [c["assignee"] for c in running.conversations()[before:]]

    assert route_three() == ["alice", "bob", "carol"]
    ok(running, "status", "bob", "away")
    assert route_three() == ["alice", "carol", "alice"]
    ok(running, "status", "bob", "available")
    assert route_three() == ["bob", "carol", "alice"]
    agents = {a["id"]: a for a in json.loads(ok(running, "agents", "--json"))}
    assert agents["bob"]["status"] == "available" and agents["alice"]["open"] == 4


def test_unknown_conversation_agent_and_status_are_refused_in_a_sentence(
    desk: RunningDaemon,
) -> None:
    for args, sentence in [
        (("assign", "42", "alice"), "There is no conversation 42."),
        (("assign", "1", "zed"), "There is no agent 'zed'; the agents are alice, bob, carol."),
        (("status", "zed", "away"), "There is no agent 'zed'; the agents are alice, bob, carol."),
    ]:
        done = gateway(desk, *args)
        assert (done.returncode, done.stderr.strip()) == (1, sentence)
    misuse = gateway(desk, "status", "alice", "asleep")
    assert misuse.returncode == 2 and "usage:" in misuse.stderr


def limited(limit: int, **sections: Any) -> dict[str, Any]:
    """The desk's sections with every agent's max_open at `limit`."""
    return {"agents": [{**agent, "max_open": limit} for agent in BASE["agents"]], **sections}


def questions(running: RunningDaemon, count: int) -> None:
    """`count` new conversations, routed."""
    for n in range(count):
        running.send(mail(f"question {n}"))
    running.drain()


def test_agents_at_their_limit_are_skipped_and_the_rest_wait_unassigned(
    make_settings: Callable[..., Settings], start_daemon: Callable[..., RunningDaemon]
) -> None:
    running = start_daemon(make_settings(**limited(2)))
    questions(running, 9)
    assignees = [c["assignee"] for c in running.conversations()]
    assert assignees == ["alice", "bob", "carol"] * 2 + [None] * 3
    [waiting] = running.events(7, "received")
    assert json.loads(waiting["detail"])["route"] == (
        "no rule assigns it and no agent of the rotation can take it, skipping"
        " alice full at 2/2, bob full at 2/2, carol full at 2/2"
    )
    agents = json.loads(ok(running, "agents", "--json"))
    assert [(a["open"], a["max_open"]) for a in agents] == [(2, 2)] * 3
    assert "2/2" in ok(running, "agents")


def test_the_queue_goes_oldest_first_to_whoever_has_room_again(
    make_settings: Callable[..., Settings], start_daemon: Callable[..., RunningDaemon]
) -> None:
    running = start_daemon(make_settings(**limited(2)))
    questions(running, 9)  # alice 1, 4; bob 2, 5; carol 3, 6; 7, 8, 9 wait

    assert ok(running, "close", "1").strip() == (
        "Conversation 1 closed. alice takes conversation 7 from the queue."
    )
    [given] = running.events(7, "assigned")
    assert given["agent"] == "alice" and json.loads(given["detail"])["via"] == "queue"
    [first] = running.events(4, "assigned")  # alice's second, by the rotation: her load then
    assert json.loads(first["detail"])["load"] == "1/2"
    wait_until(lambda: running.events(7, "notified"), what="alice's alert for 7")

    ok(running, "status", "bob", "away")
    assert ok(running, "close", "2").strip() == "Conversation 2 closed."  # bob is away
    assert ok(running, "status", "bob", "available").strip() == (
        "bob is now available. bob takes conversation 8 from the queue."
    )
    assignees = {c["id"]: c["assignee"] for c in running.conversations()}
    assert (assignees[7], assignees[8], assignees[9]) == ("alice", "bob", None)


def test_a_conversation_unassigned_by_a_person_waits_for_a_claim(
    make_settings: Callable[..., Settings], start_daemon: Callable[..., RunningDaemon]
) -> None:
    running = start_daemon(make_settings(**limited(1)))
    questions(running, 3)  # alice 1, bob 2, carol 3
    assert ok(running, "unassign", "1").strip() == (
        "Conversation 1 is back in the unassigned queue (it was alice's)."
    )
    assert running.conversations()[0]["assignee"] is None  # not handed back to alice


@pytest.mark.parametrize(
    ("setting", "then", "event"),
    [("keep", "alice", None), ("reassign", "bob", "reassigned"), ("unassign", "bob", "unassigned")],
)
def test_a_reply_to_an_away_owners_conversation_follows_the_setting(
    make_settings: Callable[..., Settings],
    start_daemon: Callable[..., RunningDaemon],
    setting: str,
    then: str | None,
    event: str | None,
) -> None:
    running = start_daemon(make_settings(routing={"reply_when_assignee_away": setting}))
    running.send(mail("Broken", sender="wile@acme.com", Message_ID="<a1@acme.com>"))
    running.drain()
    ok(running, "status", "alice", "away")
    running.send(mail("Re: Broken", sender="wile@acme.com", In_Reply_To="<a1@acme.com>"))
    running.drain()
    [conversation] = running.conversations()
    assert conversation["assignee"] == then
    if event is not None:
        [changed] = running.events(1, event)
        reason = json.loads(changed["detail"])["reason"]
        assert reason.startswith("the customer wrote again and alice is away")
    if setting == "unassign":  # back in the queue, and bob, able, is given it from there
        [given] = running.events(1, "assigned")[1:]
        assert json.loads(given["detail"])["via"] == "queue"


def test_a_reply_unassigned_from_an_away_owner_waits_when_nobody_can_take_it(
    make_settings: Callable[..., Settings], start_daemon: Callable[..., RunningDaemon]
) -> None:
    running = start_daemon(make_settings(routing={"reply_when_assignee_away": "unassign"}))
    running.send(mail("Broken", sender="wile@acme.com", Message_ID="<a1@acme.com>"))
    running.drain()
    for agent in ("alice", "bob", "carol"):
        ok(running, "status", agent, "away")
    running.send(mail("Re: Broken", sender="wile@acme.com", In_Reply_To="<a1@acme.com>"))
    running.drain()
    assert running.conversations()[0]["assignee"] is None
    assert ok(running, "status", "alice", "available").strip() == (
        "alice is now available. alice takes conversation 1 from the queue."
    )


def test_balanced_mode_gives_new_mail_to_the_least_loaded(
    make_settings: Callable[..., Settings], start_daemon: Callable[..., RunningDaemon]
) -> None:
    running = start_daemon(make_settings(round_robin={**BASE["round_robin"], "mode": "balanced"}))
    for n in range(3):
        running.send(mail(f"question {n}"))
    running.drain()
    ok(running, "close", "2")  # bob has none open now
    ok(running, "assign", "3", "alice")  # alice two, carol none
    running.send(mail("next"))
    running.drain()
    assert [c["assignee"] for c in running.conversations()] == ["alice", "bob", "alice", "bob"]
    running.send(mail("and the next"))
    running.drain()
    assert running.conversations()[-1]["assignee"] == "carol"  # none open, longest since


def test_a_limit_raised_by_a_reload_hands_out_the_queue(
    make_settings: Callable[..., Settings],
    start_daemon: Callable[..., RunningDaemon],
    tmp_path: Path,
) -> None:
    config = tmp_path / "gateway.toml"
    running = start_daemon(make_settings(**limited(1)), config_path=config)
    questions(running, 5)  # alice 1, bob 2, carol 3; 4 and 5 wait
    assert [c["assignee"] for c in running.conversations()][3:] == [None, None]
    raised = [{**agent, "max_open": 2 if agent["id"] == "bob" else 1} for agent in BASE["agents"]]
    make_settings(agents=raised)
    running.daemon.request_reload()
    wait_until(lambda: running.conversations()[3]["assignee"] == "bob", what="bob to take 4")
    running.drain()
    assert [c["assignee"] for c in running.conversations()][3:] == ["bob", None]


def test_with_hand_out_off_the_queue_waits_for_a_claim(
    make_settings: Callable[..., Settings], start_daemon: Callable[..., RunningDaemon]
) -> None:
    rotation = {**BASE["round_robin"], "hand_out_queue": False}
    running = start_daemon(make_settings(**limited(1, round_robin=rotation)))
    questions(running, 4)
    assert ok(running, "close", "1").strip() == "Conversation 1 closed."
    assert running.conversations()[3]["assignee"] is None
