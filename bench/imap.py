"""IMAP ingest: the gateway against a bare aioimaplib client, on a real Dovecot.

    .venv/bin/python -m bench.imap [--messages 10000] [--rounds 2] [--appends 200]

Two measures, each against a bare client doing the least the same job needs:

- Backlog: a folder already holds N messages (~2 KB, distinct Message-IDs); the
  bare client logs in, searches and fetches every body in batches of 50 (the
  gateway's batch, the gateway's FETCH items); the gateway runs with that folder
  configured `initial_sync = "all"` and is timed, from its start, until the store
  holds all N (and until intake has routed them all). Each runs in its own
  process, rounds alternate bare/gateway, every gateway run has a fresh store
  (the folder is reused: the gateway reads with BODY.PEEK and only adds keywords).
- IDLE: the bare client (its own process) and the gateway IDLE on one folder; a
  third session APPENDs messages one at a time, and per message the time from
  just before its APPEND until the bare client has read its body, and until the
  gateway has routed it (the row leaves 'pending' as 'routed' in the transaction
  that commits its conversation), is taken. First a burst (`--appends`, `--pause`
  apart), then a few messages far apart (`--apart`, APART seconds apart).

Dovecot 2.3 learns of a change by inotify, then waits a fixed 0.5 s
(NOTIFY_DELAY_MSECS in lib-storage/mailbox-watch.c; no setting changes it)
before it pushes, so changes within 0.5 s make one push: in the burst, a
message's latency is mostly where it fell in that window, and each session has
windows of its own, so only the far-apart messages are compared one by one.
`imap_idle_notify_interval` (2 min) is only the "* OK Still here" keepalive;
`mailbox_idle_check_interval` (30 s) is the stat() fallback where inotify fails.

Dovecot (tests/dovecot.py) is the server; the backlog folder is filled by
writing its maildir directly, which Dovecot indexes on the first SELECT.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aioimaplib
import tomli_w

from bench.processes import ROOT, free_port
from tests.dovecot import Dovecot

USER, PASSWORD = "bench", "bench-s3cret"
BATCH = 50  # the gateway's (gateway/ingress/imap.py)
FETCH_ITEMS = "(UID INTERNALDATE BODY.PEEK[])"  # the gateway's
BACKLOG_POLL = 0.05
IDLE_POLL = 0.005
TIMEOUT = 600.0
# Seconds between the far-apart APPENDs. Not less: the gateway's keyword STORE on
# the previous message, ~0.6 s after its APPEND, starts Dovecot's 0.5 s delay too,
# and at 0.8 s every other message was pushed ~0.23 s after its APPEND.
APART = 1.5

_MESSAGE_ID = re.compile(rb"^Message-ID: <([^>]+)>", re.MULTILINE | re.IGNORECASE)

Progress = Callable[[str], None]

BODY = "\r\n".join(
    textwrap.wrap(("The order has not arrived yet and I would like to know why. " * 30)[:1800], 76)
)


def message(tag: str, n: int) -> bytes:
    """About 2 KB, CRLF lines; built by hand: `email` takes ~1 ms a message to build one."""
    lines = [
        f"From: Customer {n} <c{n}@example.org>",
        "To: support@example.com",
        f"Subject: Question number {n} about my order",
        "Date: Mon, 02 Jun 2025 10:00:00 +0000",
        f"Message-ID: <{message_id(tag, n)}>",
        "MIME-Version: 1.0",
        'Content-Type: text/plain; charset="utf-8"',
        "Content-Transfer-Encoding: 7bit",
        "",
        BODY,
        "",
    ]
    return "\r\n".join(lines).encode()


def message_id(tag: str, n: int) -> str:
    return f"bench-{tag}-{n}@example.org"


# --- the server and its folders ---------------------------------------------------------


def start_dovecot() -> Dovecot:
    # World-readable: Dovecot reads its configuration and the mail as `nobody`.
    folder = Path(tempfile.mkdtemp(prefix="bench-dovecot-"))
    folder.chmod(0o755)
    server = Dovecot(folder, free_port(), {USER: PASSWORD})
    server.start()
    return server


def stop_dovecot(server: Dovecot) -> None:
    server.stop()
    shutil.rmtree(server.folder, ignore_errors=True)


def fill(server: Dovecot, folder: str, count: int, tag: str) -> None:
    """Write `count` messages into the folder's maildir, then let Dovecot index them."""
    server.create(USER, folder)
    server.deliver(USER, folder, (message(tag, n) for n in range(count)))
    client = server.client(USER)
    try:
        status, answer = client.select(folder, readonly=True)
        if status != "OK" or int(answer[0] or 0) != count:
            raise SystemExit(f"Dovecot indexed {answer!r} messages in {folder}, not {count}")
    finally:
        client.logout()


# --- the bare clients (each its own process) ---------------------------------------------


async def _login(port: int, folder: str) -> aioimaplib.IMAP4:
    client = aioimaplib.IMAP4("127.0.0.1", port, timeout=60)
    await client.wait_hello_from_server()
    if (await client.login(USER, PASSWORD)).result != "OK":
        raise SystemExit("login refused")
    if (await client.select(folder)).result != "OK":
        raise SystemExit(f"cannot select {folder}")
    return client


def _uids(lines: list[bytes | bytearray], above: int) -> list[int]:
    return sorted(
        {int(u) for line in lines[:-1] for u in line.split() if u.isdigit() and int(u) > above}
    )


def _bodies(lines: list[bytes | bytearray]) -> list[bytes]:
    # aioimaplib gives each literal (here a body) as a bytearray line of its own.
    return [bytes(line) for line in lines if isinstance(line, bytearray)]


async def bare_fetch(port: int, folder: str) -> None:
    """Read every body in the folder, as the gateway's first sync does; say when, as JSON."""
    client = await _login(port, folder)
    found = await client.uid_search("UID 1:*")
    uids = _uids(found.lines, 0)
    first: float | None = None
    read = 0
    for start in range(0, len(uids), BATCH):
        batch = ",".join(map(str, uids[start : start + BATCH]))
        fetched = await client.uid("fetch", batch, FETCH_ITEMS)
        if fetched.result != "OK":
            raise SystemExit(f"fetch failed: {fetched.lines!r}")
        read += len(_bodies(fetched.lines))
        if first is None:
            first = time.monotonic()
    done = time.monotonic()
    await client.logout()
    print(json.dumps({"read": read, "first": first, "done": done}), flush=True)


async def bare_idle(port: int, folder: str) -> None:
    """IDLE; on each push, search and fetch what is new; print `<message-id> <monotonic>`."""
    client = await _login(port, folder)
    last = 0
    print("ready", flush=True)
    while True:
        idle = await client.idle_start(timeout=25 * 60)
        await client.wait_server_push(timeout=26 * 60)
        client.idle_done()
        await asyncio.wait_for(idle, 30)
        found = await client.uid_search(f"UID {last + 1}:*")
        uids = _uids(found.lines, last)
        for start in range(0, len(uids), BATCH):
            batch = ",".join(map(str, uids[start : start + BATCH]))
            fetched = await client.uid("fetch", batch, FETCH_ITEMS)
            now = time.monotonic()
            for body in _bodies(fetched.lines):
                found_id = _MESSAGE_ID.search(body)
                if found_id is not None:
                    print(found_id.group(1).decode(), now, flush=True)
        if uids:
            last = uids[-1]


# --- the gateway (its own process) -------------------------------------------------------


def mailbox(server: Dovecot, work: Path, folder: str, initial_sync: str) -> dict[str, Any]:
    """An inbox's `[inboxes.imap]` on the bench's Dovecot user, its password in `work`."""
    (work / "imap-password").write_text(PASSWORD + "\n")
    return {
        "host": "127.0.0.1",
        "port": server.port,
        "tls": False,
        "username": USER,
        "password_file": str(work / "imap-password"),
        "folder": folder,
        "mode": "idle",
        "initial_sync": initial_sync,
    }


def start_gateway(
    server: Dovecot, folder: str, initial_sync: str, work: Path
) -> tuple[subprocess.Popen[bytes], Path, Path]:
    """The gateway on its own fresh store in `work`; (process, database, log file)."""
    work.mkdir(parents=True, exist_ok=True)
    config = {
        "gateway": {"database": "gateway.db", "hostname": "bench.test"},
        "smtp": {"listen": [f"127.0.0.1:{free_port()}"]},
        "notify": {"backend": "file", "file_dir": "alerts"},
        "round_robin": {"enabled": True, "agents": ["a", "b", "c"]},
        "agents": [{"id": x, "email": f"{x}@agents.test"} for x in "abc"],
        "inboxes": [
            {
                "address": "support@example.com",
                "imap": mailbox(server, work, folder, initial_sync),
            }
        ],
        "rules": [{"name": "ACME", "sender_domain": ["acme.com"], "assign_to": "agent:a"}],
    }
    path = work / "gateway.toml"
    path.write_text(tomli_w.dumps(config))
    logfile = work / "gateway.log"
    with logfile.open("wb") as log:  # the logs go to stderr: keep them for a look afterwards
        process = subprocess.Popen(
            [sys.executable, "-m", "gateway", "run", "--config", str(path)],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
    return process, work / "gateway.db", logfile


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def open_store(database: Path, process: subprocess.Popen[bytes]) -> sqlite3.Connection:
    """A connection to the gateway's store once it has made it (never creating the file).

    Not bound to this thread: the IDLE watcher reads through it from its own.
    """
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the gateway exited: {process.returncode}")
        if database.exists():
            uri = f"file:{database}?mode=rw"
            conn = sqlite3.connect(uri, uri=True, timeout=30, check_same_thread=False)
            try:
                conn.execute("SELECT 1 FROM messages LIMIT 1")
                return conn
            except sqlite3.Error:  # not migrated yet
                conn.close()
        time.sleep(0.02)
    raise SystemExit("the gateway made no store")


def wait_log(logfile: Path, event: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the gateway exited: {process.returncode}; see {logfile}")
        if f'"{event}"' in logfile.read_text(errors="replace"):
            return
        time.sleep(0.02)
    raise SystemExit(f"no {event} in {logfile}")


# --- backlog -----------------------------------------------------------------------------


@dataclass
class Backlog:
    target: str
    count: int
    first: float  # seconds from the start until the first message was read / stored
    done: float  # ... until all were read / stored
    routed: float | None  # ... until all were routed (the gateway only)

    @property
    def rate(self) -> float:
        return self.count / self.done


def backlog_bare(server: Dovecot, folder: str, count: int) -> Backlog:
    started = time.monotonic()
    finished = subprocess.run(
        [sys.executable, "-m", "bench.imap", "bare-fetch", str(server.port), folder],
        cwd=ROOT,
        capture_output=True,
        check=True,
        timeout=TIMEOUT,
    )
    said = json.loads(finished.stdout)
    if said["read"] != count:
        raise SystemExit(f"the bare client read {said['read']} bodies, not {count}")
    return Backlog("bare", count, said["first"] - started, said["done"] - started, None)


def backlog_gateway(server: Dovecot, folder: str, count: int, work: Path) -> Backlog:
    started = time.monotonic()
    process, database, _ = start_gateway(server, folder, "all", work)
    try:
        conn = open_store(database, process)
        first: float | None = None
        done: float | None = None
        routed: float | None = None
        while routed is None:
            now = time.monotonic()
            if now - started > TIMEOUT:
                raise SystemExit(f"the gateway did not route {count} messages in {TIMEOUT:.0f} s")
            if process.poll() is not None:
                raise SystemExit(f"the gateway exited: {process.returncode}")
            # An index each: counting the pending rows, or reading `state`, reads the rows.
            stored, pending = conn.execute(
                "SELECT (SELECT count(*) FROM messages),"
                " EXISTS (SELECT 1 FROM messages WHERE state = 'pending')"
            ).fetchone()
            if first is None and stored:
                first = now - started
            if done is None and stored >= count:
                done = now - started
            if done is not None and not pending:
                routed = now - started
            time.sleep(BACKLOG_POLL)
        states = dict(conn.execute("SELECT state, count(*) FROM messages GROUP BY state"))
        conn.close()
    finally:
        stop(process)
    if states != {"routed": count}:
        raise SystemExit(f"the gateway left {states}, not {count} routed")
    assert first is not None and done is not None
    return Backlog("gateway", count, first, done, routed)


# --- IDLE latency ------------------------------------------------------------------------


class Appender:
    """APPENDs one message at a time on one session; when each APPEND was started."""

    def __init__(self, server: Dovecot, folder: str) -> None:
        self.folder = folder
        self.client = server.client(USER)
        self.started: dict[str, float] = {}

    def run(self, tag: str, count: int, pause: float) -> None:
        for n in range(count):
            raw = message(tag, n)
            self.started[message_id(tag, n)] = time.monotonic()
            status, answer = self.client.append(self.folder, "", None, raw)
            if status != "OK":
                raise SystemExit(f"APPEND failed: {answer!r}")
            time.sleep(pause)

    def close(self) -> None:
        self.client.logout()


@dataclass
class Phase:
    tag: str
    count: int
    pause: float  # seconds between APPENDs


@dataclass
class Latencies:
    phase: Phase
    bare: list[float]  # APPEND → body read, per message the bare client read
    gateway: list[float]  # APPEND → routed, per message the gateway routed
    extra: list[float]  # gateway - bare, per message both took


class BareIdle:
    """The bare IDLE client in its own process; when it read each Message-ID."""

    def __init__(self, server: Dovecot, folder: str) -> None:
        self.seen: dict[str, float] = {}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bench.imap", "bare-idle", str(server.port), folder],
            cwd=ROOT,
            stdout=subprocess.PIPE,
        )
        assert self.process.stdout is not None
        if self.process.stdout.readline().strip() != b"ready":
            raise SystemExit("the bare IDLE client did not start")
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            key, _, when = line.decode().partition(" ")
            if when:
                self.seen[key] = float(when)


class Routed:
    """Every few ms, the gateway's rows routed since the last look; when each was seen."""

    def __init__(self, database: Path, process: subprocess.Popen[bytes]) -> None:
        self.seen: dict[str, float] = {}
        self._conn = open_store(database, process)
        self._finished = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        above = 0  # intake routes in id order: every row up to here is seen
        while not self._finished.is_set():
            rows = self._conn.execute(
                "SELECT id, dedup_key, state FROM messages WHERE id > ? ORDER BY id", (above,)
            ).fetchall()
            now = time.monotonic()
            for row_id, key, state in rows:
                if state == "pending":
                    break
                if state == "routed":
                    self.seen[key] = now
                above = row_id
            time.sleep(IDLE_POLL)
        self._conn.close()

    def close(self) -> None:
        self._finished.set()
        self._thread.join(5)


def idle_latency(
    server: Dovecot, folder: str, phases: list[Phase], work: Path, progress: Progress
) -> list[Latencies]:
    """The bare client and the gateway IDLE on the same folder; each APPEND times both.

    Paired, so both see the same pushes: Dovecot coalesces the changes of ~0.5 s
    into one, which makes the latency of a message depend on where it fell in that
    window much more than on who reads it.
    """
    server.create(USER, folder)
    bare = BareIdle(server, folder)
    gateway, database, logfile = start_gateway(server, folder, "new", work)
    routed: Routed | None = None
    found: list[Latencies] = []
    try:
        wait_log(logfile, "imap.connected", gateway)
        routed = Routed(database, gateway)
        time.sleep(0.5)  # both into IDLE
        appender = Appender(server, folder)
        try:
            for phase in phases:
                progress(
                    f"IDLE: {phase.count} APPENDs {phase.pause * 1000:.0f} ms apart "
                    f"({phase.count * phase.pause:.0f} s)"
                )
                appender.run(phase.tag, phase.count, phase.pause)
                keys = [message_id(phase.tag, n) for n in range(phase.count)]
                deadline = time.monotonic() + 30
                while time.monotonic() < deadline and not all(
                    k in bare.seen and k in routed.seen for k in keys
                ):
                    time.sleep(0.05)
                at = appender.started
                result = Latencies(
                    phase,
                    [bare.seen[k] - at[k] for k in keys if k in bare.seen],
                    [routed.seen[k] - at[k] for k in keys if k in routed.seen],
                    [
                        routed.seen[k] - bare.seen[k]
                        for k in keys
                        if k in bare.seen and k in routed.seen
                    ],
                )
                found.append(result)
                progress(
                    f"IDLE: bare read {len(result.bare)}/{phase.count}, "
                    f"p50 {ms(result.bare, 0.5)} p99 {ms(result.bare, 0.99)}; "
                    f"gateway routed {len(result.gateway)}/{phase.count}, "
                    f"p50 {ms(result.gateway, 0.5)} p99 {ms(result.gateway, 0.99)}"
                )
        finally:
            appender.close()
    finally:
        if routed is not None:
            routed.close()
        stop(gateway)
        stop(bare.process)
    return found


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(int(len(ordered) * p), len(ordered) - 1)]


def ms(values: list[float], p: float, sign: str = "") -> str:
    return f"{percentile(values, p) * 1000:{sign}.0f} ms" if values else "none"


# --- the whole run -----------------------------------------------------------------------


def measure(
    messages: int = 10_000,
    rounds: int = 2,
    appends: int = 200,
    pause: float = 0.1,
    apart: int = 12,
    progress: Progress = print,
) -> str:
    """Both measures against one Dovecot; the markdown table.

    After the burst, `apart` more APPENDs are made APART seconds apart, each then
    its own IDLE push; 0 leaves them out.
    """
    server = start_dovecot()
    work = Path(tempfile.mkdtemp(prefix="bench-imap-"))
    try:
        started = time.monotonic()
        fill(server, "Backlog", messages, "backlog")
        progress(f"filled and indexed {messages} messages in {time.monotonic() - started:.1f} s")
        backlog_bare(server, "Backlog", messages)  # warm: page cache, Dovecot's index
        progress("warm-up read done")
        runs: list[Backlog] = []
        for round_ in range(rounds):
            for target in ("bare", "gateway"):
                if target == "bare":
                    run = backlog_bare(server, "Backlog", messages)
                else:
                    run = backlog_gateway(server, "Backlog", messages, work / f"backlog-{round_}")
                runs.append(run)
                routed = "" if run.routed is None else f", all routed after {run.routed:.2f} s"
                progress(
                    f"backlog round {round_ + 1}/{rounds} {target:7}: first after "
                    f"{run.first:.2f} s, all after {run.done:.2f} s "
                    f"({run.rate:.0f} msg/s){routed}"
                )
        phases = [Phase("burst", appends, pause)]
        if apart:
            phases.append(Phase("apart", apart, APART))
        latencies = idle_latency(server, "Idle", phases, work / "idle", progress)
        return report(runs, latencies)
    finally:
        stop_dovecot(server)
        shutil.rmtree(work, ignore_errors=True)


def report(runs: list[Backlog], latencies: list[Latencies]) -> str:
    bare = [r for r in runs if r.target == "bare"]
    gateway = [r for r in runs if r.target == "gateway"]
    count = runs[0].count
    bare_rate = statistics.median(r.rate for r in bare)
    stored_rate = statistics.median(r.rate for r in gateway)
    routed_rate = statistics.median(count / r.routed for r in gateway if r.routed)

    def seconds(values: list[float]) -> str:
        return f"{statistics.median(values):.2f} s"

    lines = [
        "| measure | bare aioimaplib | gateway | gateway vs bare |",
        "| --- | --- | --- | --- |",
        f"| backlog of {count:,}: all read / all stored "
        f"| {seconds([r.done for r in bare])}, {bare_rate:,.0f} msg/s "
        f"| {seconds([r.done for r in gateway])}, {stored_rate:,.0f} msg/s "
        f"| ratio {stored_rate / bare_rate:.3f} |",
        f"| backlog: all routed | | {seconds([r.routed or 0.0 for r in gateway])}, "
        f"{routed_rate:,.0f} msg/s | ratio {routed_rate / bare_rate:.3f} |",
        f"| backlog: start → first message read / stored "
        f"| {seconds([r.first for r in bare])} | {seconds([r.first for r in gateway])} | |",
    ]
    for found in latencies:
        phase = found.phase
        lines.append(
            f"| IDLE, {phase.count} APPENDs {phase.pause * 1000:.0f} ms apart: "
            f"APPEND → read / routed, p50 / p99 "
            f"| {ms(found.bare, 0.5)} / {ms(found.bare, 0.99)} "
            f"| {ms(found.gateway, 0.5)} / {ms(found.gateway, 0.99)} "
            + (
                f"| {ms(found.extra, 0.5, '+')} / {ms(found.extra, 0.99, '+')} per message |"
                if phase.pause >= APART
                else "| (one push per 0.5 s, per session) |"
            )
        )
        if min(len(found.bare), len(found.gateway)) < phase.count:
            lines.append(
                f"| IDLE, {phase.pause * 1000:.0f} ms apart: taken "
                f"| {len(found.bare)}/{phase.count} | {len(found.gateway)}/{phase.count} | |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.imap",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--messages", type=int, default=10_000, help="backlog size")
    parser.add_argument("--rounds", type=int, default=2, help="alternating backlog rounds")
    parser.add_argument("--appends", type=int, default=200, help="APPENDs in the IDLE burst")
    parser.add_argument("--pause", type=float, default=0.1, help="seconds between them")
    parser.add_argument("--apart", type=int, default=12, help=f"then APPENDs {APART} s apart")
    parser.add_argument("child", nargs="*", help=argparse.SUPPRESS)  # the bare clients
    args = parser.parse_args()
    if args.child:
        kind, port, folder = args.child
        client = bare_fetch if kind == "bare-fetch" else bare_idle
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(client(int(port), folder))
        return
    table = measure(
        args.messages,
        args.rounds,
        args.appends,
        args.pause,
        args.apart,
        progress=lambda line: print(line, flush=True),
    )
    print()
    print(table)


if __name__ == "__main__":
    main()
