"""Alerts: how fast the outbox delivers a backlog, against a bare client on the same sink.

    .venv/bin/python -m bench.alerts [--alerts 400] [--rounds 2]

A backlog of N alerts is made the way an outage makes one: the gateway takes N
messages (over a few sessions at once) while its smarthost is down, queues an
alert for each and attempts what it will, then it is stopped and the alerts are
made due. Then a real aiosmtpd smarthost starts and
the gateway with it; the figure is alerts per second from the first `notified`
to the last. The baseline, in the same run and alternating with it: a bare
aiosmtplib client sending the same number of messages of the same size to the
same smarthost (delivery alone: no render, no store), over one session and over
as many at once as the outbox uses for a backlog.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import aiosmtplib
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import Envelope

from bench.processes import ROOT, free_port, gateway_config, wait_port
from gateway.notify.worker import SESSIONS

BACKLOG_CONNECTIONS = 8  # the backlog is taken as fast as these sessions give it
LONG_AGO = "2000-01-01T00:00:00.000000+00:00"  # the store's timestamps, so due at once
BODY = b"The order has not arrived yet.\r\n" * 60


def mail(tag: str, n: int) -> tuple[str, bytes]:
    """Message `n` of a bench run: (envelope sender, message). A sender and subject of its
    own, so that it starts a conversation of its own and owes an alert; its Message-ID,
    `<tag-n@soak.test>`, names it in the alert, which attaches it."""
    sender = f"c{n}@{tag}.example.org"
    head = (
        f"From: Customer {n} <{sender}>\r\nTo: support@example.com\r\n"
        f"Subject: Where is order {tag} {n}\r\nMessage-ID: <{tag}-{n}@soak.test>\r\n\r\n"
    )
    return sender, head.encode() + BODY


class Smarthost:
    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.received = 0
        self.size = 0
        self._controller = Controller(self, hostname="127.0.0.1", port=self.port)

    async def handle_DATA(self, server: object, session: object, envelope: Envelope) -> str:
        self.received += 1
        self.size = len(envelope.original_content or b"")
        return "250 OK"

    def __enter__(self) -> Smarthost:
        self._controller.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._controller.stop()


def query(database: Path, sql: str, *args: object) -> Any:
    """The first column of the first row."""
    with sqlite3.connect(database, timeout=30) as conn:
        return conn.execute(sql, args).fetchone()[0]


class SmtpGateway:
    """The daemon as production runs it (`python -m gateway run`, a process of its own),
    its alerts over SMTP to a smarthost on `smarthost_port`; the per-sender alert limit
    is off, since a bench's mail would meet it."""

    def __init__(self, folder: Path) -> None:
        self.port, self.smarthost_port = free_port(), free_port()
        self.database = folder / "gateway.db"
        self._config = gateway_config(
            folder,
            self.port,
            notify={
                "backend": "smtp",
                "smtp_host": "127.0.0.1",
                "smtp_port": self.smarthost_port,
                "from": "gateway@bench.test",
                "max_alerts_per_sender_per_hour": 0,
            },
        )

    @contextlib.contextmanager
    def running(self) -> Iterator[subprocess.Popen[bytes]]:
        """The daemon, listening; stopped as an operator would (SIGTERM) on the way out."""
        command = [sys.executable, "-m", "gateway", "run", "--config", str(self._config)]
        env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
        process = subprocess.Popen(command, cwd=ROOT, env=env, stderr=subprocess.DEVNULL)
        try:
            wait_port(self.port, process)
            yield process
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


async def send_all(port: int, messages: list[tuple[str, bytes]], connections: int) -> None:
    """Every message, as fast as `connections` sessions take them."""
    queue = iter(messages)  # shared: each session takes the next one not yet sent

    async def session() -> None:
        async with aiosmtplib.SMTP(hostname="127.0.0.1", port=port, timeout=60) as client:
            for sender, raw in queue:
                await client.sendmail(sender, ["support@example.com"], raw)

    await asyncio.gather(*(session() for _ in range(connections)))


def make_backlog(
    gateway: SmtpGateway, alerts: int, tag: str = "backlog", timeout: float = 900
) -> None:
    """A backlog of `alerts` due alerts, made the way an outage makes one: the gateway
    takes `alerts` messages (`mail(tag, n)`) while nothing listens on its smarthost's
    port, routes them, queues an alert for each and attempts what it will meanwhile;
    then it is stopped and every alert made due. The daemon is left stopped."""
    queued = "SELECT count(*) FROM outbox WHERE kind = 'alert'"
    with gateway.running():
        messages = [mail(tag, n) for n in range(alerts)]
        asyncio.run(send_all(gateway.port, messages, BACKLOG_CONNECTIONS))
        deadline = time.monotonic() + timeout
        while query(gateway.database, queued) != alerts:
            if time.monotonic() > deadline:
                raise SystemExit(f"the backlog was not queued within {timeout:g} s")
            time.sleep(0.1)
    with sqlite3.connect(gateway.database) as conn:
        conn.execute("UPDATE outbox SET due_at = ? WHERE state = 'pending'", (LONG_AGO,))


def gateway_backlog(alerts: int, folder: Path) -> tuple[float, int]:
    """(alerts/s first to last, size of an alert) for a backlog of `alerts`."""
    gateway = SmtpGateway(folder)
    make_backlog(gateway, alerts)
    notified = "SELECT count(*) FROM events WHERE kind = 'notified'"
    with Smarthost(gateway.smarthost_port) as smarthost, gateway.running():
        while query(gateway.database, notified) != alerts:
            time.sleep(0.05)
        first = query(gateway.database, "SELECT min(at) FROM events WHERE kind = 'notified'")
        last = query(gateway.database, "SELECT max(at) FROM events WHERE kind = 'notified'")
    seconds = (datetime.fromisoformat(last) - datetime.fromisoformat(first)).total_seconds()
    return (alerts - 1) / seconds, smarthost.size


def bare(alerts: int, size: int, sessions: int) -> float:
    """A bare aiosmtplib client: `alerts` messages of `size` octets over `sessions` at once."""
    body = b"x" * 76 + b"\r\n"
    body *= max(size - 200, 0) // len(body)
    message = b"From: gateway@bench.test\r\nTo: a@agents.test\r\nSubject: alert\r\n\r\n" + body

    async def session(port: int, count: int) -> None:
        async with aiosmtplib.SMTP(hostname="127.0.0.1", port=port) as client:
            for _ in range(count):
                await client.sendmail("gateway@bench.test", ["a@agents.test"], message)

    async def send(port: int) -> float:
        started = time.perf_counter()
        await asyncio.gather(*(session(port, alerts // sessions) for _ in range(sessions)))
        return alerts // sessions * sessions / (time.perf_counter() - started)

    with Smarthost() as smarthost:
        return asyncio.run(send(smarthost.port))


def measure(alerts: int = 400, rounds: int = 2) -> str:
    """The outbox sends a backlog over up to SESSIONS sessions at once: the bare client is
    measured over one session and over as many as the outbox uses."""
    gateway_rates: list[float] = []
    bare_rates: dict[int, list[float]] = {1: [], SESSIONS: []}
    size = 0
    for round_ in range(rounds):
        with tempfile.TemporaryDirectory(prefix="bench-alerts-") as folder:
            rate, size = gateway_backlog(alerts, Path(folder))
        gateway_rates.append(rate)
        for sessions, rates in bare_rates.items():
            rates.append(bare(alerts, size, sessions))
        print(
            f"round {round_ + 1}/{rounds}: gateway {rate:.0f} alerts/s, bare "
            + ", ".join(f"{r[-1]:.0f} msg/s over {n}" for n, r in bare_rates.items()),
            flush=True,
        )
    gateway_rate = statistics.median(gateway_rates)
    one, several = (statistics.median(rates) for rates in bare_rates.values())
    return (
        f"| backlog | bare aiosmtplib, one session | bare, {SESSIONS} sessions "
        f"| gateway outbox (up to {SESSIONS} sessions) | x bare, one | x bare, {SESSIONS} |\n"
        "| --- | --- | --- | --- | --- | --- |\n"
        f"| {alerts} alerts of {size / 1000:.1f} KB to a local aiosmtpd smarthost "
        f"| {one:.0f} msg/s | {several:.0f} msg/s | {gateway_rate:.0f} alerts/s "
        f"| {gateway_rate / one:.2f} | {gateway_rate / several:.2f} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.alerts", description=__doc__)
    parser.add_argument("--alerts", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    print(measure(args.alerts, args.rounds))


if __name__ == "__main__":
    main()
