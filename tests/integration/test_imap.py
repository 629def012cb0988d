"""Connected mailboxes against a real Dovecot: taken once each, through every interruption."""

from __future__ import annotations

from collections.abc import Callable, MutableMapping
from datetime import UTC, datetime, timedelta
from email.policy import SMTP
from pathlib import Path
from typing import Any

import pytest
import structlog
from structlog.testing import capture_logs

from gateway.config import Settings
from tests.conftest import RunningDaemon, mail, wait_until
from tests.dovecot import Dovecot

pytestmark = pytest.mark.integration


def imap_inbox(
    dovecot: Dovecot,
    tmp_path: Path,
    user: str = "support",
    address: str = "support@example.com",
    password: str | None = None,
    **extra: Any,
) -> dict[str, Any]:
    secret = tmp_path / f"{user}.password"
    secret.write_text((password or dovecot.users[user]) + "\n")  # as an editor saves it
    imap = {
        "host": "127.0.0.1",
        "port": dovecot.port,
        "tls": False,
        "username": user,
        "password_file": str(secret),
        "mode": "idle",
        **extra,
    }
    return {"address": address, "imap": imap}


def raw(subject: str, **headers: str) -> bytes:
    return mail(subject, **headers).as_bytes(policy=SMTP)


def connected(running: RunningDaemon, inbox: str = "support@example.com") -> None:
    wait_until(
        lambda: running.query("SELECT 1 FROM imap_cursors WHERE inbox = ?", (inbox,)),
        what="the poller's first contact",
    )


def routed_subjects(running: RunningDaemon) -> list[str]:
    running.drain()
    return [c["subject"] for c in running.conversations()]


@pytest.fixture
def imap_settings(
    make_settings: Callable[..., Settings], dovecot: Dovecot, tmp_path: Path
) -> Callable[..., Settings]:
    def make(**extra: Any) -> Settings:
        return make_settings(inboxes=[imap_inbox(dovecot, tmp_path, **extra)])

    return make


@pytest.mark.parametrize("mode", ["idle", "poll"])
def test_a_message_appended_by_another_client_is_routed(
    imap_settings: Callable[..., Settings],
    start_daemon: Callable[..., RunningDaemon],
    dovecot: Dovecot,
    mode: str,
) -> None:
    running = start_daemon(imap_settings(mode=mode, poll_interval=1))
    connected(running)
    dovecot.append("support", raw("Printer on fire"))
    wait_until(lambda: running.conversations(), what="the appended message routed")
    [conversation] = running.conversations()
    assert (conversation["subject"], conversation["assignee"]) == ("Printer on fire", "alice")
    assert running.query("SELECT source FROM messages")[0][0] == "imap"
    # The agent sees the assignment in their own mail program, and the mail still unread.
    wait_until(
        lambda: "assigned-alice" in dovecot.flags("support").get(1, set()), what="the keyword"
    )
    assert "\\Seen" not in dovecot.flags("support")[1]


def test_mail_appended_while_stopped_is_routed_once_each_and_older_mail_left_alone(
    imap_settings: Callable[..., Settings],
    start_daemon: Callable[..., RunningDaemon],
    dovecot: Dovecot,
) -> None:
    dovecot.append("support", raw("from before the gateway"))
    settings = imap_settings(initial_sync="new")
    first = start_daemon(settings)
    connected(first)
    first.stop()
    for n in range(50):
        dovecot.append("support", raw(f"while stopped {n}"))
    second = start_daemon(settings)
    wait_until(lambda: len(second.conversations()) >= 50, timeout=30, what="50 routed")
    subjects = routed_subjects(second)
    assert sorted(subjects) == sorted(f"while stopped {n}" for n in range(50))
    assert second.query("SELECT count(*) FROM messages")[0][0] == 50


def test_initial_sync_all_takes_what_was_there_before(
    imap_settings: Callable[..., Settings],
    start_daemon: Callable[..., RunningDaemon],
    dovecot: Dovecot,
) -> None:
    dovecot.append("support", raw("already there"))
    running = start_daemon(imap_settings(initial_sync="all"))
    wait_until(lambda: running.conversations(), what="the old message routed")
    assert routed_subjects(running) == ["already there"]


def test_dovecot_restarted_under_the_daemon_reconnects_and_routes_nothing_twice(
    imap_settings: Callable[..., Settings],
    start_daemon: Callable[..., RunningDaemon],
    dovecot: Dovecot,
) -> None:
    running = start_daemon(imap_settings())
    connected(running)
    dovecot.append("support", raw("before the outage"))
    wait_until(lambda: running.conversations(), what="the first message")
    with capture_logs() as logs:
        dovecot.stop()
        wait_until(
            lambda: any(e["event"] == "imap.unavailable" for e in logs), what="the poller to notice"
        )
        # The relay does not wait for the mailbox: SMTP mail is taken and routed meanwhile.
        assert running.send(mail("over smtp meanwhile")) == {}
        wait_until(lambda: len(running.conversations()) == 2, what="the SMTP message")
        dovecot.start()
        dovecot.append("support", raw("during the outage"))
        wait_until(
            lambda: len(running.conversations()) == 3,
            timeout=30,
            what="the message that came meanwhile",
        )
    assert sorted(routed_subjects(running)) == [
        "before the outage",
        "during the outage",
        "over smtp meanwhile",
    ]
    assert running.query("SELECT count(*) FROM messages")[0][0] == 3
    assert any(e["event"] == "imap.connected" for e in logs)


def test_a_uidvalidity_change_routes_nothing_twice(
    imap_settings: Callable[..., Settings],
    start_daemon: Callable[..., RunningDaemon],
    dovecot: Dovecot,
) -> None:
    dovecot.create("support", "Support")
    running = start_daemon(imap_settings(folder="Support", mode="poll", poll_interval=1))
    connected(running)
    kept = [raw(f"kept {n}", Message_ID=f"<kept-{n}@example.org>") for n in range(3)]
    for message in kept:
        dovecot.append("support", message, "Support")
    wait_until(lambda: len(running.conversations()) == 3, what="three routed")
    before = running.query("SELECT uidvalidity FROM imap_cursors")[0][0]
    dovecot.recreate("support", "Support")  # the same mail again, renumbered
    for message in kept:
        dovecot.append("support", message, "Support")
    dovecot.append("support", raw("new after the change"), "Support")
    # Reconnecting may back off a few times while the folder is gone: allow for it.
    wait_until(lambda: len(running.conversations()) == 4, timeout=45, what="the new one routed")
    wait_until(
        lambda: running.query("SELECT uidvalidity FROM imap_cursors")[0][0] != before,
        what="the new UIDVALIDITY",
    )
    running.drain()
    assert running.query("SELECT count(*) FROM messages")[0][0] == 4
    assert len(running.conversations()) == 4


def test_a_restart_right_after_a_uidvalidity_change_still_leaves_older_mail_alone(
    imap_settings: Callable[..., Settings],
    start_daemon: Callable[..., RunningDaemon],
    dovecot: Dovecot,
) -> None:
    before_first_contact = datetime.now(UTC) - timedelta(hours=1)
    older = [raw(f"older {n}") for n in range(5)]
    dovecot.create("support", "Support")
    for message in older:
        dovecot.append("support", message, "Support", date=before_first_contact)
    settings = imap_settings(folder="Support", initial_sync="new")
    first = start_daemon(settings)
    connected(first)
    first.stop()
    [(before,)] = first.query("SELECT uidvalidity FROM imap_cursors")
    dovecot.recreate("support", "Support")  # the same older mail again, renumbered
    for message in older:
        dovecot.append("support", message, "Support", date=before_first_contact)

    crashed: list[str] = []

    def crash_after_the_reset(_: Any, __: str, entry: MutableMapping[str, Any]) -> Any:
        # The session fails right after committing the reset, and the daemon is
        # stopped before the poller tries again: as if the process died there.
        if entry["event"] == "imap.connected" and not crashed:
            crashed.append(entry["event"])
            raise RuntimeError("the process dies here")
        return entry

    with capture_logs() as logs:
        structlog.get_config()["processors"].insert(0, crash_after_the_reset)
        second = start_daemon(settings)
        wait_until(lambda: any(e["event"] == "imap.failed" for e in logs), what="the crash")
        second.stop()
    # Stopped right after the reset: the new numbering is kept, none of it scanned yet.
    [(uidvalidity, last_uid)] = second.query("SELECT uidvalidity, last_uid FROM imap_cursors")
    assert (uidvalidity != before, last_uid) == (True, 0)

    third = start_daemon(settings)
    wait_until(
        lambda: third.query("SELECT last_uid FROM imap_cursors")[0][0] == 5, what="the rescan"
    )
    dovecot.append("support", raw("new after the change"), "Support")
    wait_until(lambda: third.conversations(), what="the new message routed")
    assert routed_subjects(third) == ["new after the change"]
    assert third.query("SELECT count(*) FROM messages")[0][0] == 1


def test_a_wrong_password_stops_only_its_own_mailbox(
    make_settings: Callable[..., Settings],
    start_daemon: Callable[..., RunningDaemon],
    dovecot: Dovecot,
    tmp_path: Path,
) -> None:
    inboxes = [
        imap_inbox(dovecot, tmp_path, "support", "support@example.com", password="wr0ng-pw"),
        imap_inbox(dovecot, tmp_path, "sales", "sales@example.com"),
    ]
    with capture_logs() as logs:
        running = start_daemon(make_settings(inboxes=inboxes))
        connected(running, "sales@example.com")
        dovecot.append("sales", raw("for sales"))
        running.send(mail("over smtp"), to=["support@example.com"])
        wait_until(lambda: len(running.conversations()) == 2, what="both routed")
        failures = [e for e in logs if e["event"] == "imap.unavailable"]
    assert sorted(routed_subjects(running)) == ["for sales", "over smtp"]
    assert failures and all(e["mailbox"].startswith("support@") for e in failures)
    assert "refused the login" in failures[0]["reason"]
    assert not [e for e in logs if "wr0ng-pw" in str(e)]  # the password is never logged


def test_the_same_message_over_smtp_and_imap_is_one_message(
    imap_settings: Callable[..., Settings],
    start_daemon: Callable[..., RunningDaemon],
    dovecot: Dovecot,
) -> None:
    running = start_daemon(imap_settings())
    connected(running)
    message = raw("both ways", Message_ID="<both@example.org>")
    running.send(message)
    dovecot.append("support", message)
    wait_until(
        lambda: running.query("SELECT count(*) FROM imap_sources")[0][0] == 1,
        what="the IMAP copy seen",
    )
    assert running.query("SELECT count(*) FROM messages")[0][0] == 1
    assert len(running.conversations()) == 1
    # The IMAP copy, deduplicated against the SMTP one, carries the keywords all the same.
    wait_until(
        lambda: "assigned-alice" in dovecot.flags("support").get(1, set()),
        what="the copy's keyword",
    )


def test_a_reassignment_replaces_the_keywords_on_the_source_message(
    make_settings: Callable[..., Settings],
    start_daemon: Callable[..., RunningDaemon],
    dovecot: Dovecot,
    tmp_path: Path,
) -> None:
    from gateway.cli import main as gateway

    rules = [
        {
            "name": "Money",
            "subject_keywords": ["refund"],
            "assign_to": "team:billing",
            "tags": ["billing"],
        }
    ]
    running = start_daemon(make_settings(inboxes=[imap_inbox(dovecot, tmp_path)], rules=rules))
    connected(running)
    dovecot.append("support", raw("Refund my order"))
    wait_until(
        lambda: (
            dovecot.flags("support").get(1, set()) >= {"assigned-alice", "team-billing", "billing"}
        ),
        what="the first keywords",
    )
    config = str(tmp_path / "gateway.toml")
    assert gateway(["assign", "1", "bob", "--by", "carol", "--config", config]) == 0
    wait_until(
        lambda: "assigned-bob" in dovecot.flags("support").get(1, set()), what="bob's keyword"
    )
    flags = dovecot.flags("support")[1]
    assert "assigned-alice" not in flags and {"team-billing", "billing"} <= flags
    assert gateway(["unassign", "1", "--by", "carol", "--config", config]) == 0
    wait_until(lambda: "unassigned" in dovecot.flags("support").get(1, set()), what="unassigned")
    assert not any(f.startswith("assigned-") for f in dovecot.flags("support")[1])


def test_keywords_name_only_what_imap_keywords_can_hold() -> None:
    from gateway.notify.keywords import keyword, wanted

    assert keyword("assigned-jörg (ops)") == "assigned-j_rg__ops_"
    assert wanted(None, None, ["VIP list"]) == {"unassigned", "VIP_list"}


def test_check_connect_says_how_each_mailbox_went(
    make_settings: Callable[..., Settings],
    dovecot: Dovecot,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from gateway.cli import main as gateway

    make_settings(
        inboxes=[
            imap_inbox(dovecot, tmp_path, "support", "support@example.com", password="wr0ng-pw"),
            imap_inbox(dovecot, tmp_path, "sales", "sales@example.com"),
        ]
    )
    assert gateway(["check", "--connect", "--config", str(tmp_path / "gateway.toml")]) == 1
    out = capsys.readouterr().out
    assert f"sales@example.com: sales@127.0.0.1:{dovecot.port}/INBOX works" in out
    assert "keywords can be set" in out
    assert (
        f"support@example.com: support@127.0.0.1:{dovecot.port}/INBOX fails: the server"
        " refused the login" in out
    )
    assert "wr0ng-pw" not in out


def test_a_later_imap_copy_of_a_reply_routed_over_smtp_gets_the_keywords(
    make_settings: Callable[..., Settings],
    start_daemon: Callable[..., RunningDaemon],
    dovecot: Dovecot,
    tmp_path: Path,
) -> None:
    # No alerts, so no event comes between the reply's arrival and its IMAP copy.
    running = start_daemon(
        make_settings(inboxes=[imap_inbox(dovecot, tmp_path)], notify={"enabled": False})
    )
    connected(running)
    dovecot.append("support", raw("First", Message_ID="<first@example.org>"))
    wait_until(
        lambda: "assigned-alice" in dovecot.flags("support").get(1, set()),
        what="the first message's keyword",
    )
    reply = raw("Re: First", Message_ID="<reply@example.org>", In_Reply_To="<first@example.org>")
    running.send(reply)
    running.drain()
    dovecot.append("support", reply)  # the copy the mailbox also received
    wait_until(
        lambda: "assigned-alice" in dovecot.flags("support").get(2, set()),
        what="the reply's IMAP copy to carry the keyword",
    )


def test_keywords_for_many_conversations_take_one_login_not_one_each(
    imap_settings: Callable[..., Settings],
    start_daemon: Callable[..., RunningDaemon],
    dovecot: Dovecot,
) -> None:
    running = start_daemon(imap_settings())
    connected(running)
    for n in range(6):
        dovecot.append("support", raw(f"Question {n}"))
    wait_until(lambda: len(running.conversations()) == 6, what="six routed")
    wait_until(
        lambda: (
            all(
                any(f.startswith("assigned-") for f in flags)
                for flags in dovecot.flags("support").values()
            )
            and len(dovecot.flags("support")) == 6
        ),
        what="keywords on all six",
    )
    logins = (dovecot.folder / "dovecot.log").read_text().count("Login: user=<support>")
    assert logins - dovecot.client_logins <= 2  # the poller's session and the keyword writer's


def test_a_message_over_the_size_limit_is_routed_from_its_header_and_the_next_one_too(
    imap_settings: Callable[..., Settings],
    start_daemon: Callable[..., RunningDaemon],
    dovecot: Dovecot,
) -> None:
    running = start_daemon(imap_settings())  # smtp.max_message_size is 100KB
    connected(running)
    huge = mail("All the logs", body="2026-11-30 the printer failed again\n" * 8000)
    dovecot.append("support", huge.as_bytes(policy=SMTP))  # 300 KB
    dovecot.append("support", raw("A small one after it"))
    wait_until(lambda: len(running.conversations()) == 2, what="both routed")
    assert sorted(routed_subjects(running)) == ["A small one after it", "All the logs"]
    [(size,)] = running.query("SELECT size FROM messages WHERE subject = 'All the logs'")
    assert size < 2000  # its header only
    assert running.query("SELECT last_uid FROM imap_cursors")[0][0] == 2
    alerts = Path(running.settings.notify.file_dir)
    alert = wait_until(
        lambda: [a for a in alerts.glob("*.eml") if b"All the logs" in a.read_bytes()],
        what="the alert",
    )[0].read_text()
    assert "too large to attach" in alert


def test_a_backlog_of_large_messages_is_fetched_in_batches_bounded_in_bytes(
    make_settings: Callable[..., Settings],
    start_daemon: Callable[..., RunningDaemon],
    dovecot: Dovecot,
    tmp_path: Path,
) -> None:
    smtp = {"listen": ["127.0.0.1:0"], "max_message_size": "10MB"}
    inbox = imap_inbox(dovecot, tmp_path, initial_sync="all")
    for n in range(3):  # 3 MB each: two fit in a batch's 8 MiB, three do not
        body = ("y" * 76 + "\n") * 40_000
        dovecot.append("support", mail(f"Large {n}", body=body).as_bytes(policy=SMTP))
    running = start_daemon(make_settings(smtp=smtp, inboxes=[inbox]))
    wait_until(lambda: len(running.conversations()) == 3, what="all three routed")
    # Each batch is stored in one commit, stamped with its time.
    commits = running.query("SELECT received_at, count(*) FROM messages GROUP BY 1 ORDER BY 1")
    assert [count for _, count in commits] == [2, 1]


def test_a_bye_in_the_middle_of_idle_is_a_lost_link_at_once(
    imap_settings: Callable[..., Settings],
    start_daemon: Callable[..., RunningDaemon],
    dovecot: Dovecot,
) -> None:
    """The server says BYE and closes while the poller idles: it logs in again and takes
    the next mail, without waiting out an answer to DONE that cannot come..."""
    running = start_daemon(imap_settings(mode="idle"))
    connected(running)
    with capture_logs() as logs:
        dovecot.kick("support")
        dovecot.append("support", raw("After the goodbye"))
        wait_until(lambda: running.conversations(), what="the message after the BYE routed")
    # ... nor for a goodbye to a link the server closed
    assert not [e for e in logs if e["event"] == "imap.logout_unanswered"]


def test_a_stop_says_goodbye_to_the_mailbox_it_idles_on(
    imap_settings: Callable[..., Settings],
    start_daemon: Callable[..., RunningDaemon],
    dovecot: Dovecot,
) -> None:
    running = start_daemon(imap_settings(mode="idle"))
    connected(running)
    with capture_logs() as logs:
        running.stop()
    assert not [e for e in logs if e["event"] == "imap.logout_unanswered"]
    sessions = (dovecot.folder / "dovecot.log").read_text().count("Login: user=<support>")
    wait_until(
        lambda: (dovecot.folder / "dovecot.log").read_text().count("Logged out") == sessions,
        what="Dovecot to see the LOGOUT",
    )


def test_a_stop_gives_up_the_goodbye_a_hung_server_does_not_answer(
    imap_settings: Callable[..., Settings],
    start_daemon: Callable[..., RunningDaemon],
    dovecot: Dovecot,
) -> None:
    running = start_daemon(imap_settings(mode="idle"))
    connected(running)
    with dovecot.frozen("support"), capture_logs() as logs:
        running.stop()
    # Given up after a second, not five: a stop is not held by a server that hangs.
    assert [e["event"] for e in logs if e["event"] == "imap.logout_unanswered"]


def test_a_backlog_of_thousands_is_all_taken(
    make_settings: Callable[..., Settings],
    start_daemon: Callable[..., RunningDaemon],
    dovecot: Dovecot,
    tmp_path: Path,
) -> None:
    """aioimaplib reads a response's lines by recursion: one listing of every new UID
    raised RecursionError past about a thousand, and such a mailbox was never read."""
    inbox = imap_inbox(dovecot, tmp_path, initial_sync="all")
    running = start_daemon(make_settings(inboxes=[inbox], notify={"enabled": False}))
    connected(running)
    count = dovecot.deliver("support", "INBOX", (raw(f"Backlog {n}") for n in range(10_000)))
    wait_until(
        lambda: running.query("SELECT count(*) FROM messages")[0][0] == count,
        timeout=120,
        what="every message of the backlog stored",
    )
