"""The gateway's speed, each figure against a baseline measured in the same run.

    .venv/bin/python -m bench [--seconds 3] [--rounds 2] [--burst 30] [--smtp-only] [--write]

SMTP: the gateway against a bare aiosmtpd server (and the gateway on uvloop
where uvloop is installed), the same client for both, N connections, each
server in its own process, rounds alternating so the shared machine's noise
falls on all; the ratio is the figure. The client is bench.pipeline's, which
pipelines MAIL, RCPT and DATA (RFC 2920) from a process of its own; aiosmtplib's,
a round trip per command, is the second row (one round). After each gateway
run, the time until intake has routed every accepted message. Then that the
client is not the ceiling: the bare server's rate with the client in two
processes, or with one more connection, does not rise. Then one long burst at
32 connections: the bare server's rate, the gateway's, how long routing lags
after it and the routed rate from first message to last. Then routing cost
(bench.routing), alert delivery (bench.alerts), IMAP (bench.imap), the queue
views (bench.views), the web inbox (bench.web), where the gateway's time goes per message
(bench.profile) and several processes on PostgreSQL (bench.postgres). `--write` puts the
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
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib.metadata import version
from importlib.util import find_spec
from pathlib import Path

import aiosmtplib

from bench import alerts, imap, pipeline, postfix, postgres, profile, routing, soak, views, web
from bench.pipeline import message
from bench.processes import ROOT, free_port, gateway_config, wait_port

CONNECTIONS = (1, 8, 32)
CLIENTS = ("pipelining", "aiosmtplib")


@dataclass
class Result:
    target: str
    connections: int
    sent: int
    seconds: float
    latencies: list[float]
    client: str = "aiosmtplib"
    failures: Counter[str] = field(default_factory=Counter)  # replies other than expected
    cpu: float = 0.0  # the pipelining client's CPU seconds

    @property
    def rate(self) -> float:
        return self.sent / self.seconds

    def percentile(self, p: float) -> float:
        return pipeline.percentile(self.latencies, p)


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


def routed_after(database: Path, timeout: float = 300) -> float:
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


def measure(
    target: str,
    connections: int,
    seconds: float,
    client: str = "pipelining",
    processes: int = 1,
) -> tuple[Result, float | None]:
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
            if client == "aiosmtplib":
                result = asyncio.run(load(port, connections, seconds, target))
            else:
                run = pipeline.run(port, connections, seconds, processes)
                result = Result(
                    target,
                    connections,
                    run.sent,
                    run.seconds,
                    run.latencies,
                    client,
                    run.failures,
                    run.cpu,
                )
            gateway = target.startswith("gateway")
            after = routed_after(Path(tmp) / "gateway.db") if gateway else None
        finally:
            if target == "postfix":
                postfix.stop()
            process.terminate()
            process.wait(30)
    return result, after


Backlog = list[tuple[str, int, str, float]]  # (target, connections, client, s to route after)


def _line(result: Result) -> str:
    return pipeline.describe(result.rate, result.latencies, result.failures)


def run(seconds: float, rounds: int) -> tuple[list[Result], Backlog]:
    results: list[Result] = []
    backlog: Backlog = []
    for round_ in range(rounds):
        # aiosmtplib's row is there to compare with earlier runs: one round of it will do.
        for client in CLIENTS if round_ == 0 else CLIENTS[:1]:
            for connections in CONNECTIONS:
                for target in TARGETS:
                    result, after = measure(target, connections, seconds, client)
                    if after is not None:
                        backlog.append((target, connections, client, after))
                    results.append(result)
                    print(
                        f"round {round_ + 1}/{rounds} {client:10} {target:8} "
                        f"{connections:2} conn: {_line(result)}",
                        flush=True,
                    )
    return results, backlog


def _of(results: list[Result], target: str, connections: int, client: str) -> list[Result]:
    return [
        r
        for r in results
        if r.target == target and r.connections == connections and r.client == client
    ]


def report(results: list[Result], backlog: Backlog) -> str:
    lines = [
        "| connections | client | server | msg/s | x bare | p50 / p99 ms | not accepted "
        "| routed after the run |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for connections in CONNECTIONS:
        for client in CLIENTS:
            bare = statistics.median(r.rate for r in _of(results, "bare", connections, client))
            for target in TARGETS:
                runs = _of(results, target, connections, client)
                rate = statistics.median(r.rate for r in runs)
                pooled = Result("", 0, 0, 1, [x for r in runs for x in r.latencies], client)
                refused = sum(sum(r.failures.values()) for r in runs)
                afters = [a for t, c, k, a in backlog if (t, c, k) == (target, connections, client)]
                after = f"{max(afters):.2f} s" if afters else ""
                lines.append(
                    f"| {connections} | {client} | {target} | {rate:.0f} | {rate / bare:.2f} "
                    f"| {pooled.percentile(0.5):.2f} / {pooled.percentile(0.99):.2f} "
                    f"| {refused} | {after} |"
                )
    lines.append(
        "\nLatency: from the end of the message's data to its 250 (pipelining), from DATA to"
        " the 250 (aiosmtplib). Not accepted: replies other than 250/250/354/250, counted."
    )
    return "\n".join(lines)


# (connections, client processes) against the bare server: the first is the rows' setting.
CEILING = ((32, 1), (32, 2), (33, 1))


def ceiling(seconds: float, rounds: int) -> str:
    """The bare server's rate with more client: if the client were the ceiling, a second
    process (a core of its own) or one more connection would raise it."""
    rates: dict[tuple[int, int], list[float]] = {setting: [] for setting in CEILING}
    busy: dict[tuple[int, int], list[float]] = {setting: [] for setting in CEILING}
    for round_ in range(rounds):
        for connections, processes in CEILING:
            result, _ = measure("bare", connections, seconds, "pipelining", processes)
            rates[connections, processes].append(result.rate)
            busy[connections, processes].append(result.cpu / result.seconds / processes)
            print(
                f"round {round_ + 1}/{rounds} client check, bare {connections} conn "
                f"in {processes} process(es): {_line(result)}",
                flush=True,
            )
    first = statistics.median(rates[CEILING[0]])
    lines = [
        "| pipelining client | bare msg/s | x the first row | client CPU, of a core per process |",
        "| --- | --- | --- | --- |",
    ]
    for connections, processes in CEILING:
        rate = statistics.median(rates[connections, processes])
        lines.append(
            f"| {connections} connections in {processes} process{'es' if processes > 1 else ''} "
            f"| {rate:.0f} | {rate / first:.2f} "
            f"| {statistics.median(busy[connections, processes]):.0%} |"
        )
    return "\n".join(lines)


def burst(seconds: float, loop: str) -> str:
    """A long burst at 32 connections (the pipelining client): bare, then the gateway;
    how long routing lags."""
    target = "gateway" if loop == "asyncio" else "gateway+uvloop"
    print(f"burst: {seconds:g} s at 32 connections, bare then {target}", flush=True)
    bare, _ = measure("bare", 32, seconds)
    gateway, after = measure(target, 32, seconds)
    assert after is not None
    print(f"burst bare: {_line(bare)}\nburst {target}: {_line(gateway)}", flush=True)
    routed_rate = gateway.sent / (gateway.seconds + after)
    return (
        "| load | bare accept msg/s | gateway accept msg/s | x bare | gateway p50 / p99 ms "
        "| routed after the burst | routed msg/s, first to last | x bare |\n"
        "| --- | --- | --- | --- | --- | --- | --- | --- |\n"
        f"| {seconds:g} s at 32 pipelining connections ({target}) "
        f"| {bare.rate:.0f} | {gateway.rate:.0f} "
        f"| {gateway.rate / bare.rate:.2f} "
        f"| {gateway.percentile(0.5):.2f} / {gateway.percentile(0.99):.2f} "
        f"| {after:.2f} s | {routed_rate:.0f} | {routed_rate / bare.rate:.2f} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--seconds", type=float, default=3.0, help="length of each run")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds")
    parser.add_argument("--burst", type=float, default=30.0, help="length of the long burst")
    parser.add_argument("--smtp-only", action="store_true", help="only the SMTP sections")
    parser.add_argument("--write", action="store_true", help="write BENCHMARKS.md")
    args = parser.parse_args()
    results, backlog = run(args.seconds, args.rounds)
    sections = {"smtp": report(results, backlog)}
    print(sections["smtp"], flush=True)
    sections["ceiling"] = ceiling(args.seconds, args.rounds)
    print(sections["ceiling"], flush=True)
    sections["burst"] = burst(args.burst, "asyncio")
    print(sections["burst"], flush=True)
    if not args.smtp_only:
        parts = (
            ("routing", routing),
            ("alerts", alerts),
            ("soak", soak),
            ("imap", imap),
            ("views", views),
            ("web", web),
            ("profile", profile),
            ("postgres", postgres),
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
    "ceiling": "The pipelining client is not the ceiling",
    "burst": "A long burst: accept, then routing",
    "routing": "Routing cost",
    "alerts": "Alerts: a backlog through the outbox",
    "soak": "Alerts under a steady load, behind a backlog, in an outage",
    "imap": "IMAP",
    "views": "Queue views",
    "web": "The web inbox: pages on 1,000,000 conversations, SMTP accept with 50 live streams",
    "profile": "Where the gateway's time goes, per message",
    "postgres": "Several processes on PostgreSQL",
}


if __name__ == "__main__":
    main()
