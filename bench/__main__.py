"""The gateway's speed, each figure against a baseline measured in the same run.

    .venv/bin/python -m bench [--seconds 3] [--rounds 2] [--burst 30] [--smtp-only] [--write]

SMTP: the gateway against a bare aiosmtpd server (and the gateway on uvloop
where uvloop is installed), same aiosmtplib client, N connections, each server
in its own process, rounds alternating so the shared machine's noise falls on
all; the ratio is the figure. After each gateway run, the time until intake
has routed every accepted message. Then one long burst at 32 connections: the
bare server's rate, the gateway's, how long routing lags after it and the
routed rate from first message to last. Then routing cost (bench.routing),
alert delivery (bench.alerts), IMAP (bench.imap) and the queue views
(bench.views). `--write` puts the
tables into BENCHMARKS.md between its figure markers.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import EmailMessage
from email.policy import SMTP as SMTP_POLICY
from importlib.metadata import version
from importlib.util import find_spec
from pathlib import Path

import aiosmtplib

from bench import alerts, imap, postfix, routing, soak, views
from bench.processes import ROOT, free_port, gateway_config, wait_port

CONNECTIONS = (1, 8, 32)


def message(n: int) -> bytes:
    msg = EmailMessage()
    msg["From"] = f"Customer {n} <c{n}@example.org>"
    msg["To"] = "support@example.com"
    msg["Subject"] = f"Question number {n} about my order"
    msg["Message-ID"] = f"<bench-{os.getpid()}-{time.monotonic_ns()}-{n}@example.org>"
    msg.set_content(("The order has not arrived yet and I would like to know why. " * 30)[:1800])
    return msg.as_bytes(policy=SMTP_POLICY)


@dataclass
class Result:
    target: str
    connections: int
    sent: int
    seconds: float
    latencies: list[float]

    @property
    def rate(self) -> float:
        return self.sent / self.seconds

    def percentile(self, p: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(int(len(ordered) * p), len(ordered) - 1)] * 1000


async def load(port: int, connections: int, seconds: float, target: str) -> Result:
    latencies: list[float] = []
    deadline = time.monotonic() + seconds

    async def one(worker: int) -> None:
        client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, timeout=60)
        await client.connect()
        n = 0
        while time.monotonic() < deadline:
            raw = message(worker * 1_000_000 + n)
            await client.mail("c@example.org")
            await client.rcpt("support@example.com")
            started = time.perf_counter()
            await client.data(raw)
            latencies.append(time.perf_counter() - started)
            n += 1
        await client.quit()

    started = time.monotonic()
    await asyncio.gather(*(one(w) for w in range(connections)))
    return Result(target, connections, len(latencies), time.monotonic() - started, latencies)


def start_bare(port: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "bench.bare", str(port)], cwd=ROOT)


def start_gateway(port: int, folder: Path, loop: str = "asyncio") -> subprocess.Popen[bytes]:
    path = gateway_config(
        folder,
        port,
        rules=[{"name": "ACME", "sender_domain": ["acme.com"], "assign_to": "agent:a"}],
    )
    program = "gateway" if loop == "asyncio" else "bench.uvloop_gateway"
    return subprocess.Popen(
        [sys.executable, "-m", program, "run", "--config", str(path)],
        cwd=ROOT,
        stderr=subprocess.DEVNULL,
    )


def routed_after(database: Path, timeout: float = 120) -> float:
    """Seconds until no accepted message is pending intake."""
    started = time.monotonic()
    with sqlite3.connect(database, timeout=30) as conn:
        while time.monotonic() - started < timeout:
            pending = conn.execute("SELECT count(*) FROM messages WHERE state = 'pending'")
            if pending.fetchone()[0] == 0:
                return time.monotonic() - started
            time.sleep(0.05)
    return float("inf")


# uvloop is measured where it is installed (`pip install uvloop`; the gateway runs on
# asyncio), Postfix where Debian's package is and we are root (`apt-get install postfix`).
TARGETS = (
    ("bare", "gateway")
    + (("gateway+uvloop",) if find_spec("uvloop") else ())
    + (("postfix",) if postfix.available() and os.geteuid() == 0 else ())
)


def measure(target: str, connections: int, seconds: float) -> tuple[Result, float | None]:
    """One run against a fresh server: the client's result, and for the gateway how
    long intake still needed after the client stopped."""
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        if target == "bare":
            process = start_bare(port)
        elif target == "postfix":
            process = postfix.start(port)
        else:
            loop = "uvloop" if target.endswith("uvloop") else "asyncio"
            process = start_gateway(port, Path(tmp), loop)
        try:
            wait_port(port, process)
            result = asyncio.run(load(port, connections, seconds, target))
            gateway = target.startswith("gateway")
            after = routed_after(Path(tmp) / "gateway.db") if gateway else None
        finally:
            if target == "postfix":
                postfix.stop()
            process.terminate()
            process.wait(30)
    return result, after


Backlog = list[tuple[str, int, float]]  # (target, connections, seconds to route after)


def run(seconds: float, rounds: int) -> tuple[list[Result], Backlog]:
    results: list[Result] = []
    backlog: Backlog = []
    for round_ in range(rounds):
        for connections in CONNECTIONS:
            for target in TARGETS:
                result, after = measure(target, connections, seconds)
                if after is not None:
                    backlog.append((target, connections, after))
                results.append(result)
                print(
                    f"round {round_ + 1}/{rounds} {target:8} {connections:2} conn: "
                    f"{result.rate:7.0f} msg/s  p50 {result.percentile(0.5):6.2f} ms  "
                    f"p99 {result.percentile(0.99):6.2f} ms",
                    flush=True,
                )
    return results, backlog


def _median_rate(results: list[Result], target: str, connections: int) -> float:
    return statistics.median(
        r.rate for r in results if r.target == target and r.connections == connections
    )


def _latency(results: list[Result], target: str, connections: int) -> str:
    pooled = [
        x
        for r in results
        if r.target == target and r.connections == connections
        for x in r.latencies
    ]
    joined = Result("", 0, 0, 1, pooled)
    return f"{joined.percentile(0.5):.2f} / {joined.percentile(0.99):.2f}"


def report(results: list[Result], backlog: Backlog) -> str:
    lines = [
        "| connections | server | msg/s | x bare | p50 / p99 ms | routed after the run |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for connections in CONNECTIONS:
        bare = _median_rate(results, "bare", connections)
        for target in TARGETS:
            rate = _median_rate(results, target, connections)
            afters = [a for t, c, a in backlog if t == target and c == connections]
            after = f"{max(afters):.2f} s" if afters else ""
            lines.append(
                f"| {connections} | {target} | {rate:.0f} | {rate / bare:.2f} "
                f"| {_latency(results, target, connections)} | {after} |"
            )
    return "\n".join(lines)


def burst(seconds: float, loop: str) -> str:
    """A long burst at 32 connections: bare, then the gateway; how long routing lags."""
    target = "gateway" if loop == "asyncio" else "gateway+uvloop"
    print(f"burst: {seconds:g} s at 32 connections, bare then {target}", flush=True)
    bare, _ = measure("bare", 32, seconds)
    gateway, after = measure(target, 32, seconds)
    assert after is not None
    routed_rate = gateway.sent / (gateway.seconds + after)
    return (
        "| load | bare accept msg/s | gateway accept msg/s | x bare | gateway p50 / p99 ms "
        "| routed after the burst | routed msg/s, first to last | x bare |\n"
        "| --- | --- | --- | --- | --- | --- | --- | --- |\n"
        f"| {seconds:g} s at 32 connections ({target}) | {bare.rate:.0f} | {gateway.rate:.0f} "
        f"| {gateway.rate / bare.rate:.2f} "
        f"| {gateway.percentile(0.5):.2f} / {gateway.percentile(0.99):.2f} "
        f"| {after:.2f} s | {routed_rate:.0f} | {routed_rate / bare.rate:.2f} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--seconds", type=float, default=3.0, help="length of each run")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds")
    parser.add_argument("--burst", type=float, default=30.0, help="length of the long burst")
    parser.add_argument("--smtp-only", action="store_true", help="skip routing, IMAP, views")
    parser.add_argument("--write", action="store_true", help="write BENCHMARKS.md")
    args = parser.parse_args()
    results, backlog = run(args.seconds, args.rounds)
    sections = {"smtp": report(results, backlog)}
    print(sections["smtp"], flush=True)
    sections["burst"] = burst(args.burst, "asyncio")
    print(sections["burst"], flush=True)
    if not args.smtp_only:
        parts = (
            ("routing", routing),
            ("alerts", alerts),
            ("soak", soak),
            ("imap", imap),
            ("views", views),
        )
        for name, module in parts:
            print(f"{name}...", flush=True)
            sections[name] = module.measure()
            print(sections[name], flush=True)
    if args.write:
        machine = (
            f"{platform.machine()}, {os.cpu_count()} cores, {platform.system()} "
            f"{platform.release()}, Python {platform.python_version()}, "
            f"aiosmtpd {version('aiosmtpd')}, aiosqlite {version('aiosqlite')}, "
            f"SQLite {sqlite3.sqlite_version}"
        )
        figures = (
            f"Latest run: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, on {machine}.\n"
            f"Command: `python -m bench --seconds {args.seconds:g} --rounds {args.rounds}"
            f" --burst {args.burst:g} --write`.\n\n"
            + "\n\n".join(f"### {TITLES[name]}\n\n{table}" for name, table in sections.items())
        )
        path = ROOT / "BENCHMARKS.md"
        before, _, rest = path.read_text().partition(START)
        _, _, after = rest.partition(END)
        path.write_text(f"{before}{START}\n{figures}\n{END}{after}")
        print(f"written to {path.name}")


# BENCHMARKS.md's figures sit between these; the prose around them is written by hand.
START, END = "<!-- figures -->", "<!-- /figures -->"
TITLES = {
    "smtp": "SMTP accept, 1 / 8 / 32 connections",
    "burst": "A long burst: accept, then routing",
    "routing": "Routing cost",
    "alerts": "Alerts: a backlog through the outbox",
    "soak": "Alerts under a steady load, behind a backlog, in an outage",
    "imap": "IMAP",
    "views": "Queue views",
}


if __name__ == "__main__":
    main()
