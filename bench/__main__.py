"""SMTP accept: the gateway against a bare aiosmtpd server, same client, alternating.

    .venv/bin/python -m bench [--seconds 3] [--rounds 2] [--write]

Each server runs in its own process; the client (aiosmtplib, N connections)
runs here. Latency is end of DATA → reply. Rounds alternate bare/gateway so
the shared machine's noise falls on both; the ratio is the figure. After each
gateway round, the time until intake has routed every accepted message is
measured too (the backlog a burst leaves behind).
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
import tomli_w

ROOT = Path(__file__).resolve().parent.parent
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


def wait_port(port: int, process: subprocess.Popen[bytes]) -> None:
    import socket

    for _ in range(300):
        if process.poll() is not None:
            raise SystemExit(f"the server exited: {process.returncode}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise SystemExit(f"nothing listens on {port}")


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_bare(port: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "bench.bare", str(port)], cwd=ROOT)


def start_gateway(port: int, folder: Path, loop: str = "asyncio") -> subprocess.Popen[bytes]:
    config = {
        "gateway": {"database": "gateway.db", "hostname": "bench.test"},
        "smtp": {"listen": [f"127.0.0.1:{port}"]},
        "notify": {"backend": "file", "file_dir": "alerts"},
        "round_robin": {"enabled": True, "agents": ["a", "b", "c"]},
        "agents": [{"id": x, "email": f"{x}@agents.test"} for x in "abc"],
        "inboxes": [{"address": "support@example.com"}],
        "rules": [{"name": "ACME", "sender_domain": ["acme.com"], "assign_to": "agent:a"}],
    }
    path = folder / "gateway.toml"
    path.write_text(tomli_w.dumps(config))
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


# uvloop is measured where it is installed (`pip install uvloop`); the gateway runs on asyncio.
TARGETS = ("bare", "gateway") + (("gateway+uvloop",) if find_spec("uvloop") else ())


def measure(target: str, connections: int, seconds: float) -> tuple[Result, float | None]:
    """One run against a fresh server: the client's result, and for the gateway how
    long intake still needed after the client stopped."""
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        if target == "bare":
            process = start_bare(port)
        else:
            loop = "uvloop" if target.endswith("uvloop") else "asyncio"
            process = start_gateway(port, Path(tmp), loop)
        try:
            wait_port(port, process)
            result = asyncio.run(load(port, connections, seconds, target))
            after = None if target == "bare" else routed_after(Path(tmp) / "gateway.db")
        finally:
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
    parser.add_argument("--write", action="store_true", help="write BENCHMARKS.md")
    args = parser.parse_args()
    results, backlog = run(args.seconds, args.rounds)
    table = report(results, backlog)
    print()
    print(table)
    long_burst = burst(args.burst, "asyncio")
    print(long_burst)
    if args.write:
        machine = (
            f"{platform.machine()}, {os.cpu_count()} cores, {platform.system()} "
            f"{platform.release()}, Python {platform.python_version()}, "
            f"aiosmtpd {version('aiosmtpd')}, aiosqlite {version('aiosqlite')}"
        )
        (ROOT / "BENCHMARKS.md").write_text(
            TEMPLATE.format(
                date=datetime.now(UTC).strftime("%Y-%m-%d"),
                machine=machine,
                table=table,
                seconds=args.seconds,
                rounds=args.rounds,
            )
        )


TEMPLATE = """# Benchmarks

Latest run: {date}, on {machine}.
Command: `.venv/bin/python -m bench --seconds {seconds:g} --rounds {rounds} --write`.

## SMTP accept: the gateway against a bare aiosmtpd server

Same client (aiosmtplib in one process, N connections, ~2 KB messages), each
server in its own process, rounds alternating bare/gateway; rates are the median
of the rounds, latencies (end of DATA → reply) pooled. The bare server's
`handle_DATA` only answers 250; the gateway commits each message to SQLite (WAL,
`synchronous=FULL`, one fsync'd commit per message) before its 250, and runs
intake in the same process and loop. "Routed after the burst" is how long intake
still needed, once the client stopped, until every accepted message was routed.

{table}

The ratio is the figure: absolute rates move with the machine's load.
"""


if __name__ == "__main__":
    main()
