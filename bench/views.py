"""Queue views on a store of 1,000,000 conversations, against an empty store.

    .venv/bin/python -m bench.views [--conversations N] [--repeat R]

The big store is made once through `Database.open` (so the migrations apply),
filled with plain sqlite3 (20 agents, 4 teams, ~10% unassigned, ~30% closed,
one to six messages each with their events, tags on some), and kept under the
temp folder, named by the migrations' and the generator's digest, so the next
run reuses it. Two baselines: the "empty" store holds only the conversation
`show` opens; the small one, SMALL conversations made the same way (and that
one), enough to fill every page, so its difference from the big store is the
store's size alone and not the page's rows.

Each view (gateway.views, in-process, one connection per store opened
read-only as the command opens it) runs on every store in turn, REPEAT times,
after one warm-up call each; median and p99 per store. The command itself
(`python -m gateway conversations --unassigned`) is run end to end too, in a
subprocess, alternating stores. The command has no `--limit` yet, so it
prints the whole unassigned queue; the in-process rows use a page of PAGE.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import math
import os
import random
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any

import tomli_w

from bench.processes import ROOT
from gateway import views
from gateway.config import Settings
from gateway.store.db import Database

SCALE = 1_000_000
SMALL = 5_000
PAGE = 100
REPEAT = 100
GENERATOR = 1  # bump when the generated data changes, so a cached store is made again
CHUNK = 50_000  # conversations per transaction while filling

AGENTS = [f"agent{n:02}" for n in range(1, 21)]
TEAMS = {
    "billing": AGENTS[0:5],
    "sales": AGENTS[5:10],
    "tech": AGENTS[10:16],
    "vip": AGENTS[16:20],
}
INBOXES = ["support@example.com", "sales@example.com", "billing@example.com"]
TAGS = ["billing", "urgent", "vip", "refund", "bug", "shipping"]
SUBJECTS = [
    "Where is my order",
    "Refund for invoice",
    "Cannot log in",
    "Question about pricing",
    "Delivery damaged",
    "Change my address",
]
DOMAINS = ["example.org", "mail.test", "acme.com", "shop.test", "bigcorp.example"]
START = int(datetime(2024, 1, 1, tzinfo=UTC).timestamp())
SPAN = 2 * 365 * 86400  # conversations are spread over two years, in id order
RAW = (
    b"From: customer@example.org\r\nTo: support@example.com\r\nSubject: a question\r\n"
    b"Message-ID: <q@example.org>\r\nDate: Mon, 1 Jan 2024 00:00:00 +0000\r\n\r\n"
    + b"The order has not arrived yet and I would like to know why.\r\n"
    * 3
)
AGENT_X = "agent07"
COMMAND = [sys.executable, "-m", "gateway", "conversations", "--unassigned"]


# The columns a generated conversation fills (later migrations add some: named, not all).
INSERT_CONVERSATION = (
    "INSERT INTO conversations (id, inbox, customer, subject, thread_subject, assignee, team,"
    " status, created_at, last_message_at, message_count)"
)


def stamp(seconds: int) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="microseconds")


@dataclass
class Rows:
    conversations: list[tuple[Any, ...]]
    messages: list[tuple[Any, ...]]
    events: list[tuple[Any, ...]]
    tags: list[tuple[Any, ...]]


def conversation(k: int, count: int, rows: Rows) -> None:
    """Conversation `k` of a store of `count`, with its messages, events and tags.

    Its content depends on `k` alone, so the empty store's copy is the same.
    """
    r = random.Random(k)
    inbox = INBOXES[r.randrange(len(INBOXES))]
    customer = f"customer{r.randrange(250_000)}@{DOMAINS[r.randrange(len(DOMAINS))]}"
    subject = f"{SUBJECTS[r.randrange(len(SUBJECTS))]} (order {k})"
    created = START + (k * SPAN) // max(count, 1) + r.randrange(3600)
    n = r.choices((1, 2, 3, 4, 6), (55, 25, 12, 6, 2))[0]
    times = [created, *sorted(created + r.randrange(14 * 86400) for _ in range(n - 1))]
    team: str | None = None
    if r.random() < 0.25:
        team = r.choice(list(TEAMS))
        assignee = None if r.random() < 0.10 else r.choice(TEAMS[team])
        via = "team"
    else:
        assignee = None if r.random() < 0.10 else r.choice(AGENTS)
        via = "rule" if r.random() < 0.3 else "round_robin"
    closed = r.random() < 0.30
    tags = r.sample(TAGS, 1 + (r.random() < 0.3)) if r.random() < 0.2 else []
    rows.conversations.append(
        (
            k,
            inbox,
            customer,
            subject,
            subject.casefold(),
            assignee,
            team,
            "closed" if closed else "open",
            stamp(created),
            stamp(times[-1]),
            n,
        )
    )
    for i, at in enumerate(times):
        message_id = f"{k}.{i}@{customer.split('@')[1]}"
        rows.messages.append(
            (inbox, f"<{message_id}>", "smtp" if i % 4 else "imap", customer,
             json.dumps([inbox]), len(RAW), stamp(at), "routed", k, message_id, customer,
             subject if i == 0 else f"Re: {subject}")
        )  # fmt: skip
        detail = f'{{"message_id": "{message_id}", "from": "{customer}", "source": "smtp"}}'
        rows.events.append((k, stamp(at), "received", "gateway", None, None, None, detail))
        if i > 0:
            continue
        if tags:
            detail = json.dumps({"tags": tags})
            rows.events.append((k, stamp(at), "tagged", "gateway", None, None, "Tags", detail))
            rows.tags.extend((k, tag) for tag in tags)
        if assignee is not None:
            detail = json.dumps({"via": via, "team": team})
            rows.events.append((k, stamp(at), "assigned", "gateway", assignee, None, None, detail))
    if closed:
        rows.events.append(
            (k, stamp(times[-1] + 3600), "closed", assignee or "admin", None, None, None, "{}")
        )


@contextlib.contextmanager
def bulk(path: Path, tables: Sequence[str]) -> Iterator[sqlite3.Connection]:
    """A connection to fill `tables` fast: no journal, no fsync, their indexes dropped,
    then made again in one pass each (faster than keeping them up a row at a time)."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = DELETE")
    conn.execute("PRAGMA synchronous = OFF")
    conn.execute("PRAGMA cache_size = -262144")
    marks = ",".join("?" * len(tables))
    indexes = conn.execute(
        f"SELECT name, sql FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL"
        f" AND tbl_name IN ({marks})",
        tuple(tables),
    ).fetchall()
    for name, _ in indexes:
        conn.execute(f"DROP INDEX {name}")
    yield conn
    for _, sql in indexes:
        conn.execute(sql)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.close()


def fill(path: Path, ids: range, count: int) -> None:
    """Conversations `ids` (of a store of `count`), written fast: indexes rebuilt at the end."""
    with bulk(path, ("conversations", "messages", "events", "tags")) as conn:
        _fill(conn, ids, count)


def _fill(conn: sqlite3.Connection, ids: range, count: int) -> None:
    for start in range(ids.start, ids.stop, CHUNK):
        rows = Rows([], [], [], [])
        for k in range(start, min(start + CHUNK, ids.stop)):
            conversation(k, count, rows)
        conn.execute("BEGIN")
        conn.executemany(f"{INSERT_CONVERSATION} VALUES ({','.join('?' * 11)})", rows.conversations)
        last = conn.execute("SELECT coalesce(max(id), 0) FROM messages").fetchone()[0]
        conn.executemany(
            "INSERT INTO messages (inbox, dedup_key, source, envelope_from, envelope_to, size,"
            " received_at, state, conversation_id, message_id, sender, subject)"
            f" VALUES ({','.join('?' * 12)})",
            rows.messages,
        )
        conn.execute(
            "INSERT INTO raw_mail (message, raw) SELECT id, ? FROM messages WHERE id > ?",
            (RAW, last),
        )
        conn.executemany(
            "INSERT INTO events (conversation_id, at, kind, actor, agent, previous_agent, rule,"
            " detail) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            rows.events,
        )
        conn.executemany("INSERT INTO tags (conversation_id, tag) VALUES (?, ?)", rows.tags)
        conn.execute("COMMIT")
        if len(ids) > CHUNK:
            print(f"  {min(start + CHUNK, ids.stop) - ids.start:,} conversations", flush=True)


def schema_key() -> str:
    digest = hashlib.sha256(f"generator {GENERATOR}".encode())
    folder = resources.files("gateway.store") / "migrations"
    for item in sorted(folder.iterdir(), key=lambda item: item.name):
        if item.name.endswith(".sql"):
            digest.update(item.name.encode() + item.read_bytes())
    return digest.hexdigest()[:12]


async def migrate(path: Path) -> None:
    db = await Database.open(str(path))
    await db.close()


def remove(path: Path) -> None:
    for suffix in ("", "-wal", "-shm", "-journal"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


def big_store(count: int) -> Path:
    """The store of `count` conversations, from the cache when it is there."""
    folder = Path(tempfile.gettempdir()) / "gateway-bench"
    folder.mkdir(exist_ok=True)
    path = folder / f"views-{count}-{schema_key()}.db"
    if path.exists():
        print(f"store of {count:,} conversations: {path} (cached)", flush=True)
        return path
    print(f"making a store of {count:,} conversations: {path}", flush=True)
    started = time.monotonic()
    partial = path.with_suffix(".partial")
    remove(partial)
    asyncio.run(migrate(partial))
    fill(partial, range(1, count + 1), count)
    partial.rename(path)
    print(f"  made in {time.monotonic() - started:.0f} s", flush=True)
    return path


def shown(count: int) -> int:
    """A conversation from the middle of the store with several messages, tags and an agent."""
    k = count // 2
    while True:
        rows = Rows([], [], [], [])
        conversation(k, count, rows)
        if len(rows.messages) >= 3 and rows.tags and rows.conversations[0][5] is not None:
            return k
        k += 1


def small_store(path: Path, show_id: int, count: int, size: int) -> Path:
    """`size` conversations made the same way, and the one `show` opens as in the big store."""
    asyncio.run(migrate(path))
    if size:
        fill(path, range(1, size + 1), size)
    fill(path, range(show_id, show_id + 1), count)
    return path


def settings(database: Path) -> dict[str, Any]:
    return {
        "gateway": {"database": str(database)},
        "agents": [{"id": a, "email": f"{a}@agents.test"} for a in AGENTS],
        "teams": [{"id": t, "agents": members} for t, members in TEAMS.items()],
        "inboxes": [{"address": address} for address in INBOXES],
    }


# --- timing -------------------------------------------------------------------

View = Callable[[Database], Awaitable[object]]


def the_views(show_id: int, agent_settings: Settings) -> dict[str, View]:
    def queue(**filters: Any) -> View:
        return lambda db: views.conversations(db, status="open", limit=PAGE, **filters)

    return {
        f"`conversations --unassigned` (first {PAGE})": queue(unassigned=True),
        f"`conversations --agent {AGENT_X}` (first {PAGE})": queue(assignee=AGENT_X),
        f"`conversations` (first {PAGE})": queue(),
        f"`conversations --team tech --status all` (first {PAGE})": lambda db: views.conversations(
            db, status=None, team="tech", limit=PAGE
        ),
        f"`show {show_id}`": lambda db: views.show(db, show_id),
        "`agents` (counts every open conversation)": lambda db: views.agents(db, agent_settings),
    }


def summary(seconds: list[float]) -> str:
    ordered = sorted(seconds)
    p99 = ordered[max(math.ceil(len(ordered) * 0.99) - 1, 0)]
    return f"{statistics.median(ordered) * 1000:.2f} / {p99 * 1000:.2f}"


async def time_views(
    stores: dict[str, Path], the: dict[str, View], repeat: int
) -> dict[tuple[str, str], list[float]]:
    opened = {name: await Database.open(str(path), readonly=True) for name, path in stores.items()}
    found: dict[tuple[str, str], list[float]] = {}
    try:
        for view in the.values():  # warm-up: the first read of a page comes from the disk
            for db in opened.values():
                await view(db)
        for _ in range(repeat):
            for label, view in the.items():
                for name, db in opened.items():
                    started = time.perf_counter()
                    await view(db)
                    found.setdefault((label, name), []).append(time.perf_counter() - started)
    finally:
        for db in opened.values():
            await db.close()
    return found


def time_command(
    configs: dict[str, Path], repeat: int, command: Sequence[str] = COMMAND
) -> dict[str, tuple[list[float], int]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    found: dict[str, tuple[list[float], int]] = {name: ([], 0) for name in configs}
    for _ in range(repeat):
        for name, config in configs.items():
            started = time.perf_counter()
            done = subprocess.run(
                [*command, "--config", str(config)],
                cwd=ROOT,
                env=env,
                capture_output=True,
                text=True,
                check=True,
            )
            spent = time.perf_counter() - started
            lines = done.stdout.count("\n") - 1  # the header
            found[name] = ([*found[name][0], spent], max(lines, 0))
    return found


def measure(conversations: int = SCALE, repeat: int = REPEAT, command_runs: int = 3) -> str:
    """Median / p99 of each view on an empty, a small and a big store, as a markdown table."""
    big = big_store(conversations)
    show_id = shown(conversations)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        stores = {
            "empty": small_store(folder / "empty.db", show_id, conversations, 0),
            "small": small_store(folder / "small.db", show_id, conversations, SMALL),
            "big": big,
        }
        configs = {}
        for name, path in stores.items():
            configs[name] = folder / f"{name}.toml"
            configs[name].write_text(tomli_w.dumps(settings(path)))
        agent_settings = Settings.model_validate(settings(big))
        the = the_views(show_id, agent_settings)
        timings = asyncio.run(time_views(stores, the, repeat))
        command = time_command(configs, command_runs)
    big_name = f"{conversations:,}"
    lines = [
        f"| view | empty store | {SMALL:,} conversations | {big_name} conversations "
        f"| {big_name} ÷ empty | {big_name} ÷ {SMALL:,} |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for label in the:
        each = [timings[(label, name)] for name in stores]
        lines.append(row(label, each, summary))
    runs = [command[name][0] for name in stores]
    rows = " / ".join(f"{command[name][1]:,}" for name in stores)
    lines.append(
        row(
            f"`python -m gateway conversations --unassigned`, whole process, default page of 100"
            f" ({rows} rows; median / max of {command_runs} runs)",
            runs,
            lambda s: f"{statistics.median(s) * 1000:.0f} / {max(s) * 1000:.0f}",
        )
    )
    lines.append("")
    lines.append("Times in ms, median / p99 unless said otherwise.")
    return "\n".join(lines)


def row(label: str, each: list[list[float]], show_as: Callable[[list[float]], str]) -> str:
    empty, small, big = (statistics.median(s) for s in each)
    cells = " | ".join(show_as(s) for s in each)
    return f"| {label} | {cells} | {big / empty:.1f} | {big / small:.1f} |"


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.views", description=__doc__)
    parser.add_argument("--conversations", type=int, default=SCALE, help="size of the big store")
    parser.add_argument("--repeat", type=int, default=REPEAT, help="calls of each view per store")
    parser.add_argument("--command-runs", type=int, default=3, help="runs of the command")
    args = parser.parse_args()
    table = measure(args.conversations, args.repeat, args.command_runs)
    print()
    print(table)


if __name__ == "__main__":
    main()
