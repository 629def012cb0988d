"""The first commands, in-process and as the real `gateway` executable."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from gateway.cli import main as gateway
from gateway.config import Settings
from gateway.store import queries
from gateway.store.db import Database
from tests.conftest import (
    RunningDaemon,
    Sink,
    config_file,
    free_port,
    mail,
    smtp_notify,
    wait_until,
)

pytestmark = pytest.mark.integration

CONVERSATION_FIELDS = {
    "id",
    "subject",
    "customer",
    "inbox",
    "assignee",
    "team",
    "status",
    "tags",
    "created_at",
    "last_message_at",
    "message_count",
}
RULES = [
    {
        "name": "Money to billing",
        "subject_keywords": ["refund"],
        "assign_to": "team:billing",
        "tags": ["billing"],
    }
]


def run(running: RunningDaemon, *args: str) -> int:
    config = str(config_file(running.settings))
    return gateway([*args, "--config", config])


def routing_logged(capsys: pytest.CaptureFixture[str]) -> None:
    """Until the daemon has logged its routing to stdout (no command has sent its logs to
    stderr yet). It logs from its own thread after the commit `drain` sees: the line must
    be out before a test reads what a command printed (it came in between once, on a
    loaded machine)."""
    printed: list[str] = []

    def logged() -> bool:
        printed.append(capsys.readouterr().out)
        return "message.routed" in "".join(printed)

    wait_until(logged, what="the routing's log line")


@pytest.fixture
def populated(
    make_settings: Callable[..., Settings], start_daemon: Callable[..., RunningDaemon]
) -> RunningDaemon:
    running = start_daemon(make_settings(rules=RULES))
    running.send(mail("first question", sender="Ann <ann@example.org>"))
    running.drain()  # routed to alice before everyone goes away
    for agent in ("alice", "bob", "carol"):
        assert run(running, "status", agent, "away") == 0
    running.send(mail("nobody there", sender="ben@example.org"))
    running.send(mail("refund me", sender="cy@example.org"))
    running.drain()  # its commands sent the daemon's logs to stderr: stdout is theirs
    return running


def output_json(capsys: pytest.CaptureFixture[str]) -> object:
    return json.loads(capsys.readouterr().out)


def test_conversations_json_has_the_contract_fields_oldest_waiting_first(
    populated: RunningDaemon, capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    assert run(populated, "conversations", "--json") == 0
    found = output_json(capsys)
    assert isinstance(found, list)
    assert [c["subject"] for c in found] == ["first question", "nobody there", "refund me"]
    assert all(set(c) >= CONVERSATION_FIELDS for c in found)
    first = found[0]
    assert (first["id"], first["customer"], first["inbox"], first["assignee"], first["status"]) == (
        1,
        "ann@example.org",
        "support@example.com",
        "alice",
        "open",
    )
    assert first["message_count"] == 1 and first["created_at"].endswith("+00:00")
    assert found[2]["tags"] == ["billing"] and found[2]["team"] == "billing"


def test_conversations_filters_by_queue(
    populated: RunningDaemon, capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    run(populated, "conversations", "--unassigned", "--json")
    assert [c["id"] for c in output_json(capsys)] == [2, 3]  # type: ignore[union-attr]
    run(populated, "conversations", "--agent", "alice", "--json")
    assert [c["id"] for c in output_json(capsys)] == [1]  # type: ignore[union-attr]
    run(populated, "conversations", "--team", "billing", "--json")
    assert [c["id"] for c in output_json(capsys)] == [3]  # type: ignore[union-attr]
    run(populated, "conversations", "--status", "closed", "--json")
    assert output_json(capsys) == []


def test_conversations_table_for_people(
    populated: RunningDaemon, capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    assert run(populated, "conversations", "--unassigned") == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == [
        "ID",
        "WAITING",
        "CUSTOMER",
        "SUBJECT",
        "ASSIGNEE",
        "TEAM",
        "STATUS",
        "TAGS",
    ]
    assert "nobody there" in lines[1] and "<1 min" in lines[1]
    assert len(lines) == 3


QUEUE = 105  # more than the default page of 100


@pytest.fixture
def long_queue(make_settings: Callable[..., Settings]) -> Path:
    """QUEUE open conversations, made through the store; the last made has waited longest."""
    settings = make_settings()

    async def fill() -> None:
        db = await Database.open(settings.gateway.database, create=True)
        try:
            async with db.transaction() as conn:
                for n in range(QUEUE):
                    at = f"2025-01-01T{(QUEUE - n) // 60:02}:{(QUEUE - n) % 60:02}:00+00:00"
                    await queries.create_conversation(
                        conn,
                        inbox="support@example.com",
                        customer=f"c{n}@example.org",
                        subject=f"question {n}",
                        thread_subject=f"question {n}",
                        team=None,
                        at=at,
                    )
        finally:
            await db.close()

    asyncio.run(fill())
    return config_file(settings)


MORE_WAITING = "More conversations are waiting; showing the first {} (oldest first)."


def test_conversations_shows_the_first_100_and_says_more_wait(
    long_queue: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert gateway(["conversations", "--config", str(long_queue)]) == 0
    out, err = capsys.readouterr()
    header, *rows = out.splitlines()
    assert header.split()[0] == "ID" and len(rows) == 100
    assert rows[0].split()[0] == str(QUEUE)  # the last made has waited longest
    assert err.strip() == MORE_WAITING.format(100) + " Use --limit 0 for all."


def test_conversations_limit_0_shows_all(
    long_queue: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert gateway(["conversations", "--limit", "0", "--config", str(long_queue)]) == 0
    out, err = capsys.readouterr()
    assert len(out.splitlines()) == 1 + QUEUE and err == ""


def test_conversations_limit_with_json_is_that_many_oldest_first(
    long_queue: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert gateway(["conversations", "--limit", "5", "--json", "--config", str(long_queue)]) == 0
    out, err = capsys.readouterr()
    found = json.loads(out)
    assert [c["id"] for c in found] == [105, 104, 103, 102, 101]
    assert [c["last_message_at"] for c in found] == sorted(c["last_message_at"] for c in found)
    assert err.strip().startswith(MORE_WAITING.format(5))


def test_conversations_says_nothing_more_when_the_limit_holds_the_queue(
    long_queue: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert gateway(["conversations", "--limit", str(QUEUE), "--config", str(long_queue)]) == 0
    out, err = capsys.readouterr()
    assert len(out.splitlines()) == 1 + QUEUE and err == ""


@pytest.mark.parametrize("given", ["-1", "many"])
def test_conversations_refuses_a_bad_limit_with_a_sentence(
    make_settings: Callable[..., Settings],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    given: str,
) -> None:
    make_settings()
    with pytest.raises(SystemExit) as exited:
        gateway(["conversations", "--limit", given, "--config", str(tmp_path / "gateway.toml")])
    assert exited.value.code == 2
    reason = "-1 is below 0: give how many to show, or 0 for all"
    if given == "many":
        reason = "'many' is not a number"
    assert capsys.readouterr().err.splitlines()[-1].endswith(f"argument --limit: {reason}")


def test_show_json_has_messages_and_the_timeline(
    populated: RunningDaemon, capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    assert run(populated, "show", "3", "--json") == 0
    view = output_json(capsys)
    assert isinstance(view, dict)
    assert set(view) >= CONVERSATION_FIELDS | {"messages", "events"}
    [message] = view["messages"]
    assert set(message) == {
        "message_id",
        "from",
        "subject",
        "received_at",
        "source",
        "text",
        "attachments",
    }
    assert (message["from"], message["source"]) == ("cy@example.org", "smtp")
    kinds = [e["kind"] for e in view["events"]]
    assert kinds == ["received", "tagged"]
    assert set(view["events"][0]) == {
        "at",
        "kind",
        "actor",
        "agent",
        "previous_agent",
        "rule",
        "detail",
    }


def test_show_prints_the_timeline_as_sentences(
    populated: RunningDaemon, capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    assert run(populated, "show", "1") == 0
    out = capsys.readouterr().out
    assert "#1  first question  (open)" in out
    assert "assigned to alice by round-robin" in out


def test_control_characters_are_shown_escaped(
    daemon: RunningDaemon, capsys: pytest.CaptureFixture[str]
) -> None:
    daemon.send(
        b"From: a@example.org\r\nTo: support@example.com\r\nMessage-ID: <c@x>\r\n"
        b"Subject: =?utf-8?q?bell=07_and_escape=1B[31m?=\r\n\r\nx\r\n"
    )
    daemon.drain()
    capsys.readouterr()
    run(daemon, "conversations")
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out
    assert "bell\\x07 and escape\\x1b[31m" in out


def test_unknown_conversation_is_refused_with_a_sentence(
    daemon: RunningDaemon, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(daemon, "show", "42") == 1
    assert capsys.readouterr().err.strip() == "There is no conversation 42."


def test_unknown_agent_status_is_refused(
    daemon: RunningDaemon, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(daemon, "status", "zed", "away") == 1
    assert "no agent 'zed'" in capsys.readouterr().err


@pytest.fixture
def waiting(
    make_settings: Callable[..., Settings],
    start_daemon: Callable[..., RunningDaemon],
    capsys: pytest.CaptureFixture[str],
) -> RunningDaemon:
    """One conversation in the unassigned queue."""
    running = start_daemon(make_settings(round_robin={"enabled": False, "agents": []}))
    running.send(mail("anyone there?"))
    running.drain()
    routing_logged(capsys)
    return running


def test_assign_takes_an_agent_id_in_any_case(waiting: RunningDaemon) -> None:
    assert run(waiting, "assign", "1", "Bob", "--by", "carol") == 0
    assert waiting.conversations()[0]["assignee"] == "bob"


def test_claim_takes_an_agent_address_in_any_case(waiting: RunningDaemon) -> None:
    assert run(waiting, "claim", "1", "Bob@Agents.TEST") == 0
    assert waiting.conversations()[0]["assignee"] == "bob"


def test_status_takes_an_agent_id_in_any_case(
    waiting: RunningDaemon, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(waiting, "status", "BOB", "away") == 0
    assert capsys.readouterr().out.strip() == "bob is now away."
    assert waiting.query("SELECT status FROM agent_status WHERE agent = 'bob'")[0][0] == "away"


def test_conversations_agent_takes_an_address_in_any_case(
    waiting: RunningDaemon, capsys: pytest.CaptureFixture[str]
) -> None:
    run(waiting, "assign", "1", "bob")
    capsys.readouterr()
    assert run(waiting, "conversations", "--agent", "BOB@agents.test", "--json") == 0
    assert [c["id"] for c in output_json(capsys)] == [1]  # type: ignore[union-attr]


def test_by_naming_an_agent_in_any_case_records_its_id(waiting: RunningDaemon) -> None:
    run(waiting, "assign", "1", "bob", "--by", "Carol@AGENTS.test")
    run(waiting, "claim", "1", "bob", "--by", "CAROL")  # a no-op: bob has it
    run(waiting, "unassign", "1", "--by", "Carol")
    run(waiting, "claim", "1", "carol", "--by", "CAROL")
    acts = [
        (e["kind"], e["actor"])
        for e in waiting.events(1)
        if e["kind"] in {"assigned", "unassigned", "claimed"}
    ]
    assert acts == [("assigned", "carol"), ("unassigned", "carol"), ("claimed", "carol")]


def test_by_naming_the_new_assignee_in_another_case_alerts_nobody(
    waiting: RunningDaemon,
) -> None:
    run(waiting, "assign", "1", "bob", "--by", "BOB@Agents.Test")
    assert waiting.query("SELECT count(*) FROM outbox WHERE kind = 'alert'")[0][0] == 0


NO_ZED = "There is no agent 'zed'; the agents are alice, bob, carol."


@pytest.mark.parametrize(
    "args",
    [
        ("assign", "1", "zed"),
        ("claim", "1", "zed"),
        ("status", "zed", "away"),
        ("conversations", "--agent", "zed"),
    ],
)
def test_an_unknown_agent_is_refused_naming_the_agents(
    waiting: RunningDaemon, capsys: pytest.CaptureFixture[str], args: tuple[str, ...]
) -> None:
    capsys.readouterr()
    assert run(waiting, *args) == 1
    out, err = capsys.readouterr()
    assert (out, err.strip()) == ("", NO_ZED)


def test_an_unknown_team_is_refused_naming_the_teams(
    waiting: RunningDaemon, capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    assert run(waiting, "conversations", "--team", "sales") == 1
    out, err = capsys.readouterr()
    assert (out, err.strip()) == ("", "There is no team 'sales'; the only team is billing.")


def test_conversations_team_takes_a_team_id_in_any_case(
    populated: RunningDaemon, capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    assert run(populated, "conversations", "--team", "Billing", "--json") == 0
    assert [c["id"] for c in output_json(capsys)] == [3]  # type: ignore[union-attr]


def test_retry_of_a_message_that_does_not_exist_says_so(
    waiting: RunningDaemon, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(waiting, "retry", "99") == 1
    assert capsys.readouterr().err.strip() == "There is no message 99."


def test_retry_of_a_message_not_shunted_says_what_became_of_it(
    waiting: RunningDaemon, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(waiting, "retry", "1") == 1
    assert capsys.readouterr().err.strip() == (
        "Message 1 is not shunted: it is routed (see `gateway shunted`)."
    )


ACME_TO_CAROL = [{"name": "Acme", "sender_domain": ["acme.com"], "assign_to": "agent:carol"}]
NO_FROM = b"To: support@example.com\r\nSubject: parcel\r\nMessage-ID: <nf@x>\r\n\r\nwhere?\r\n"


@pytest.fixture
def acme(make_settings: Callable[..., Settings], tmp_path: Path) -> Callable[..., int]:
    """`gateway route` of a message without From, under a rule on the sender's domain."""
    make_settings(rules=ACME_TO_CAROL)
    sample = tmp_path / "no-from.eml"
    sample.write_bytes(NO_FROM)

    def route(*args: str) -> int:
        return gateway(["route", str(sample), *args, "--config", str(tmp_path / "gateway.toml")])

    return route


def test_route_from_is_the_sender_a_rule_matches_when_from_is_missing(
    acme: Callable[..., int], capsys: pytest.CaptureFixture[str]
) -> None:
    assert acme("--json") == 0
    assert output_json(capsys)["rule"] is None  # type: ignore[index]
    assert acme("--from", "orders@Mail.ACME.com", "--json") == 0
    view = output_json(capsys)
    assert isinstance(view, dict)
    assert (view["rule"], view["assignee"]) == ("Acme", "carol")
    assert view["matched"] == [{"condition": "sender_domain", "value": "acme.com"}]


def test_route_says_the_envelope_sender_stood_in_for_a_missing_from(
    acme: Callable[..., int], capsys: pytest.CaptureFixture[str]
) -> None:
    acme("--from", "orders@acme.com")
    assert "from:     orders@acme.com (the envelope sender, --from: no usable From)\n" in (
        capsys.readouterr().out
    )
    acme("--from", "orders@acme.com", "--json")
    assert output_json(capsys)["sender_source"] == "envelope"  # type: ignore[index]


def test_route_says_the_from_header_gave_the_sender_and_shows_the_envelope_beside_it(
    make_settings: Callable[..., Settings], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    make_settings()
    sample = tmp_path / "bounce.eml"
    sample.write_bytes(mail("Undeliverable", sender="mailer@example.net").as_bytes())
    config = str(tmp_path / "gateway.toml")
    assert gateway(["route", sample.as_posix(), "--from", "<>", "--config", config]) == 0
    out = capsys.readouterr().out
    assert "from:     mailer@example.net (the From header)\n" in out
    assert "envelope: <> (the null sender of a bounce: automatic mail)\n" in out


def test_route_without_a_sender_says_it_has_none(
    acme: Callable[..., int], capsys: pytest.CaptureFixture[str]
) -> None:
    acme()
    assert "from:     - (no usable From, and no --from)\n" in capsys.readouterr().out


def test_under_sudo_the_actor_is_the_person_who_ran_sudo(
    waiting: RunningDaemon, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SUDO_USER", "dana")
    assert run(waiting, "assign", "1", "bob") == 0
    [assigned] = waiting.events(1, "assigned")
    assert assigned["actor"] == "dana"


def test_misuse_exits_2(daemon: RunningDaemon) -> None:
    with pytest.raises(SystemExit) as exited:
        run(daemon, "status", "alice", "sleeping")
    assert exited.value.code == 2


def test_missing_database_is_one_line_and_exit_1(
    make_settings: Callable[..., Settings], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    make_settings()
    assert gateway(["conversations", "--config", str(tmp_path / "gateway.toml")]) == 1
    err = capsys.readouterr().err.strip()
    assert "no database" in err and len(err.splitlines()) == 1


def test_config_option_goes_before_or_after_the_command(
    daemon: RunningDaemon, capsys: pytest.CaptureFixture[str]
) -> None:
    config = str(config_file(daemon.settings))
    assert gateway(["--config", config, "conversations"]) == 0
    assert gateway(["conversations", "--config", config]) == 0


def test_check_prints_a_summary(daemon: RunningDaemon, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(daemon, "check") == 0
    out = capsys.readouterr().out
    assert "configuration is valid" in out and "support@example.com" in out


# --- the real executable --------------------------------------------------------


def gateway_process(config: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "gateway", *args, "--config", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def test_run_routes_mail_and_exits_0_on_sigterm(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    port = free_port()
    settings = make_settings(smtp={"listen": [f"127.0.0.1:{port}"]})
    process = gateway_process(tmp_path / "gateway.toml", "run")
    try:
        import smtplib

        def sent() -> bool:
            try:
                with smtplib.SMTP("127.0.0.1", port, timeout=5) as client:
                    client.sendmail(
                        "c@example.org", ["support@example.com"], mail("over the wire").as_bytes()
                    )
                return True
            except OSError:
                return False

        wait_until(sent, what="the daemon to listen")
        alerts = Path(settings.notify.file_dir)
        wait_until(lambda: alerts.is_dir() and list(alerts.glob("*.eml")), what="the alert file")
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0
    lines = [json.loads(line) for line in err.splitlines()]  # JSON when not on a terminal
    events = [line["event"] for line in lines]
    assert "message.routed" in events and events[-1] == "gateway.stopped"


def test_run_with_a_bad_configuration_names_the_key_and_exits_1(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text('[smtp]\nmax_message_size = "lots"\n')
    process = gateway_process(config, "run")
    _, err = process.communicate(timeout=30)
    assert process.returncode == 1
    assert "smtp.max_message_size = 'lots'" in err


def test_run_on_a_port_in_use_says_so_and_exits_1(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        make_settings(smtp={"listen": [f"127.0.0.1:{port}"]})
        process = gateway_process(tmp_path / "gateway.toml", "run")
        _, err = process.communicate(timeout=30)
    assert process.returncode == 1
    assert f"cannot listen for SMTP on 127.0.0.1:{port}" in err
    assert "Traceback" not in err


def test_an_id_too_large_for_the_store_is_misuse(daemon: RunningDaemon) -> None:
    with pytest.raises(SystemExit) as exited:
        run(daemon, "show", "99999999999999999999")
    assert exited.value.code == 2


@pytest.mark.sqlite_only("an empty file; an empty PostgreSQL database is 'no database here'")
def test_a_database_not_prepared_yet_is_a_sentence(
    make_settings: Callable[..., Settings], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    make_settings()
    (tmp_path / "gateway.db").write_bytes(b"")
    assert gateway(["conversations", "--config", str(tmp_path / "gateway.toml")]) == 1
    err = capsys.readouterr().err.strip()
    assert "not ready" in err and "gateway run" in err and len(err.splitlines()) == 1


def test_bidi_and_format_characters_are_escaped_in_tables(
    daemon: RunningDaemon, capsys: pytest.CaptureFixture[str]
) -> None:
    daemon.send(mail("Invoice \u202egnp.exe\u202c ok"))
    daemon.drain()
    capsys.readouterr()
    run(daemon, "conversations")
    out = capsys.readouterr().out
    assert "\u202e" not in out and "Invoice \\u202egnp.exe\\u202c ok" in out


def test_wide_characters_keep_the_columns_aligned(
    daemon: RunningDaemon, capsys: pytest.CaptureFixture[str]
) -> None:
    daemon.send(mail("注文が届きません", sender="a@example.org"))
    daemon.send(mail("plain subject", sender="b@example.org"))
    daemon.drain()
    capsys.readouterr()
    run(daemon, "conversations")
    header, wide, plain = capsys.readouterr().out.splitlines()
    from gateway.cli import width

    column = width(header[: header.index("ASSIGNEE")])
    assert width(wide[: wide.index("alice")]) == column
    assert width(plain[: plain.index("bob")]) == column


def test_route_says_mail_to_the_replies_address_is_never_routed(
    make_settings: Callable[..., Settings], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    make_settings(rules=ACME_TO_CAROL, replies={"address": "replies@gw.test"})
    sample = tmp_path / "reply.eml"
    sample.write_bytes(mail("Re: x", sender="wile@acme.com").as_bytes())
    config = str(tmp_path / "gateway.toml")
    to = "replies+1-abc@gw.test"
    assert gateway(["route", sample.as_posix(), "--to", to, "--json", "--config", config]) == 0
    view = output_json(capsys)
    assert isinstance(view, dict)
    assert (view["rule"], view["assignee"]) == (None, None)
    assert "replies address" in view["reason"]


def test_check_connect_tries_the_smarthost(
    make_settings: Callable[..., Settings],
    sink: Sink,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    config = str(tmp_path / "gateway.toml")
    make_settings(notify=smtp_notify(sink.port))
    assert gateway(["check", "--connect", "--config", config]) == 0
    assert f"smarthost 127.0.0.1:{sink.port} works (plain text)" in capsys.readouterr().out
    closed = free_port()
    make_settings(notify=smtp_notify(closed))
    assert gateway(["check", "--connect", "--config", config]) == 1
    out = capsys.readouterr().out
    assert f"smarthost 127.0.0.1:{closed} fails: the server refused the connection" in out


def test_check_warns_of_settings_that_cannot_work(
    make_settings: Callable[..., Settings], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    make_settings(
        notify={"enabled": False, "backend": "smtp", "smtp_host": " "},
        replies={"address": "replies@gw.test"},
    )
    assert gateway(["check", "--config", str(tmp_path / "gateway.toml")]) == 0
    out = capsys.readouterr().out
    assert "warning: notify.backend is smtp but notify.smtp_host is empty" in out
    assert "warning: replies.address is set but notify.enabled is false" in out


def test_check_warns_of_a_web_inbox_open_to_other_hosts_without_https(
    make_settings: Callable[..., Settings], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = str(tmp_path / "gateway.toml")
    make_settings(web={"listen": "0.0.0.0:8025"})
    assert gateway(["check", "--config", config]) == 0
    assert "warning: web.listen is reachable from other hosts" in capsys.readouterr().out
    make_settings(web={"listen": "0.0.0.0:8025", "base_url": "https://desk.example.com"})
    assert gateway(["check", "--config", config]) == 0
    assert "warning" not in capsys.readouterr().out
    make_settings(web={"listen": "127.0.0.1:8025"})
    assert gateway(["check", "--config", config]) == 0
    assert "warning" not in capsys.readouterr().out


def test_show_lists_each_attachment_with_its_name_and_size_past_the_text_it_reads(
    make_settings: Callable[..., Settings],
    start_daemon: Callable[..., RunningDaemon],
    capsys: pytest.CaptureFixture[str],
) -> None:
    running = start_daemon(
        make_settings(smtp={"listen": ["127.0.0.1:0"], "max_message_size": "2MB"})
    )
    message = mail()
    message.add_attachment(
        b"x" * 300_000, maintype="application", subtype="pdf", filename="big.pdf"
    )
    message.add_attachment(b"tiny", maintype="text", subtype="plain", filename="note.txt")
    running.send(message)
    running.drain()
    capsys.readouterr()
    assert run(running, "show", "1", "--json") == 0
    view = output_json(capsys)
    assert isinstance(view, dict)
    assert view["messages"][0]["attachments"] == [
        {"filename": "big.pdf", "size": 300_000},
        {"filename": "note.txt", "size": 4},
    ]


def test_check_says_which_daemons_run_on_the_store(
    daemon: RunningDaemon, capsys: pytest.CaptureFixture[str], store_url: str
) -> None:
    capsys.readouterr()  # the daemon's start, not check's
    assert run(daemon, "check") == 0
    lines = capsys.readouterr().out.splitlines()
    at = lines.index("  daemons:     1 running")
    if store_url:  # PostgreSQL names each process as its sessions say
        assert lines[at + 1].startswith("    gateway ") and "(since " in lines[at + 1]
    else:  # a lock file says that one holds it, not who
        assert at == len(lines) - 1


def test_check_says_no_daemon_runs_after_it_stopped(
    daemon: RunningDaemon, capsys: pytest.CaptureFixture[str]
) -> None:
    daemon.stop()
    capsys.readouterr()
    assert run(daemon, "check") == 0
    assert "  daemons:     none running" in capsys.readouterr().out.splitlines()
