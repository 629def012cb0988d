"""Alerts: how fast the outbox delivers a backlog, against a bare client on the same sink.

    .venv/bin/python -m bench.alerts [--alerts 400] [--rounds 2]

A backlog of N alerts is made the way an outage makes one: the gateway takes N
messages while its smarthost is down, every alert fails once, the gateway is
stopped and the alerts are made due. Then a real aiosmtpd smarthost starts and
the gateway with it; the figure is alerts per second from the first `notified`
to the last. The baseline, in the same run and alternating with it: a bare
aiosmtplib client sending the same number of messages of the same size to the
same smarthost over one session (delivery alone: no render, no store).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import smtplib
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import aiosmtplib
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import Envelope

from bench.processes import ROOT, free_port, gateway_config, wait_port

MESSAGE = (
    b"From: Customer <c@example.org>\r\nTo: support@example.com\r\nSubject: Where is my order\r\n"
    b"Message-ID: <%d@bench.test>\r\n\r\n" + b"The order has not arrived yet.\r\n" * 60
)


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


def _query(database: Path, sql: str) -> object:
    with sqlite3.connect(database, timeout=30) as conn:
        return conn.execute(sql).fetchone()[0]


def gateway_backlog(alerts: int, folder: Path) -> tuple[float, int]:
    """(alerts/s first to last, size of an alert) for a backlog of `alerts`."""
    port, smarthost_port = free_port(), free_port()
    config = gateway_config(
        folder,
        port,
        notify={
            "backend": "smtp",
            "smtp_host": "127.0.0.1",
            "smtp_port": smarthost_port,
            "from": "gateway@bench.test",
            "max_alerts_per_sender_per_hour": 0,
        },
    )
    database = folder / "gateway.db"
    command = [sys.executable, "-m", "gateway", "run", "--config", str(config)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}

    def start() -> subprocess.Popen[bytes]:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stderr=subprocess.DEVNULL)
        wait_port(port, process)
        return process

    daemon = start()
    with smtplib.SMTP("127.0.0.1", port) as client:
        for n in range(alerts):
            client.sendmail("c@example.org", ["support@example.com"], MESSAGE % n)
    while _query(database, "SELECT count(*) FROM outbox WHERE attempts >= 1") != alerts:
        time.sleep(0.05)
    daemon.send_signal(signal.SIGTERM)
    daemon.wait(60)
    with sqlite3.connect(database) as conn:
        conn.execute("UPDATE outbox SET due_at = '2000-01-01T00:00:00.000000+00:00'")
    with Smarthost(smarthost_port) as smarthost:
        daemon = start()
        try:
            notified = "SELECT count(*) FROM events WHERE kind = 'notified'"
            while _query(database, notified) != alerts:
                time.sleep(0.05)
            first = str(_query(database, "SELECT min(at) FROM events WHERE kind = 'notified'"))
            last = str(_query(database, "SELECT max(at) FROM events WHERE kind = 'notified'"))
        finally:
            daemon.send_signal(signal.SIGTERM)
            daemon.wait(60)
    seconds = (datetime.fromisoformat(last) - datetime.fromisoformat(first)).total_seconds()
    return (alerts - 1) / seconds, smarthost.size


def bare(alerts: int, size: int) -> float:
    """A bare aiosmtplib client: `alerts` messages of `size` octets over one session."""
    body = b"x" * 76 + b"\r\n"
    body *= max(size - 200, 0) // len(body)
    message = b"From: gateway@bench.test\r\nTo: a@agents.test\r\nSubject: alert\r\n\r\n" + body

    async def send(port: int) -> float:
        async with aiosmtplib.SMTP(hostname="127.0.0.1", port=port) as client:
            started = time.perf_counter()
            for _ in range(alerts - 1):
                await client.sendmail("gateway@bench.test", ["a@agents.test"], message)
            return (alerts - 1) / (time.perf_counter() - started)

    with Smarthost() as smarthost:
        return asyncio.run(send(smarthost.port))


def measure(alerts: int = 400, rounds: int = 2) -> str:
    gateway_rates, bare_rates = [], []
    size = 0
    for round_ in range(rounds):
        with tempfile.TemporaryDirectory(prefix="bench-alerts-") as folder:
            rate, size = gateway_backlog(alerts, Path(folder))
        gateway_rates.append(rate)
        bare_rates.append(bare(alerts, size))
        print(
            f"round {round_ + 1}/{rounds}: gateway {rate:.0f} alerts/s,"
            f" bare {bare_rates[-1]:.0f} msg/s",
            flush=True,
        )
    gateway_rate, bare_rate = statistics.median(gateway_rates), statistics.median(bare_rates)
    return (
        "| backlog | bare aiosmtplib, one session | gateway outbox | x bare |\n"
        "| --- | --- | --- | --- |\n"
        f"| {alerts} alerts of {size / 1000:.1f} KB to a local aiosmtpd smarthost "
        f"| {bare_rate:.0f} msg/s | {gateway_rate:.0f} alerts/s | {gateway_rate / bare_rate:.2f} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.alerts", description=__doc__)
    parser.add_argument("--alerts", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    print(measure(args.alerts, args.rounds))


if __name__ == "__main__":
    main()
