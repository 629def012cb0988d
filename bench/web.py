"""The web inbox's speed (issue 13), each figure beside a baseline from the same run.

    .venv/bin/python -m bench.web [--conversations N] [--requests R] [--seconds S] [--rounds K]
                                  [--pages-only | --live-only]

Pages: two daemons (`gateway run`, each its own process) serve the web inbox at
once, one on a store of 1,000,000 conversations, one on 1,000. The stores are
written straight into a file `Database.open` made (the real schema), a row for
each conversation: most closed, 20,000 open (the newest) of which 3,000
unassigned, spread over 20 agents and four teams. The conversation opened is
made as a desk makes it: four mails over SMTP to the daemon itself (one with an
attachment, one HTML only), then assigned through the page's form. One aiohttp
client in this process, signed in as an agent, asks for each page in turn, one
request at a time, alternating the stores: a request's time is the server's
plus the client's own, whose CPU per request and a static file's round trip
(no session, no store) are in the table. Beside them, `gateway conversations
--unassigned --limit 50` on each store.

Live: the SMTP accept rate (bench.pipeline's client, 32 connections, a process
of its own) of a fresh daemon with no browser, with 50 signed-in streams of
/live that a process of their own reads, and with 50 that also fetch their
page again on each `changed`, as live.js does; rounds alternate. While the
streams are open a manager's status changes every CHANGE_EVERY seconds; the
time from just before its POST to its `changed` on each stream is the delay
(also measured on an idle daemon).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing
import random
import re
import smtplib
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Event
from pathlib import Path
from typing import Any

import aiohttp

from bench import pipeline
from bench.processes import ROOT, free_port, gateway_config, wait_port
from bench.profile import cpu_seconds
from bench.views import (
    AGENTS,
    DOMAINS,
    INBOXES,
    INSERT_CONVERSATION,
    SUBJECTS,
    TAGS,
    TEAMS,
    bulk,
    migrate,
    time_command,
)

BIG, SMALL = 1_000_000, 1_000
SPAN = 2 * 365 * 86400  # conversations spread over the two years before now, in id order
REQUESTS = 200  # of each page, on each store
AGENT = "agent07"  # who signs in to the pages
PASSWORD = "bench-password-1"
COMMAND = [sys.executable, "-m", "gateway", "conversations", "--unassigned", "--limit", "50"]

STREAMS = 50
LIVE_GAP = 1.0  # seconds from one fetch of a page to the next at the least, as live.js
CONNECTIONS = 32  # SMTP connections of the accept runs, as the long burst of bench.__main__
CHANGE_EVERY = 0.75  # seconds between the manager's status changes while streams are open
LIVE_AGENTS = ("a", "b", "c", "lead")  # the streams' sessions take these in turn
LIVE_PAGES = ("/conversations", "/conversations?view=unassigned", "/agents")
MODES = ("none", "streams", "streams+pages")
_VERSION = re.compile(r'data-version="([^"]*)"')
_CSRF = re.compile(r'name="csrf" value="([^"]+)"')


# --- stores -------------------------------------------------------------------


def working(count: int) -> tuple[int, int]:
    """The open and the unassigned conversations of a store of `count`: 20,000 and 3,000
    of a million; a small store still fills a page of each queue."""
    return max(count // 50, 200), max(count * 3 // 1000, 60)


def fill(path: Path, count: int) -> None:
    """`count` conversations, their rows only; the open ones are among the newest."""
    opened, unassigned = working(count)
    r = random.Random(count)
    first = int(time.time()) - SPAN
    recent = range(max(count - 3 * opened, 0) + 1, count + 1)
    is_open = set(r.sample(recent, opened))
    waiting = set(r.sample(sorted(is_open), unassigned))
    teams = list(TEAMS)
    rows: list[tuple[Any, ...]] = []
    tags: list[tuple[int, str]] = []
    with bulk(path, ("conversations", "tags")) as conn:
        for k in range(1, count + 1):
            created = first + k * SPAN // count
            last = created + r.randrange(3 * 86400) if k not in is_open else created
            team = teams[r.randrange(4)] if r.random() < 0.25 else None
            members = TEAMS[team] if team else AGENTS
            nobody = k in waiting or (k not in is_open and r.random() < 0.05)
            subject = f"{SUBJECTS[r.randrange(len(SUBJECTS))]} (order {k})"
            customer = f"customer{r.randrange(250_000)}@{r.choice(DOMAINS)}"
            assignee = None if nobody else r.choice(members)
            status = "open" if k in is_open else "closed"
            at = (_stamp(created), _stamp(min(last, first + SPAN)))
            row = (k, r.choice(INBOXES), customer, subject, subject.casefold(), assignee, team)
            rows.append((*row, status, *at, 1 + (r.random() < 0.4)))
            if k in is_open and r.random() < 0.2:
                tags.extend((k, tag) for tag in r.sample(TAGS, 1 + (r.random() < 0.3)))
            if len(rows) == 50_000 or k == count:
                conn.execute("BEGIN")
                conn.executemany(f"{INSERT_CONVERSATION} VALUES ({','.join('?' * 11)})", rows)
                conn.execute("COMMIT")
                rows.clear()
        conn.executemany("INSERT INTO tags (conversation_id, tag) VALUES (?, ?)", tags)
        conn.executemany(
            "INSERT INTO agent_status (agent, status, changed_at) VALUES (?, ?, ?)",
            [("agent03", "away", _stamp(first + SPAN)), ("agent11", "dnd", _stamp(first + SPAN))],
        )


def _stamp(seconds: int) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="microseconds")


def make_store(path: Path, count: int) -> Path:
    started = time.monotonic()
    asyncio.run(migrate(path))
    fill(path, count)
    print(
        f"store of {count:,} conversations made in {time.monotonic() - started:.1f} s", flush=True
    )
    return path


# --- a daemon with its web inbox ----------------------------------------------


@dataclass
class Desk:
    process: subprocess.Popen[bytes]
    config: Path
    database: Path
    smtp_port: int
    url: str

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(30)


def start_desk(folder: Path, database: Path, passwords: dict[str, str], **sections: Any) -> Desk:
    """`gateway run` on `database` with the web inbox on a free port, after
    `gateway set-password` for each of `passwords`' agents."""
    folder.mkdir(exist_ok=True)
    smtp_port, web_port = free_port(), free_port()
    config = gateway_config(
        folder,
        smtp_port,
        gateway={"database": str(database), "hostname": "bench.test"},
        web={"listen": f"127.0.0.1:{web_port}"},
        **sections,
    )
    for agent, password in passwords.items():
        subprocess.run(
            [sys.executable, "-m", "gateway", "set-password", agent, "--config", str(config)],
            input=password + "\n",
            text=True,
            cwd=ROOT,
            check=True,
            capture_output=True,
        )
    process = subprocess.Popen(
        [sys.executable, "-m", "gateway", "run", "--config", str(config)],
        cwd=ROOT,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_port(web_port, process)
    except SystemExit:
        process.kill()
        raise
    return Desk(process, config, database, smtp_port, f"http://127.0.0.1:{web_port}")


class Browser:
    """One person's browser as far as HTTP goes: a session cookie, forms with its token."""

    def __init__(self, url: str) -> None:
        self.url = url
        # unsafe: keep cookies of an IP address host
        self.http = aiohttp.ClientSession(url, cookie_jar=aiohttp.CookieJar(unsafe=True))

    async def close(self) -> None:
        await self.http.close()

    async def get(self, path: str) -> str:
        async with self.http.get(path, allow_redirects=False) as response:
            if response.status != 200:
                raise SystemExit(f"GET {path}: {response.status}")
            return await response.text()

    async def post(self, path: str, form: dict[str, str]) -> None:
        headers = {"Origin": self.url}
        async with self.http.post(path, data=form, headers=headers, allow_redirects=False) as r:
            await r.read()
            if r.status != 303:
                raise SystemExit(f"POST {path}: {r.status}")

    async def sign_in(self, agent: str, password: str) -> None:
        await self.post("/login", {"agent": agent, "password": password})

    async def token(self, page: str) -> str:
        """The session's CSRF token, as `page`'s forms carry it."""
        found = _CSRF.search(await self.get(page))
        assert found is not None, f"no form on {page}"
        return found.group(1)


# --- the pages ------------------------------------------------------------------


def mails() -> list[EmailMessage]:
    """A customer's thread: a question, a photo, an HTML-only nudge, a thank-you."""
    customer = "Maria Lopez <maria.lopez@example.org>"
    first = (
        "Hello,\n\nmy order 4711 arrived today and the box was crushed; the lamp inside is"
        " broken.\nCan you send a new one, or should I send this one back first?\n\nMaria\n"
    )
    texts = [
        ("Parcel arrived damaged", first),
        ("Re: Parcel arrived damaged", "Here is a photo of the box as it came.\n\nMaria\n"),
        ("Re: Parcel arrived damaged", None),
        ("Re: Parcel arrived damaged", "Thank you, I will wait for the new lamp.\n\nMaria\n"),
    ]
    found: list[EmailMessage] = []
    for n, (subject, text) in enumerate(texts):
        msg = EmailMessage()
        msg["From"] = customer
        msg["To"] = "support@example.com"
        msg["Subject"] = subject
        msg["Date"] = format_datetime(datetime.now(UTC))
        msg["Message-ID"] = make_msgid(f"m{n}", "example.org")
        if found:
            msg["In-Reply-To"] = found[-1]["Message-ID"]
            msg["References"] = " ".join(m["Message-ID"] for m in found)
        if text is None:
            msg.set_content("<p>Hello, <b>any news</b> about my lamp?</p>", subtype="html")
        else:
            msg.set_content(text)
        if n == 1:
            photo = random.Random(n).randbytes(60_000)
            msg.add_attachment(photo, maintype="image", subtype="jpeg", filename="box.jpg")
        found.append(msg)
    return found


def routed(database: Path, message_id: str, timeout: float = 60) -> int:
    """The conversation of the stored message `message_id` once intake has routed it."""
    deadline = time.monotonic() + timeout
    with sqlite3.connect(database, timeout=30) as conn:
        while time.monotonic() < deadline:
            row = conn.execute(
                "SELECT conversation_id FROM messages WHERE message_id = ? AND state = 'routed'",
                (message_id.strip("<>"),),
            ).fetchone()
            if row is not None:
                return int(row[0])
            time.sleep(0.05)
    raise SystemExit(f"{message_id} was not routed within {timeout:g} s")


def open_conversation(desk: Desk) -> int:
    """The thread of mails() sent to `desk`, one mail at a time, then given to AGENT by
    the page's Assignee form: its conversation's id."""
    number = 0
    with smtplib.SMTP("127.0.0.1", desk.smtp_port) as smtp:
        for msg in mails():
            smtp.send_message(msg)
            number = routed(desk.database, msg["Message-ID"])

    async def assign() -> None:
        browser = Browser(desk.url)
        try:
            await browser.sign_in(AGENT, PASSWORD)
            page = f"/conversations/{number}"
            token = await browser.token(page)
            await browser.post(f"{page}/assign", {"agent": AGENT, "csrf": token})
        finally:
            await browser.close()

    asyncio.run(assign())
    return number


def pages_of(conversation: int) -> dict[str, str]:
    return {
        "Unassigned": "/conversations?view=unassigned",
        "Mine": "/conversations",
        "All": "/conversations?view=all",
        "a conversation (4 mails, one with a 60 KB photo)": f"/conversations/{conversation}",
        "Agents": "/agents",
        "the JSON API, unassigned": "/api/conversations?view=unassigned",
        "a static file (no session, no store: the floor)": "/static/inbox.css",
    }


@dataclass
class Timings:
    seconds: dict[tuple[str, str], list[float]] = field(default_factory=dict)
    cpu: float = 0.0  # this client's CPU per request


async def time_pages(
    desks: dict[str, Desk], pages: dict[str, dict[str, str]], repeat: int
) -> Timings:
    browsers = {name: Browser(desk.url) for name, desk in desks.items()}
    found = Timings()
    try:
        for browser in browsers.values():
            await browser.sign_in(AGENT, PASSWORD)
        for name, browser in browsers.items():  # warm-up: the first read comes from the disk
            for path in pages[name].values():
                await browser.get(path)
        cpu = time.process_time()
        for _ in range(repeat):
            for label in pages["big"]:
                for name, browser in browsers.items():
                    # A new data version before each request: pages at one version share
                    # their reads, and this times a page computed, not one shared.
                    _new_version(desks[name].database)
                    started = time.perf_counter()
                    await browser.get(pages[name][label])
                    spent = time.perf_counter() - started
                    found.seconds.setdefault((label, name), []).append(spent)
        found.cpu = (time.process_time() - cpu) / sum(map(len, found.seconds.values()))
    finally:
        for browser in browsers.values():
            await browser.close()
    return found


def _new_version(database: str) -> None:
    """Move the store's data version on, as an agent's status change does."""
    with contextlib.closing(sqlite3.connect(database, timeout=30)) as conn, conn:
        conn.execute(
            "INSERT INTO agent_status (agent, status, changed_at) VALUES ('bench', 'away', ?)"
            " ON CONFLICT (agent) DO UPDATE SET changed_at = excluded.changed_at",
            (datetime.now(UTC).isoformat(timespec="microseconds"),),
        )


def page_settings() -> dict[str, Any]:
    return {
        "agents": [
            {"id": a, "name": f"Agent {a[-2:]}", "email": f"{a}@agents.test"} for a in AGENTS
        ],
        "teams": [{"id": t, "agents": members} for t, members in TEAMS.items()],
        "inboxes": [{"address": address} for address in INBOXES],
        "round_robin": {"enabled": True, "agents": AGENTS},
    }


def ms(seconds: list[float], p: float) -> str:
    return f"{pipeline.percentile(seconds, p):.1f}"


def measure_pages(count: int = BIG, repeat: int = REQUESTS, command_runs: int = 3) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        desks: dict[str, Desk] = {}
        try:
            for name, size in (("big", count), ("small", SMALL)):
                store = make_store(folder / f"{name}.db", size)
                desk = start_desk(folder / name, store, {AGENT: PASSWORD}, **page_settings())
                desks[name] = desk
            pages = {name: pages_of(open_conversation(desk)) for name, desk in desks.items()}
            print(f"pages: {repeat} requests of each, alternating the stores", flush=True)
            timings = asyncio.run(time_pages(desks, pages, repeat))
        finally:
            for desk in desks.values():
                desk.stop()
        command = time_command({n: d.config for n, d in desks.items()}, command_runs, COMMAND)
    big = f"{count:,}"
    lines = [
        f"| page (signed in as {AGENT}) | {big} conversations, p50 / p95 ms "
        f"| {SMALL:,} conversations, p50 / p95 ms | {big} ÷ {SMALL:,}, p50 |",
        "| --- | --- | --- | --- |",
    ]
    for label, path in pages["big"].items():
        big_times, small_times = timings.seconds[label, "big"], timings.seconds[label, "small"]
        ratio = statistics.median(big_times) / statistics.median(small_times)
        lines.append(
            f"| {label} (`{path}`) | {ms(big_times, 0.5)} / {ms(big_times, 0.95)} "
            f"| {ms(small_times, 0.5)} / {ms(small_times, 0.95)} | {ratio:.2f} |"
        )
    runs = {name: command[name][0] for name in desks}
    lines.append(
        f"| `{' '.join(COMMAND[2:])}`, the whole process (median / max of {command_runs}) | "
        + " | ".join(
            f"{statistics.median(runs[n]) * 1000:.0f} / {max(runs[n]) * 1000:.0f}"
            for n in ("big", "small")
        )
        + f" | {statistics.median(runs['big']) / statistics.median(runs['small']):.2f} |"
    )
    opened, unassigned = working(count)
    lines.append(
        f"\nEach page's time is one request's round trip from a client in a process of its own"
        f" ({repeat} of each, sequential, the stores alternating): the server's time plus"
        f" the client's, which spent {timings.cpu * 1000:.2f} ms of CPU a request. The big"
        f" store has {opened:,} open conversations, {unassigned:,} of them unassigned;"
        f" the small {working(SMALL)[0]} and {working(SMALL)[1]}. A list shows 50 a page."
    )
    return "\n".join(lines)


# --- the live stream ------------------------------------------------------------


@dataclass
class Seen:
    """What the streams' process saw: each stream's events as (monotonic time, version),
    the monotonic time just before each status change was posted, pages fetched again."""

    events: list[list[tuple[float, str]]]
    changes: list[float]
    fetched: int
    cpu: float
    seconds: float


@dataclass
class Tab:
    """A browser's tab: its page, the events its stream brought, its page fetched again."""

    browser: Browser
    page: str
    connected: asyncio.Event = field(default_factory=asyncio.Event)
    events: list[tuple[float, str]] = field(default_factory=list)
    fetched: int = 0


async def _watch(tab: Tab, reload: bool) -> None:
    """The tab's page, its stream from the page's version, and the page fetched again on
    each `changed` when `reload` (one fetch at a time and at most one a second, the
    changes meanwhile in one more, as live.js does)."""
    browser = tab.browser
    found = _VERSION.search(await browser.get(tab.page))
    assert found is not None, f"no data version on {tab.page}"
    stale = asyncio.Event()

    async def refetch() -> None:
        while True:
            await stale.wait()
            stale.clear()
            started = time.monotonic()
            await browser.get(tab.page)
            tab.fetched += 1
            await asyncio.sleep(max(started + LIVE_GAP - time.monotonic(), 0))

    refetching = asyncio.create_task(refetch()) if reload else None
    try:
        async with browser.http.get(f"/live?since={found.group(1)}", timeout=None) as stream:
            tab.connected.set()
            async for line in stream.content:
                if line.startswith(b"data: "):
                    tab.events.append((time.monotonic(), line[6:].strip().decode()))
                    stale.set()
    finally:
        if refetching is not None:
            refetching.cancel()


async def _browse(url: str, reload: bool, ready: Event, stop: Event) -> Seen:
    tabs = [Tab(Browser(url), LIVE_PAGES[n % len(LIVE_PAGES)]) for n in range(STREAMS)]
    changes: list[float] = []
    manager = Browser(url)
    try:
        await manager.sign_in("lead", PASSWORD)
        for n, tab in enumerate(tabs):
            await tab.browser.sign_in(LIVE_AGENTS[n % len(LIVE_AGENTS)], PASSWORD)
        watching = [asyncio.create_task(_watch(tab, reload)) for tab in tabs]
        await asyncio.wait_for(asyncio.gather(*(tab.connected.wait() for tab in tabs)), 60)
        ready.set()
        started, cpu = time.monotonic(), time.process_time()
        token = await manager.token("/agents")
        statuses = ["away", "available"]
        while not stop.is_set():
            await asyncio.sleep(CHANGE_EVERY * random.uniform(0.8, 1.2))  # not in step with polls
            changes.append(time.monotonic())
            await manager.post("/agents/lead/status", {"status": statuses[0], "csrf": token})
            statuses.reverse()
        seen = Seen(
            [tab.events for tab in tabs],
            changes,
            sum(tab.fetched for tab in tabs),
            time.process_time() - cpu,
            time.monotonic() - started,
        )
        for task in watching:
            task.cancel()
        await asyncio.gather(*watching, return_exceptions=True)
    finally:
        for browser in [manager, *(tab.browser for tab in tabs)]:
            await browser.close()
    return seen


def _streams(url: str, reload: bool, ready: Event, stop: Event, out: Queue[Seen | str]) -> None:
    try:
        out.put(asyncio.run(_browse(url, reload, ready, stop)))
    except BaseException as error:
        ready.set()
        out.put(f"{type(error).__name__}: {error}")


def delays(seen: Seen) -> list[float]:
    """Seconds from each status change to its `changed` on each stream: the first event
    after it whose version shows a different status stamp (mail moves the other parts)."""

    def status_part(version: str) -> str:
        return version.split(".", 1)[1]

    found = []
    for events in seen.events:
        for at in seen.changes:
            before = [v for t, v in events if t < at]
            if not before:
                continue  # no event yet on this stream: its first status part is unknown
            after = (t for t, v in events if t > at and status_part(v) != status_part(before[-1]))
            arrived = next(after, None)
            if arrived is not None:
                found.append(arrived - at)
    return found


@dataclass
class LiveRun:
    mode: str
    smtp: pipeline.Run | None
    seen: Seen | None
    cpu: float = 0.0  # the daemon's process, while the SMTP client ran

    @property
    def cpu_per_message(self) -> float:
        return self.cpu / self.smtp.sent if self.smtp else 0.0


def live_run(mode: str, seconds: float) -> LiveRun:
    """A fresh daemon, its streams as `mode` says, then `seconds` of SMTP load (none:
    `seconds` of status changes on an idle daemon, `mode` "idle")."""
    passwords = {agent: PASSWORD for agent in LIVE_AGENTS}
    agents = [{"id": x, "email": f"{x}@agents.test"} for x in "abc"]
    agents.append({"id": "lead", "email": "lead@agents.test", "role": "manager"})
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        desk = start_desk(folder, folder / "gateway.db", passwords, agents=agents)
        context = multiprocessing.get_context("spawn")
        ready, stop = context.Event(), context.Event()
        out: Queue[Seen | str] = context.Queue()
        child = None
        try:
            if mode != "none":
                reload = mode == "streams+pages"
                child = context.Process(target=_streams, args=(desk.url, reload, ready, stop, out))
                child.start()
                ready.wait(120)
            cpu = cpu_seconds(desk.process.pid)
            smtp = pipeline.run(desk.smtp_port, CONNECTIONS, seconds) if mode != "idle" else None
            if mode == "idle":
                time.sleep(seconds)
            cpu = cpu_seconds(desk.process.pid) - cpu
            stop.set()
            seen = None
            if child is not None:
                answer = out.get(timeout=60)
                if isinstance(answer, str):
                    raise SystemExit(f"the streams' process failed: {answer}")
                seen = answer
        finally:
            stop.set()
            if child is not None and child.pid is not None:  # started
                child.join(30)
                child.kill()
            desk.stop()
    return LiveRun(mode, smtp, seen, cpu)


def measure_live(seconds: float = 5.0, rounds: int = 5) -> str:
    runs: list[LiveRun] = []
    idle = live_run("idle", seconds * 2)
    print(f"idle: {len(delays(idle.seen) if idle.seen else [])} delays", flush=True)
    for round_ in range(rounds):
        for mode in MODES:
            run = live_run(mode, seconds)
            runs.append(run)
            assert run.smtp is not None
            print(
                f"round {round_ + 1}/{rounds} {mode:14} "
                f"{pipeline.describe(run.smtp.rate, run.smtp.latencies, run.smtp.failures)}",
                flush=True,
            )
    rates = {mode: [r.smtp.rate for r in runs if r.mode == mode and r.smtp] for mode in MODES}
    cpu = {m: statistics.median(r.cpu_per_message for r in runs if r.mode == m) for m in MODES}
    base = statistics.median(rates["none"])
    lines = [
        f"| browsers ({CONNECTIONS} SMTP connections, {seconds:g} s a run) "
        "| accept msg/s, median (each run) | x none | p50 / p99 ms "
        "| the daemon's CPU per message, µs | x none "
        "| `changed` after a status change, median / p95 / max "
        "| events / pages read by the browsers | the browsers' CPU, of a core |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for mode in MODES:
        of = [r for r in runs if r.mode == mode]
        latencies = [x for r in of if r.smtp for x in r.smtp.latencies]
        each = ", ".join(f"{rate:.0f}" for rate in rates[mode])
        rate = statistics.median(rates[mode])
        lines.append(
            f"| {mode} | {rate:.0f} ({each}) | {rate / base:.2f} "
            f"| {ms(latencies, 0.5)} / {ms(latencies, 0.99)} "
            f"| {cpu[mode] * 1e6:.0f} | {cpu[mode] / cpu['none']:.2f} "
            f"| {_seen_cells([r.seen for r in of if r.seen])} |"
        )
    lines.append(
        f"| idle daemon, {STREAMS} streams, {seconds * 2:g} s | | | | | "
        f"| {_seen_cells([idle.seen] if idle.seen else [])} |"
    )
    return "\n".join(lines)


def _seen_cells(seen: list[Seen]) -> str:
    if not seen:
        return " |  | "
    found = [d for s in seen for d in delays(s)]
    events = sum(len(e) for s in seen for e in s.events)
    fetched = sum(s.fetched for s in seen)
    cpu = sum(s.cpu for s in seen) / sum(s.seconds for s in seen)
    p50, p95 = pipeline.percentile(found, 0.5), pipeline.percentile(found, 0.95)
    late = f"{p50:.0f} / {p95:.0f} / {max(found) * 1000:.0f} ms" if found else ""
    return f"{late} | {events:,} / {fetched:,} | {cpu:.0%}"


def measure() -> str:
    return measure_pages() + "\n\n" + measure_live()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.web", description=__doc__)
    parser.add_argument("--conversations", type=int, default=BIG, help="size of the big store")
    parser.add_argument("--requests", type=int, default=REQUESTS, help="of each page per store")
    parser.add_argument("--seconds", type=float, default=5.0, help="of each SMTP run")
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds of SMTP runs")
    only = parser.add_mutually_exclusive_group()
    only.add_argument("--pages-only", action="store_true", help="the pages' times alone")
    only.add_argument("--live-only", action="store_true", help="the live streams' part alone")
    args = parser.parse_args()
    if not args.live_only:
        print(measure_pages(args.conversations, args.requests))
    if not args.pages_only:
        print(measure_live(args.seconds, args.rounds))


if __name__ == "__main__":
    main()
