"""How long the daemon's event loop serves nobody while it takes large mail.

    .venv/bin/python -m bench.stall [--rounds 2]

The gateway runs as production does (`python -m gateway run`, its own process,
alerts written as files). A probe in a process of its own keeps one SMTP session
asking NOOP, a few milliseconds apart; the longest NOOP while a load is taken is
the longest stretch the loop answered nobody. The baseline is the same probe on
the same idle daemon for as long, in the same run. Three loads, each until every
message is routed and its alert written:

- one 25 MB message over SMTP;
- 10 messages of 2.5 MB over 10 connections at once (one accept group);
- 20 messages of 10 MB in a mailbox of a real Dovecot that the daemon polls.
"""

from __future__ import annotations

import argparse
import smtplib
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench.imap import USER, mailbox, start_dovecot, stop_dovecot
from bench.processes import ROOT, free_port, gateway_config, wait_port
from tests.dovecot import Dovecot

MB = 1_000_000
LIMIT = 30 * MB
WAIT = 600.0


def big(tag: str, size: int) -> bytes:
    """A plain-text message of about `size` bytes with CRLF lines of 76 characters."""
    head = (
        f"From: Big Sender <big@example.org>\r\nTo: support@example.com\r\n"
        f"Subject: large {tag}\r\nMessage-ID: <{tag}@stall.example>\r\n\r\n"
    ).encode()
    line = b"x" * 76 + b"\r\n"
    return head + line * ((size - len(head)) // len(line))


# --- the probe (a process of its own: the bench's own threads must not be what waits) ---


def probe(port: int) -> None:
    """NOOP on one session until stdin closes; each answer as `<monotonic start> <seconds>`."""
    stop = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
    client = smtplib.SMTP("127.0.0.1", port, timeout=WAIT)
    while not stop.is_set():
        started = time.monotonic()
        try:
            client.noop()
        except smtplib.SMTPServerDisconnected:  # the session's command limit
            client = smtplib.SMTP("127.0.0.1", port, timeout=WAIT)
            continue
        print(f"{started} {time.monotonic() - started}", flush=True)
        time.sleep(0.005)


class Probe:
    def __init__(self, port: int) -> None:
        self._process = subprocess.Popen(
            [sys.executable, "-m", "bench.stall", "--probe", str(port)],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self._answers: list[tuple[float, float]] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self._process.stdout is not None
        for line in self._process.stdout:
            started, seconds = line.split()
            self._answers.append((float(started), float(seconds)))

    def worst_ms(self, start: float, end: float) -> float:
        """The longest NOOP asked between `start` and `end` (monotonic)."""
        inside = [seconds for asked, seconds in list(self._answers) if start <= asked <= end]
        if not inside:
            raise SystemExit("the probe got no answer in the window")
        return max(inside) * 1000

    def stop(self) -> None:
        assert self._process.stdin is not None
        self._process.stdin.close()
        self._process.wait(30)
        self._reader.join(5)


# --- loads -----------------------------------------------------------------------------


def send(port: int, raw: bytes) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=WAIT) as client:
        client.sendmail("big@example.org", ["support@example.com"], raw)


def settled(database: Path, count: int) -> bool:
    """`count` messages routed, each alert written."""
    with sqlite3.connect(database, timeout=30) as conn:
        routed = conn.execute("SELECT count(*) FROM messages WHERE state = 'routed'").fetchone()[0]
        owed = conn.execute(
            "SELECT count(*) FROM outbox WHERE kind = 'alert' AND state = 'pending'"
        ).fetchone()[0]
    return bool(routed >= count and owed == 0)


def until_settled(database: Path, count: int, process: subprocess.Popen[bytes]) -> float:
    deadline = time.monotonic() + WAIT
    while not settled(database, count):
        if process.poll() is not None:
            raise SystemExit(f"the gateway exited: {process.returncode}")
        if time.monotonic() > deadline:
            raise SystemExit(f"{count} messages not routed and alerted in {WAIT:.0f} s")
        time.sleep(0.05)
    return time.monotonic()


def fill(server: Dovecot, folder: str, tag: str, count: int, size: int) -> None:
    """Deliver into the folder's maildir directly: Dovecot sees them by inotify."""
    server.deliver(USER, folder, (big(f"{tag}-{n}", size) for n in range(count)))


def one_round(server: Dovecot, n: int) -> dict[str, float]:
    work = Path(tempfile.mkdtemp(prefix="bench-stall-"))
    port = free_port()
    folder = f"Big{n}"  # a folder a round: the next round's daemon must find it empty
    server.create(USER, folder)
    imap = mailbox(server, work, folder, "all")
    smtp = {
        "listen": [f"127.0.0.1:{port}"],
        "max_message_size": LIMIT,
        "max_connections_per_client": 0,
        "max_messages_per_minute_per_client": 0,
    }
    config = gateway_config(
        work, port, smtp=smtp, inboxes=[{"address": "support@example.com", "imap": imap}]
    )
    database = work / "gateway.db"
    with (work / "gateway.log").open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "gateway", "run", "--config", str(config)],
            cwd=ROOT,
            stderr=log,
        )
    figures: dict[str, float] = {}
    try:
        wait_port(port, process)
        time.sleep(2)  # the mailbox connected, the parser process up
        watch = Probe(port)
        try:
            started = time.monotonic()
            time.sleep(5)
            idle_end = time.monotonic()

            send(port, big(f"one-{n}", 25 * MB))
            one_end = until_settled(database, 1, process)

            group_start = time.monotonic()
            senders = [
                threading.Thread(target=send, args=(port, big(f"group-{n}-{i}", 25 * MB // 10)))
                for i in range(10)
            ]
            for sender in senders:
                sender.start()
            for sender in senders:
                sender.join()
            group_end = until_settled(database, 11, process)

            imap_start = time.monotonic()
            fill(server, folder, f"imap{n}", 20, 10 * MB)
            imap_end = until_settled(database, 31, process)

            figures = {
                "idle": watch.worst_ms(started, idle_end),
                "one 25 MB (SMTP)": watch.worst_ms(idle_end, one_end),
                "10 x 2.5 MB (SMTP)": watch.worst_ms(group_start, group_end),
                "20 x 10 MB (IMAP)": watch.worst_ms(imap_start, imap_end),
                "IMAP load s": imap_end - imap_start,
            }
        finally:
            watch.stop()
    finally:
        process.terminate()
        process.wait(60)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--probe", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.probe:
        probe(args.probe)
        return
    server = start_dovecot()
    try:
        rows = []
        for n in range(args.rounds):
            figures = one_round(server, n)
            rows.append(figures)
            print(f"round {n + 1}: " + ", ".join(f"{k} {v:.0f}" for k, v in figures.items()))
    finally:
        stop_dovecot(server)
    print("\n| load | longest loop stall, ms (each round) |\n| --- | --- |")
    for key in rows[0]:
        if key.endswith(" s"):
            continue
        print(f"| {key} | {' / '.join(f'{row[key]:.0f}' for row in rows)} |")


if __name__ == "__main__":
    main()
