"""Alerts under a steady load, behind a backlog, in an outage: measured from outside.

    .venv/bin/python -m bench.soak [--rates 50,100,200,400] [--seconds 60] [--wait 30]
        [--backlog 10000] [--outage 3000] [--cap 60] [--connections 32] [--quick]

Every part runs a fresh daemon as production does (`python -m gateway run`, a
process of its own), its alerts over SMTP to a smarthost: an aiosmtpd sink in a
process of its own that notes, for every alert, when it arrived (time.time())
and which message it is for (the alert attaches the original, whose Message-ID
names it). Mail comes from a client in a process of its own, paced by the
clock: message k leaves at start + k/R, on whichever of several sessions is
free, so a slow answer does not hold the pace back; it notes when each 250
came. An alert's latency is its arrival less its message's 250. Each message
has a sender of its own (and the per-sender alert limit is off), so each starts
a conversation and owes one alert.

1. Steady load: R messages a second for S seconds, then up to `--wait` seconds
   for the alerts still owed.
2. Behind a backlog: `--backlog` alerts made due at once (bench.alerts makes it
   as an outage would), then the smarthost and the daemon start, and one fresh
   message every 0.5 s while the backlog drains (at most `--cap` s): the fresh
   alerts' latency, and the backlog's rate from its first alert to its last.
3. Outage: `--outage` alerts due, and on the smarthost's port a listener that
   closes every connection as soon as it accepts it (counting them) instead of
   a smarthost; then 3 new messages: how long until each one's conversation
   shows `notify_failed`, waited for at most `--cap` s.

`--quick` runs all three, small, in about a minute.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
import signal
import smtplib
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import aiosmtplib
from aiosmtpd.smtp import SMTP, Envelope

from bench.alerts import SmtpGateway, mail, make_backlog, query
from bench.processes import ROOT

RATES = (50, 100, 200, 300, 400)
FRESH_RATE = 2.0  # one fresh message every 0.5 s behind the backlog
FRESH_SESSIONS = 4  # so that one slow answer does not hold the next fresh message
OUTAGE_MESSAGES = 3
POLL = 0.1
# The original attached to an alert, as bench.alerts.mail names it.
ORIGINAL = re.compile(rb"Message-ID: <([a-z]+)-(\d+)@soak\.test>")


# --- the smarthost (a process of its own) ---


class Recorder:
    """aiosmtpd handler: each alert as `alert <tag> <n> <time.time()>` on stdout."""

    async def handle_DATA(self, server: SMTP, session: object, envelope: Envelope) -> str:
        arrived = time.time()
        found = ORIGINAL.search(envelope.original_content or b"")
        name = f"{found[1].decode()} {found[2].decode()}" if found else "unknown 0"
        print(f"alert {name} {arrived}", flush=True)
        return "250 OK"


async def _close_at_once(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    print("accept", flush=True)
    writer.close()


async def serve_sink(port: int, refuse: bool) -> None:
    """A smarthost on `port` until SIGTERM; refusing: every connection closed on accept."""
    loop = asyncio.get_running_loop()
    if refuse:
        server = await asyncio.start_server(_close_at_once, "127.0.0.1", port)
    else:
        server = await loop.create_server(lambda: SMTP(Recorder()), "127.0.0.1", port)
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    print("ready", flush=True)
    async with server:
        await stop.wait()


class Sink:
    """The smarthost's process, and what it saw: alerts' arrivals by tag and number, or
    (refusing) how many connections it accepted."""

    def __init__(self, port: int, refuse: bool = False) -> None:
        command = [sys.executable, "-m", "bench.soak", "--sink", str(port)]
        self._process = subprocess.Popen(
            [*command, *["--refuse"] * refuse], cwd=ROOT, stdout=subprocess.PIPE, text=True
        )
        self.arrivals: defaultdict[str, dict[int, float]] = defaultdict(dict)
        self.accepts = 0
        self._ready = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        if not self._ready.wait(30):
            self.close()
            raise SystemExit(f"the smarthost did not listen on {port}")

    def _read(self) -> None:
        assert self._process.stdout is not None
        for line in self._process.stdout:
            kind, *rest = line.split()
            if kind == "ready":
                self._ready.set()
            elif kind == "accept":
                self.accepts += 1
            else:
                tag, n, at = rest
                self.arrivals[tag].setdefault(int(n), float(at))  # a resent alert: the first

    def wait_for(self, tag: str, numbers: Iterable[int], seconds: float) -> None:
        """Until an alert for each of `numbers` arrived, or `seconds` passed."""
        owed = set(numbers)
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            owed -= self.arrivals[tag].keys()
            if not owed:
                return
            time.sleep(POLL)

    def close(self) -> None:
        self._process.terminate()
        self._process.wait(30)
        self._reader.join()

    def __enter__(self) -> Sink:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


# --- the client (a process of its own) ---


def _stop_at_eof(stop: asyncio.Event, loop: asyncio.AbstractEventLoop) -> None:
    # A closed pipe, unlike a signal, cannot come before the process is ready for it.
    sys.stdin.read()
    with contextlib.suppress(RuntimeError):  # the loop is over: nothing left to stop
        loop.call_soon_threadsafe(stop.set)


async def paced(port: int, tag: str, rate: float, seconds: float, connections: int) -> None:
    """`mail(tag, n)` at start + n/rate over `connections` sessions, until `seconds` of
    them are sent or stdin closes; then, as JSON on stdout, when the schedule started
    and when each 250 came (time.time()), and how many were refused."""
    stop = asyncio.Event()
    waiter = (stop, asyncio.get_running_loop())
    threading.Thread(target=_stop_at_eof, args=waiter, daemon=True).start()
    total = round(rate * seconds)
    messages = [mail(tag, n) for n in range(total)]  # built before the clock starts
    acked: dict[int, float] = {}
    refused = 0
    numbers = iter(range(total))  # shared: a free session takes the next one due

    async def session() -> None:
        nonlocal refused
        client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, timeout=60)
        await client.connect()
        for n in numbers:
            ahead = start + n / rate - time.monotonic()
            if ahead > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), ahead)
            if stop.is_set():
                break
            sender, raw = messages[n]
            try:
                await client.sendmail(sender, ["support@example.com"], raw)
            except aiosmtplib.SMTPResponseException:
                refused += 1
                continue
            acked[n] = time.time()
        await client.quit()

    start = time.monotonic() + 0.2  # the sessions connect meanwhile
    started = time.time() + 0.2
    await asyncio.gather(*(session() for _ in range(min(connections, total))))
    print(json.dumps({"started": started, "acked": acked, "refused": refused}))


@dataclass
class Sent:
    started: float
    acked: dict[int, float]  # message number → when its 250 came
    refused: int

    @property
    def rate(self) -> float:
        """Messages taken a second, from the schedule's start to the last 250."""
        if len(self.acked) < 2:
            return 0.0
        return (len(self.acked) - 1) / (max(self.acked.values()) - self.started)


class Client:
    def __init__(self, port: int, tag: str, rate: float, seconds: float, connections: int) -> None:
        load = {"--tag": tag, "--rate": rate, "--seconds": seconds, "--connections": connections}
        self._process = subprocess.Popen(
            [sys.executable, "-m", "bench.soak", "--client", str(port)]
            + [str(x) for pair in load.items() for x in pair],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def stop(self) -> None:
        """Send no more; what was sent still counts."""
        assert self._process.stdin is not None
        self._process.stdin.close()

    def result(self) -> Sent:
        """What was sent, once every message was (or `stop`)."""
        assert self._process.stdout is not None
        out = self._process.stdout.read()
        self.stop()
        if self._process.wait() != 0:
            raise SystemExit(f"the client failed ({self._process.returncode})")
        found = json.loads(out)
        acked = {int(n): at for n, at in found["acked"].items()}
        return Sent(found["started"], acked, found["refused"])


# --- figures ---


def percentile(ordered: list[float], p: float) -> float:
    return ordered[min(int(len(ordered) * p), len(ordered) - 1)]


def duration(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:.1f} s"


def latencies(sent: Sent, arrivals: dict[int, float]) -> list[float]:
    """Each alert's arrival less its message's 250, in order."""
    return sorted(arrivals[n] - at for n, at in sent.acked.items() if n in arrivals)


# --- 1. steady load ---


def steady(rate: float, seconds: float, wait: float, connections: int) -> str:
    """One row: `rate` for `seconds` against a fresh daemon, then `wait` for the rest."""
    with tempfile.TemporaryDirectory(prefix="bench-soak-") as folder:
        gateway = SmtpGateway(Path(folder))
        with Sink(gateway.smarthost_port) as sink, gateway.running():
            sent = Client(gateway.port, "load", rate, seconds, connections).result()
            sink.wait_for("load", sent.acked, wait)
        routed, alerted = stages(gateway.database)
    late = latencies(sent, sink.arrivals["load"])
    missing = len(sent.acked) - len(late)
    figures = [percentile(late, p) for p in (0.5, 0.9, 0.99, 1)] if late else []
    cells = " | ".join(duration(x) for x in figures) if late else "none | | |"
    refused = f" ({sent.refused} refused)" if sent.refused else ""
    return (
        f"| {rate:g} | {sent.rate:.0f}{refused} | {len(late)} / {len(sent.acked)} | {cells} "
        f"| {missing} | {_p50_p99(routed)} | {_p50_p99(alerted)} |"
    )


def stages(database: Path) -> tuple[list[float], list[float]]:
    """Where an alert's wait was spent, by the daemon's own clock: each message's routing
    after it was stored, and its alert's `notified` after the routing."""
    with sqlite3.connect(database, timeout=30) as conn:
        rows = conn.execute(
            "SELECT m.received_at, a.at, n.at FROM messages m"
            " JOIN events a ON a.conversation_id = m.conversation_id AND a.kind = 'assigned'"
            " LEFT JOIN events n ON n.conversation_id = m.conversation_id AND n.kind = 'notified'"
        ).fetchall()
    seconds = [
        [(datetime.fromisoformat(b) - datetime.fromisoformat(a)).total_seconds() for a, b in pairs]
        for pairs in ([(r[0], r[1]) for r in rows], [(r[1], r[2]) for r in rows if r[2]])
    ]
    return sorted(seconds[0]), sorted(seconds[1])


def _p50_p99(ordered: list[float]) -> str:
    if not ordered:
        return "none"
    return f"{duration(percentile(ordered, 0.5))} / {duration(percentile(ordered, 0.99))}"


STEADY_HEAD = (
    "| offered msg/s | achieved msg/s | alerts received / expected "
    "| p50 | p90 | p99 | max | missing at the end "
    "| routed after stored, p50 / p99 | notified after routed, p50 / p99 |\n"
    "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
)


# --- 2. fresh alerts behind a backlog ---


def _made(gateway: SmtpGateway, backlog: int) -> None:
    started = time.monotonic()
    make_backlog(gateway, backlog)
    print(f"a backlog of {backlog} due alerts made in {time.monotonic() - started:.0f} s")


def behind_backlog(backlog: int, cap: float, wait: float) -> str:
    with tempfile.TemporaryDirectory(prefix="bench-soak-") as folder:
        gateway = SmtpGateway(Path(folder))
        _made(gateway, backlog)
        with Sink(gateway.smarthost_port) as sink, gateway.running():
            fresh = Client(gateway.port, "fresh", FRESH_RATE, cap, FRESH_SESSIONS)
            sink.wait_for("backlog", range(backlog), cap)
            fresh.stop()
            sent = fresh.result()
            sink.wait_for("fresh", sent.acked, wait)
    drained = sorted(sink.arrivals["backlog"].values())
    rate = (len(drained) - 1) / (drained[-1] - drained[0]) if len(drained) > 1 else 0.0
    late = latencies(sent, sink.arrivals["fresh"])
    fresh_cells = (
        f"{duration(percentile(late, 0.5))} | {duration(late[-1])}" if late else "none | none"
    )
    return (
        "| backlog due | backlog delivered (cap) | drain alerts/s | fresh received / sent "
        "| fresh p50 | fresh max |\n"
        "| --- | --- | --- | --- | --- | --- |\n"
        f"| {backlog} | {len(drained)} ({cap:g} s) | {rate:.0f} "
        f"| {len(late)} / {len(sent.acked)} | {fresh_cells} |"
    )


# --- 3. outage ---


def _failures(database: Path) -> dict[int, float]:
    """Outage message number → when its conversation's first `notify_failed` was written."""
    with sqlite3.connect(database, timeout=30) as conn:
        rows = conn.execute(
            "SELECT m.message_id, min(e.at) FROM messages m"
            " JOIN events e ON e.conversation_id = m.conversation_id"
            " WHERE e.kind = 'notify_failed' AND m.message_id LIKE 'outage-%'"
            " GROUP BY m.message_id"
        ).fetchall()
    return {
        int(message_id.split("-")[1].split("@")[0]): datetime.fromisoformat(at).timestamp()
        for message_id, at in rows
    }


def outage(backlog: int, cap: float) -> str:
    failed = "SELECT count(*) FROM events WHERE kind = 'notify_failed'"
    with tempfile.TemporaryDirectory(prefix="bench-soak-") as folder:
        gateway = SmtpGateway(Path(folder))
        _made(gateway, backlog)
        failed_before = query(gateway.database, failed)
        with Sink(gateway.smarthost_port, refuse=True) as listener:
            began = time.monotonic()  # the outage, as the daemon sees it, from its start
            with gateway.running():
                acked = {}
                with smtplib.SMTP("127.0.0.1", gateway.port) as client:
                    for n in range(OUTAGE_MESSAGES):
                        sender, raw = mail("outage", n)
                        client.sendmail(sender, ["support@example.com"], raw)
                        acked[n] = time.time()
                noticed: dict[int, float] = {}
                while len(noticed) < OUTAGE_MESSAGES and time.monotonic() - began < cap:
                    time.sleep(POLL)
                    noticed = _failures(gateway.database)
                lasted = time.monotonic() - began
                attempts = listener.accepts
                written = query(gateway.database, failed) - failed_before
    after = ", ".join(
        duration(noticed[n] - acked[n]) if n in noticed else f"not within {cap:g} s"
        for n in range(OUTAGE_MESSAGES)
    )
    return (
        "| backlog due | notify_failed after each new message's 250 "
        "| connections accepted | notify_failed written |\n"
        "| --- | --- | --- | --- |\n"
        f"| {backlog} | {after} | {attempts} in {lasted:.0f} s | {written} |"
    )


def measure(
    rates: Iterable[float] = RATES,
    seconds: float = 60,
    wait: float = 30,
    backlog: int = 10_000,
    outage_backlog: int = 3_000,
    cap: float = 60,
    connections: int = 32,
) -> str:
    rows = []
    for rate in rates:
        rows.append(steady(rate, seconds, wait, connections))
        print(rows[-1], flush=True)
    drained = behind_backlog(backlog, cap, wait)
    print(drained, flush=True)
    dead = outage(outage_backlog, cap)
    print(dead, flush=True)
    parts = [
        f"A steady load for {seconds:g} s at each rate, a fresh daemon each; alert latency "
        f"is its arrival at the smarthost less its message's 250, the alerts still owed "
        f"waited for {wait:g} s after the load; the last two columns split the wait by the "
        f"daemon's own clock (stored, assigned, notified):\n\n"
        + STEADY_HEAD
        + "\n"
        + "\n".join(rows),
        f"A backlog of {backlog} due alerts as the smarthost comes back, and one fresh "
        f"message every {1 / FRESH_RATE:g} s while it drains (at most {cap:g} s; the fresh "
        f"alerts waited for {wait:g} s after):\n\n" + drained,
        f"An outage behind a backlog of {outage_backlog} due alerts, the smarthost's port "
        f"held by a listener that closes each connection as it accepts it (and counts them): "
        f"{OUTAGE_MESSAGES} new messages, and how long until their conversations show "
        f"`notify_failed` (at most {cap:g} s):\n\n" + dead,
    ]
    return "\n\n".join(parts)


# --quick: all three in about a minute; a flag given with it still wins.
QUICK = {"rates": "50,200", "seconds": 5, "wait": 10, "backlog": 1_000, "outage": 500, "cap": 15}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__)
    parser.add_argument("--rates", default=",".join(map(str, RATES)), help="msg/s, a list")
    parser.add_argument("--seconds", type=float, default=60.0, help="length of each load")
    parser.add_argument("--wait", type=float, default=30.0, help="for alerts after a load")
    parser.add_argument("--backlog", type=int, default=10_000, help="due alerts, part 2")
    parser.add_argument("--outage", type=int, default=3_000, help="due alerts, part 3")
    parser.add_argument("--cap", type=float, default=60.0, help="for a drain, an outage")
    parser.add_argument("--connections", type=int, default=32, help="the client's sessions")
    parser.add_argument("--quick", action="store_true", help="all three, small")
    parser.add_argument("--sink", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--refuse", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--client", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--tag", help=argparse.SUPPRESS)
    parser.add_argument("--rate", type=float, help=argparse.SUPPRESS)
    if parser.parse_known_args()[0].quick:
        parser.set_defaults(**QUICK)
    args = parser.parse_args()
    if args.sink:
        asyncio.run(serve_sink(args.sink, args.refuse))
    elif args.client:
        asyncio.run(paced(args.client, args.tag, args.rate, args.seconds, args.connections))
    else:
        rates = [float(x) for x in args.rates.split(",")]
        figures = measure(
            rates, args.seconds, args.wait, args.backlog, args.outage, args.cap, args.connections
        )
        print(figures)


if __name__ == "__main__":
    main()
