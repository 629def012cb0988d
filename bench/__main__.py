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


def start_gateway(port: int, folder: Path) -> subprocess.Popen[bytes]:
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
    return subprocess.Popen(
        [sys.executable, "-m", "gateway", "run", "--config", str(path)],
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


def run(seconds: float, rounds: int) -> tuple[list[Result], list[tuple[int, float]]]:
    results: list[Result] = []
    backlog: list[tuple[int, float]] = []
    for round_ in range(rounds):
        for connections in CONNECTIONS:
            for target in ("bare", "gateway"):
                port = free_port()
                with tempfile.TemporaryDirectory() as tmp:
                    process = (
                        start_bare(port) if target == "bare" else start_gateway(port, Path(tmp))
                    )
                    try:
                        wait_port(port, process)
                        result = asyncio.run(load(port, connections, seconds, target))
                        if target == "gateway":
                            backlog.append((connections, routed_after(Path(tmp) / "gateway.db")))
                    finally:
                        process.terminate()
                        process.wait(30)
                results.append(result)
                print(
                    f"round {round_ + 1}/{rounds} {target:8} {connections:2} conn: "
                    f"{result.rate:7.0f} msg/s  p50 {result.percentile(0.5):6.2f} ms  "
                    f"p99 {result.percentile(0.99):6.2f} ms",
                    flush=True,
                )
    return results, backlog


def report(results: list[Result], backlog: list[tuple[int, float]], seconds: float) -> str:
    lines = [
        "| connections | bare aiosmtpd msg/s | gateway msg/s | ratio | bare p50 / p99 ms "
        "| gateway p50 / p99 ms | routed after the burst |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for connections in CONNECTIONS:

        def of(target: str, c: int = connections) -> list[Result]:
            return [r for r in results if r.target == target and r.connections == c]

        bare, gw = of("bare"), of("gateway")
        bare_rate = statistics.median(r.rate for r in bare)
        gw_rate = statistics.median(r.rate for r in gw)

        def pct(rs: list[Result]) -> str:
            joined = Result("", 0, 0, 1, [x for r in rs for x in r.latencies])
            return f"{joined.percentile(0.5):.2f} / {joined.percentile(0.99):.2f}"

        after = max(s for c, s in backlog if c == connections)
        lines.append(
            f"| {connections} | {bare_rate:.0f} | {gw_rate:.0f} | {gw_rate / bare_rate:.2f} "
            f"| {pct(bare)} | {pct(gw)} | {after:.2f} s |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--seconds", type=float, default=3.0, help="length of each run")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds")
    parser.add_argument("--write", action="store_true", help="write BENCHMARKS.md")
    args = parser.parse_args()
    results, backlog = run(args.seconds, args.rounds)
    table = report(results, backlog, args.seconds)
    print()
    print(table)
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
