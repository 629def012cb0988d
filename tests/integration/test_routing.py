"""Routing through the real daemon: rules in file order, teams, round-robin, availability."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

import pytest

from gateway.cli import main as gateway
from gateway.config import Settings
from tests.conftest import RunningDaemon, config_file, mail

pytestmark = pytest.mark.integration

RULES = [
    {"name": "ACME is Alice's", "sender_domain": ["acme.com"], "assign_to": "agent:alice"},
    {
        "name": "Money to billing",
        "subject_keywords": ["refund", "late invoice"],
        "assign_to": "team:billing",
        "tags": ["billing"],
    },
    {
        "name": "Sales address to Carol",
        "recipient": ["sales@example.com"],
        "assign_to": "agent:carol",
    },
    {"name": "Urgent tag", "subject_keywords": ["urgent"], "tags": ["urgent"]},
    {"name": "Everything else to Bob", "assign_to": "agent:bob"},
]


@pytest.fixture
def routed(
    make_settings: Callable[..., Settings], start_daemon: Callable[..., RunningDaemon]
) -> RunningDaemon:
    return start_daemon(make_settings(rules=RULES))


def only_conversation(running: RunningDaemon) -> dict[str, object]:
    running.drain()
    rows = running.conversations()
    assert len(rows) == 1
    return dict(rows[0])


def status(running: RunningDaemon, agent: str, value: str) -> None:
    config = str(config_file(running.settings))
    assert gateway(["status", agent, value, "--config", config]) == 0


def test_sender_domain_matches_a_subdomain(routed: RunningDaemon) -> None:
    routed.send(mail(sender="Road Runner <rr@mail.ACME.com>"))
    conversation = only_conversation(routed)
    assert conversation["assignee"] == "alice"
    [assigned] = routed.events(1, "assigned")
    assert assigned["rule"] == "ACME is Alice's"


def test_sender_domain_does_not_match_a_lookalike(routed: RunningDaemon) -> None:
    routed.send(mail(sender="x@notacme.com"))
    assert only_conversation(routed)["assignee"] == "bob"


def test_rfc2047_encoded_subject_keyword_matches_as_a_whole_word(routed: RunningDaemon) -> None:
    routed.send(mail(subject="=?utf-8?b?UmU6IFJFRlVORCBwbGVhc2Ug4oCU?="))  # "Re: REFUND please —"
    conversation = only_conversation(routed)
    assert conversation["team"] == "billing"
    assert conversation["assignee"] in {"alice", "bob"}
    assert routed.query("SELECT tag FROM tags")[0]["tag"] == "billing"


def test_keyword_inside_a_longer_word_does_not_match(routed: RunningDaemon) -> None:
    routed.send(mail(subject="I was refunded already"))
    conversation = only_conversation(routed)
    assert (conversation["team"], conversation["assignee"]) == (None, "bob")


def test_plus_tag_recipient_matches_the_rule(routed: RunningDaemon) -> None:
    routed.send(mail(to="sales+promo@example.com"), to=["sales+promo@example.com"])
    assert only_conversation(routed)["assignee"] == "carol"


def test_alias_delivery_is_the_inbox_for_recipient_rules(
    make_settings: Callable[..., Settings], start_daemon: Callable[..., RunningDaemon]
) -> None:
    rules = [{"name": "Support", "recipient": ["support@example.com"], "assign_to": "agent:carol"}]
    running = start_daemon(make_settings(rules=rules))
    running.send(mail(to="Someone <other@example.org>"), to=["support@gw.test"])
    assert only_conversation(running)["assignee"] == "carol"


def test_first_matching_rule_wins_over_later_ones(routed: RunningDaemon) -> None:
    # Matches "ACME is Alice's" (1st) and "Money to billing" (2nd): the first wins.
    routed.send(mail(subject="refund", sender="a@acme.com"))
    conversation = only_conversation(routed)
    assert (conversation["assignee"], conversation["team"]) == ("alice", None)


def test_tagging_rule_adds_tags_and_evaluation_goes_on(routed: RunningDaemon) -> None:
    routed.send(mail(subject="URGENT: printer on fire"))
    assert only_conversation(routed)["assignee"] == "bob"  # the catch-all after it
    assert [r["tag"] for r in routed.query("SELECT tag FROM tags")] == ["urgent"]


def test_catch_all_rule_takes_what_nothing_else_matched(routed: RunningDaemon) -> None:
    routed.send(mail(subject="Hello there", sender="someone@example.net"))
    conversation = only_conversation(routed)
    assert conversation["assignee"] == "bob"
    assert routed.events(1, "assigned")[0]["rule"] == "Everything else to Bob"


def test_team_target_rotates_among_available_members(routed: RunningDaemon) -> None:
    for n in range(4):
        routed.send(mail(subject=f"refund #{n}"))
    routed.drain()
    assert [c["assignee"] for c in routed.conversations()] == ["alice", "bob", "alice", "bob"]
    status(routed, "alice", "away")
    routed.send(mail(subject="refund again"))
    routed.send(mail(subject="another refund"))
    routed.drain()
    assert [c["assignee"] for c in routed.conversations()][4:] == ["bob", "bob"]


def test_team_with_nobody_available_keeps_the_team_unassigned(routed: RunningDaemon) -> None:
    status(routed, "alice", "away")
    status(routed, "bob", "dnd")
    routed.send(mail(subject="refund"))
    conversation = only_conversation(routed)
    assert (conversation["assignee"], conversation["team"]) == (None, "billing")


def test_agent_rule_assigns_whatever_the_agents_status(routed: RunningDaemon) -> None:
    status(routed, "alice", "away")
    routed.send(mail(sender="a@acme.com"))
    assert only_conversation(routed)["assignee"] == "alice"
    assert '"status": "away"' in routed.events(1, "assigned")[0]["detail"]


# --- round-robin ---------------------------------------------------------------


@pytest.fixture
def rotation(
    make_settings: Callable[..., Settings], start_daemon: Callable[..., RunningDaemon]
) -> RunningDaemon:
    return start_daemon(make_settings())


def assignees(running: RunningDaemon) -> list[str | None]:
    running.drain()
    return [row["assignee"] for row in running.conversations()]


def test_round_robin_is_fair(rotation: RunningDaemon) -> None:
    for n in range(11):
        rotation.send(mail(f"question {n}"))
    counts = Counter(assignees(rotation))
    assert sorted(counts.values()) == [3, 4, 4]  # 11 over 3: ⌊11/3⌋ or ⌈11/3⌉ each
    assert assignees(rotation)[:3] == ["alice", "bob", "carol"]


@pytest.mark.parametrize("unavailable", ["away", "dnd"])
def test_unavailable_agent_is_skipped_and_served_again_when_back(
    rotation: RunningDaemon, unavailable: str
) -> None:
    status(rotation, "bob", unavailable)
    for n in range(4):
        rotation.send(mail(f"first {n}"))
    assert assignees(rotation) == ["alice", "carol", "alice", "carol"]
    status(rotation, "bob", "available")
    for n in range(3):
        rotation.send(mail(f"second {n}"))
    assert assignees(rotation)[4:] == ["alice", "bob", "carol"]


def test_everyone_unavailable_leaves_it_unassigned_without_moving_the_rotation(
    rotation: RunningDaemon,
) -> None:
    rotation.send(mail("first"))
    rotation.drain()
    for agent in ("alice", "bob", "carol"):
        status(rotation, agent, "away")
    rotation.send(mail("nobody home"))
    assert assignees(rotation) == ["alice", None]
    status(rotation, "carol", "available")
    status(rotation, "bob", "available")
    rotation.send(mail("back"))
    assert assignees(rotation)[2] == "bob"


def test_rotation_continues_where_it_stopped_after_a_restart(
    make_settings: Callable[..., Settings], start_daemon: Callable[..., RunningDaemon]
) -> None:
    settings = make_settings()
    first = start_daemon(settings)
    first.send(mail("one"))
    first.send(mail("two"))
    first.drain()
    first.stop()
    second = start_daemon(settings)
    second.send(mail("three"))
    second.send(mail("four"))
    assert assignees(second) == ["alice", "bob", "carol", "alice"]


def test_round_robin_off_and_no_rule_leaves_it_unassigned(
    make_settings: Callable[..., Settings], start_daemon: Callable[..., RunningDaemon]
) -> None:
    running = start_daemon(make_settings(round_robin={"enabled": False, "agents": []}))
    running.send(mail())
    assert assignees(running) == [None]
