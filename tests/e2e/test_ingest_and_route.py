"""`gateway ingest` from a pipe and `gateway route` dry runs, as subprocesses."""

from __future__ import annotations

import contextlib
import hashlib
import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from email.policy import SMTP
from pathlib import Path

import pytest

from gateway.config import Settings
from tests.conftest import RunningDaemon, mail
from tests.postgres import Postgres
from tests.store import StoreReader

pytestmark = pytest.mark.integration

RULES = [
    {"name": "ACME is Alice's", "sender_domain": ["acme.com"], "assign_to": "agent:alice"},
    {
        "name": "Money to billing",
        "subject_keywords": ["refund"],
        "assign_to": "team:billing",
        "tags": ["billing"],
    },
]


def run(config: Path, *args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args, "--config", str(config)],
        input=stdin,
        capture_output=True,
        timeout=60,
    )


def ingest(config: Path, subject: str) -> int:
    piped = mail(subject).as_bytes(policy=SMTP)
    return run(config, "ingest", "--to", "support@example.com", stdin=piped).returncode


@pytest.fixture
def config(make_settings: Callable[..., Settings], tmp_path: Path) -> Path:
    make_settings(rules=RULES)
    return tmp_path / "gateway.toml"


@pytest.fixture
def running(
    make_settings: Callable[..., Settings], start_daemon: Callable[..., RunningDaemon]
) -> RunningDaemon:
    return start_daemon(make_settings(rules=RULES))


def test_ingest_stores_and_routes_exactly_like_smtp(running: RunningDaemon, tmp_path: Path) -> None:
    config = tmp_path / "gateway.toml"
    running.send(mail("by smtp", sender="wile@acme.com"))
    piped = mail("by pipe", sender="road@acme.com").as_bytes(policy=SMTP)
    done = run(config, "ingest", "--to", "support@gw.test", "--from", "road@acme.com", stdin=piped)
    assert done.returncode == 0, done.stderr
    running.drain()
    rows = running.query(
        "SELECT source, inbox, envelope_from, raw FROM messages JOIN raw_mail ON message = id"
        " ORDER BY id"
    )
    assert [(r["source"], r["inbox"]) for r in rows] == [
        ("smtp", "support@example.com"),
        ("ingest", "support@example.com"),
    ]
    assert bytes(rows[1]["raw"]) == piped and rows[1]["envelope_from"] == "road@acme.com"
    by_smtp, by_pipe = running.conversations()
    assert by_smtp["assignee"] == by_pipe["assignee"] == "alice"
    assert [e["rule"] for e in running.events(2, "assigned")] == ["ACME is Alice's"]


def test_ingest_of_a_bounce_with_a_null_sender(running: RunningDaemon, tmp_path: Path) -> None:
    done = run(
        tmp_path / "gateway.toml",
        "ingest",
        "--to",
        "support@example.com",
        "--from",
        "<>",
        stdin=mail("Delivery failure").as_bytes(policy=SMTP),
    )
    assert done.returncode == 0
    running.drain()
    assert running.query("SELECT tag FROM tags")[0][0] == "auto"


GARBAGE = b"\x00\xff this is not mail: no From, no subject\r\n"


def test_ingest_of_garbage_without_a_sender_is_unassigned_tagged_and_takes_no_turn(
    running: RunningDaemon, tmp_path: Path
) -> None:
    done = run(tmp_path / "gateway.toml", "ingest", "--to", "support@example.com", stdin=GARBAGE)
    assert done.returncode == 0, done.stderr
    running.drain()
    [conversation] = running.conversations()
    assert (conversation["assignee"], conversation["customer"]) == (None, None)
    assert [row["tag"] for row in running.query("SELECT tag FROM tags")] == ["no-sender"]
    assert running.query("SELECT * FROM rotations") == []  # the pointer did not move
    assert running.query("SELECT * FROM outbox") == []  # and nobody was alerted


def test_route_says_why_mail_without_a_sender_is_left_unassigned(
    config: Path, tmp_path: Path
) -> None:
    sample = tmp_path / "garbage.eml"
    sample.write_bytes(GARBAGE)
    view = json.loads(run(config, "route", str(sample), "--json").stdout)
    assert (view["assignee"], view["tags"]) == (None, ["no-sender"])
    assert view["reason"] == "mail without a sender address goes to the unassigned queue"


def test_ingest_to_an_unknown_address_exits_67_addressee_unknown(config: Path) -> None:
    done = run(config, "ingest", "--to", "nobody@example.com", stdin=mail().as_bytes())
    assert done.returncode == 67  # sysexits' EX_NOUSER: the mail server bounces it, 5.1.1
    assert b"nobody@example.com: no inbox address or alias here." in done.stderr


@contextlib.contextmanager
def unwritable(config: Path, store: str, request: pytest.FixtureRequest) -> Iterator[None]:
    """The store refuses writes: the SQLite file immutable, or the PostgreSQL database read
    only (as a standby is, after a failover) for the sessions that begin meanwhile."""
    if not store:
        files = [str(p) for p in config.parent.glob("gateway.db*")]
        subprocess.run(["chattr", "+i", *files], check=True)
        try:
            yield
        finally:
            subprocess.run(["chattr", "-i", *files], check=True)
        return
    cluster: Postgres = request.getfixturevalue("postgres")
    name = store.rsplit("/", 1)[1]
    cluster.psql(f"ALTER DATABASE {name} SET default_transaction_read_only = on")
    try:
        yield
    finally:
        cluster.psql(f"ALTER DATABASE {name} RESET default_transaction_read_only")


def test_ingest_exits_75_when_the_store_is_unwritable_and_writes_nothing(
    config: Path, store_url: str, request: pytest.FixtureRequest
) -> None:
    assert ingest(config, "first") == 0
    with unwritable(config, store_url, request):
        done = run(
            config,
            "ingest",
            "--to",
            "support@example.com",
            stdin=mail("second").as_bytes(policy=SMTP),
        )
    assert done.returncode == 75
    assert b"not stored" in done.stderr and b"Traceback" not in done.stderr
    reader = StoreReader(store_url or str(config.parent / "gateway.db"))
    try:
        assert reader.query("SELECT count(*) FROM messages")[0][0] == 1
    finally:
        reader.close()


def store_fingerprint(folder: Path) -> str:
    """Everything the store holds, as SQL text (the -shm/-wal files of a reader may appear)."""
    import sqlite3

    with sqlite3.connect(folder / "gateway.db") as conn:
        return hashlib.sha256("\n".join(conn.iterdump()).encode()).hexdigest()


def test_route_explains_the_rule_and_stores_nothing(config: Path, tmp_path: Path) -> None:
    assert ingest(config, "warm up") == 0
    sample = tmp_path / "refund.eml"
    sample.write_bytes(mail("Please REFUND me", sender="x@example.net").as_bytes(policy=SMTP))
    before = store_fingerprint(tmp_path)
    done = run(config, "route", str(sample), "--json")
    assert done.returncode == 0, done.stderr
    view = json.loads(done.stdout)
    assert (view["rule"], view["team"], view["assignee"], view["via"]) == (
        "Money to billing",
        "billing",
        "alice",
        "team",
    )
    assert view["matched"] == [{"condition": "subject_keywords", "value": "refund"}]
    assert store_fingerprint(tmp_path) == before
    human = run(config, "route", str(sample)).stdout.decode()
    assert "rule 'Money to billing' gives it to team billing" in human
    assert "matched:  subject_keywords = refund" in human


def test_route_says_who_the_rotation_would_pick_or_why_nobody(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    make_settings()
    config = tmp_path / "gateway.toml"
    sample = tmp_path / "plain.eml"
    sample.write_bytes(mail("hello").as_bytes(policy=SMTP))
    view = json.loads(run(config, "route", str(sample), "--json").stdout)
    assert (view["via"], view["assignee"]) == ("round_robin", "alice")  # no store yet: from the top
    make_settings(round_robin={"enabled": False, "agents": []})
    view = json.loads(run(config, "route", str(sample), "--json").stdout)
    assert view["assignee"] is None
    assert view["reason"] == "no rule assigns it and round-robin is off"


def test_route_to_an_alias_matches_recipient_rules_by_the_envelope(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    rules = [{"name": "Alias", "recipient": ["support@gw.test"], "assign_to": "agent:carol"}]
    make_settings(rules=rules)
    sample = tmp_path / "forwarded.eml"
    sample.write_bytes(mail(to="Someone <someone@example.org>").as_bytes(policy=SMTP))
    done = run(tmp_path / "gateway.toml", "route", str(sample), "--to", "support@gw.test", "--json")
    view = json.loads(done.stdout)
    assert (view["inbox"], view["assignee"], view["rule"]) == (
        "support@example.com",
        "carol",
        "Alias",
    )


def test_ingest_with_a_bad_configuration_exits_75_so_the_mail_server_keeps_it(
    tmp_path: Path,
) -> None:
    done = run(
        tmp_path / "missing.toml",
        "ingest",
        "--to",
        "support@example.com",
        stdin=mail().as_bytes(policy=SMTP),
    )
    assert done.returncode == 75
    assert b"no such configuration file" in done.stderr


def test_route_of_a_duplicate_claims_no_rule_or_tags(config: Path, tmp_path: Path) -> None:
    message = mail("refund", sender="x@example.net").as_bytes(policy=SMTP)
    sample = tmp_path / "again.eml"
    sample.write_bytes(message)
    assert run(config, "ingest", "--to", "support@example.com", stdin=message).returncode == 0
    view = json.loads(run(config, "route", str(sample), "--json").stdout)
    assert view["duplicate"] is True
    assert (view["assignee"], view["rule"], view["matched"], view["tags"]) == (None, None, [], [])
    assert "matched:" not in run(config, "route", str(sample)).stdout.decode()


def test_route_of_a_bounce_given_its_null_sender(config: Path, tmp_path: Path) -> None:
    sample = tmp_path / "bounce.eml"
    sample.write_bytes(mail("Undeliverable").as_bytes(policy=SMTP))
    view = json.loads(run(config, "route", str(sample), "--from", "<>", "--json").stdout)
    assert (view["assignee"], view["tags"]) == (None, ["auto"])


def test_ingest_to_several_recipients_stores_once_per_inbox(
    running: RunningDaemon, tmp_path: Path
) -> None:
    config = tmp_path / "gateway.toml"
    piped = mail("For both").as_bytes(policy=SMTP)
    to = ["support@example.com", "sales@example.com", "support@gw.test"]
    done = run(config, "ingest", "--to", *to, stdin=piped)
    assert done.returncode == 0, done.stderr
    rows = running.query("SELECT inbox, envelope_to FROM messages ORDER BY inbox")
    assert [(r["inbox"], r["envelope_to"]) for r in rows] == [
        ("sales@example.com", '["sales@example.com"]'),
        ("support@example.com", '["support@example.com", "support@gw.test"]'),
    ]


def test_ingest_stores_for_the_known_recipients_and_names_the_unknown(
    running: RunningDaemon, tmp_path: Path
) -> None:
    config = tmp_path / "gateway.toml"
    piped = mail("Partly").as_bytes(policy=SMTP)
    done = run(config, "ingest", "--to", "nobody@example.com", "sales@example.com", stdin=piped)
    assert done.returncode == 0
    assert b"Not stored for nobody@example.com: no inbox by that address." in done.stderr
    assert [r["inbox"] for r in running.query("SELECT inbox FROM messages")] == [
        "sales@example.com"
    ]


def test_ingest_misuse_exits_64_as_a_mail_server_reads_it(config: Path) -> None:
    done = run(config, "ingest", stdin=mail().as_bytes())  # no --to
    assert done.returncode == 64


def test_recipients_prints_a_postfix_lookup_table(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    make_settings(replies={"address": "replies@gw.test"})
    done = run(tmp_path / "gateway.toml", "recipients", "--postfix")
    assert done.returncode == 0
    assert done.stdout.decode().splitlines() == [
        "support@example.com OK",
        "support@gw.test OK",
        "sales@example.com OK",
        "replies@gw.test OK",
    ]
