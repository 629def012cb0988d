"""Several gateway processes on one PostgreSQL store (issue 16, DESIGN §15): accept,
routing and what a message costs, against one process on SQLite.

    .venv/bin/python -m bench.postgres [--messages 4000] [--rounds 2] [--connections 32]

One private PostgreSQL cluster with PostgreSQL's durable defaults, on disk
(tests/postgres.py: every commit flushed), a fresh database per run. A run starts
N `gateway run` processes on one configuration: they share its store and its SMTP
port (SO_REUSEPORT: the kernel spreads the client's connections over them), as
systemd's gateway@.service runs them. bench.pipeline's client sends each setup the
same number of messages; the setups alternate within a round, so the machine's
noise falls on all, and one process on SQLite is the baseline.

Per run, read from the store: accept, the messages answered 250 over the client's
time; routed, from the first message's arrival to the last assignment. By the
kernel's clocks (/proc/PID/stat), from the load's start until every message is
routed and its alert written: the CPU of the gateway processes (each with its
worker processes) and of PostgreSQL's server processes (the postmaster and all it
started, the bench's own connection left out), per message. And the store's write
lock, the advisory lock every write transaction but accept's holds to its commit (the store's
docstring): the share of that time some transaction held it and how many writers
waited for it, sampled from pg_locks every 20 ms. Time under that lock is the part
of a message's work no number of processes or cores runs side by side; the WAL's
flushes to disk (pg_stat_wal, with track_wal_io_timing on) are a part of it.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Collection, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from bench import pipeline
from bench.processes import ROOT, free_port, gateway_config
from gateway.store.postgres import WRITE_LOCK
from tests.postgres import NOT_INSTALLED, Postgres, available, running_postgres
from tests.store import StoreReader

MESSAGES = 4000
CONNECTIONS = 32
ROUNDS = 3
CLIENT_SECONDS = 600.0  # the client's own limit: a run ends at its message count long before
SAMPLE_SECONDS = 0.02
START_SECONDS = 60.0

SQLITE, POSTGRESQL = "SQLite", "PostgreSQL"
# bench.__main__'s gateway: a rule no message matches, the rest round robin over three.
RULES = [{"name": "ACME", "sender_domain": ["acme.com"], "assign_to": "agent:a"}]

SETTLED = (
    "SELECT (SELECT count(*) FROM messages WHERE state = 'pending')"
    " + (SELECT count(*) FROM outbox WHERE state = 'pending' AND attempts = 0)"
)
TIMES = (
    "SELECT (SELECT min(received_at) FROM messages),"
    " (SELECT max(at) FROM events WHERE kind = 'assigned'),"
    " (SELECT count(*) FROM messages WHERE state = 'routed')"
)
WAL = "SELECT wal_sync, wal_sync_time / 1000 FROM pg_stat_wal"  # flushes, seconds flushing
# The write lock's holder and waiters in this database (a bigint key is two halves there).
_KEY = WRITE_LOCK % 2**64
WRITERS = (
    "SELECT count(*) FILTER (WHERE granted), count(*) FILTER (WHERE NOT granted) FROM pg_locks"
    " WHERE locktype = 'advisory' AND objsubid = 1"
    f" AND classid = {_KEY >> 32} AND objid = {_KEY & 0xFFFFFFFF}"
    " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
)


@dataclass(frozen=True)
class Setup:
    store: str
    processes: int

    def __str__(self) -> str:
        return f"{self.store}, {self.processes} process{'es' if self.processes > 1 else ''}"


SETUPS = (Setup(SQLITE, 1), Setup(POSTGRESQL, 1), Setup(POSTGRESQL, 2), Setup(POSTGRESQL, 3))


@dataclass
class Lock:
    """The write lock and the WAL over a run, on PostgreSQL."""

    held: float  # the share of samples some transaction held the lock in
    waiting: float  # writers waiting for it, on average over the samples
    flushes: int  # the WAL's flushes to disk
    flushing: float  # seconds they took


@dataclass
class Sample:
    setup: Setup
    load: pipeline.Run
    routed: int
    routed_seconds: float  # the first message's arrival to the last assignment
    window: float  # the load's start until every message was routed and its alert written
    gateway_cpu: float
    postgres_cpu: float
    lock: Lock | None

    def figures(self) -> dict[str, float]:
        """The run's figures by name: rates in msg/s, times in ms per message."""
        per = 1000 / self.load.sent
        found = {
            "accept": self.load.rate,
            "routed": self.routed / self.routed_seconds,
            "gateways": self.gateway_cpu * per,
            "postgresql": self.postgres_cpu * per,
            "client": self.load.cpu * per,
        }
        if self.lock is not None:
            found |= {
                "held": self.lock.held,
                "held ms": self.lock.held * self.window * per,
                "waiting": self.lock.waiting,
                "flushes": self.lock.flushes / self.load.sent,
                "flush ms": self.lock.flushing * per,
            }
        return found


# ---- CPU by the kernel's clocks ---------------------------------------------------------


def _processes() -> dict[int, tuple[int, float]]:
    """Every process now: its parent, and the CPU seconds it used with the children it
    waited for (a PostgreSQL backend that ended is counted so, by the postmaster)."""
    tick = os.sysconf("SC_CLK_TCK")
    found = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # gone meanwhile
        # utime, stime, cutime, cstime
        found[int(stat.parent.name)] = (int(fields[1]), sum(map(int, fields[11:15])) / tick)
    return found


def tree_cpu(roots: Iterable[int], leave_out: Collection[int] = ()) -> float:
    """The CPU seconds the processes `roots` and all they started have used so far, but
    for those in `leave_out`."""
    table = _processes()
    below: dict[int, list[int]] = defaultdict(list)
    for pid, (parent, _) in table.items():
        below[parent].append(pid)
    total = 0.0
    todo = list(roots)
    while todo:
        pid = todo.pop()
        if pid in table and pid not in leave_out:
            total += table[pid][1]
        todo += below[pid]
    return total


# ---- the run ----------------------------------------------------------------------------


@contextlib.contextmanager
def gateways(config: Path, count: int, folder: Path) -> Iterator[list[int]]:
    """`count` `gateway run` processes on `config`, their pids once each is ready (has
    said READY=1 on the notify socket, as to systemd); stopped at the end."""
    address = folder / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(address))
        sock.settimeout(1)
        environment = {**os.environ, "NOTIFY_SOCKET": str(address)}
        processes = [
            subprocess.Popen(
                [sys.executable, "-m", "gateway", "run", "--config", str(config)],
                cwd=ROOT,
                stderr=subprocess.DEVNULL,
                env=environment,
            )
            for _ in range(count)
        ]
        try:
            ready, deadline = 0, time.monotonic() + START_SECONDS
            while ready < count:
                if any(process.poll() is not None for process in processes):
                    raise SystemExit("a gateway process exited while starting")
                if time.monotonic() > deadline:
                    raise SystemExit("the gateway processes did not all start")
                with contextlib.suppress(TimeoutError):
                    ready += b"READY=1" in sock.recv(4096).split(b"\n")
            yield [process.pid for process in processes]
        finally:
            for process in processes:
                process.terminate()
            for process in processes:
                process.wait(30)


class LockWatch(threading.Thread):
    """Who holds and who waits for the store's write lock, every SAMPLE_SECONDS, and the
    WAL's flushes, from its start until stopped."""

    def __init__(self, store: StoreReader) -> None:
        super().__init__(daemon=True)
        self.store = store
        self.samples: list[tuple[int, int]] = []
        self._stopping = threading.Event()
        self._wal = store.query(WAL)[0]

    def run(self) -> None:
        while not self._stopping.wait(SAMPLE_SECONDS):
            held, waiting = self.store.query(WRITERS)[0]
            self.samples.append((int(held), int(waiting)))

    def stop(self) -> Lock:
        self._stopping.set()
        self.join()
        flushes, flushing = self.store.query(WAL)[0]
        count = max(len(self.samples), 1)
        return Lock(
            held=sum(held for held, _ in self.samples) / count,
            waiting=sum(waiting for _, waiting in self.samples) / count,
            flushes=int(flushes - self._wal[0]),
            flushing=float(flushing - self._wal[1]),
        )


def _wait_settled(store: StoreReader, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while store.query(SETTLED)[0][0] != 0:
        if time.monotonic() > deadline:
            raise SystemExit("intake and the outbox did not finish")
        time.sleep(0.05)


def _postmaster(cluster: Postgres) -> int:
    return int((cluster.data / "postmaster.pid").read_text().split()[0])


def sample(setup: Setup, cluster: Postgres, messages: int, connections: int) -> Sample:
    port = free_port()
    on_postgres = setup.store == POSTGRESQL
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        database = cluster.database() if on_postgres else str(folder / "gateway.db")
        server = [_postmaster(cluster)] if on_postgres else []
        try:
            gateway = {"database": database, "hostname": "bench.test"}
            config = gateway_config(folder, port, gateway=gateway, rules=RULES)
            with (
                gateways(config, setup.processes, folder) as pids,
                contextlib.closing(StoreReader(database)) as store,
            ):
                own = {store.query("SELECT pg_backend_pid()")[0][0]} if on_postgres else set()
                cpu = tree_cpu(pids), tree_cpu(server, own)
                watch = LockWatch(store) if on_postgres else None
                if watch is not None:
                    watch.start()
                started = time.monotonic()
                load = pipeline.run(port, connections, CLIENT_SECONDS, messages=messages)
                _wait_settled(store)
                window = time.monotonic() - started
                gateway_cpu, postgres_cpu = tree_cpu(pids) - cpu[0], tree_cpu(server, own) - cpu[1]
                lock = watch.stop() if watch is not None else None
                if lock is not None and lock.held == 0:  # the figures would be a silent 0
                    raise SystemExit("no sample saw the write lock held: has its key changed?")
                first, last, routed = store.query(TIMES)[0]
        finally:
            if on_postgres:
                cluster.drop(database)
    routed_seconds = (datetime.fromisoformat(last) - datetime.fromisoformat(first)).total_seconds()
    return Sample(setup, load, int(routed), routed_seconds, window, gateway_cpu, postgres_cpu, lock)


def _lock(figures: dict[str, float]) -> str:
    """The write lock's and the WAL's figures: two cells."""
    if "held" not in figures:
        return "— | —"
    return (
        f"{figures['held']:.0%} / {figures['held ms']:.2f} / {figures['waiting']:.2f}"
        f" | {figures['flushes']:.2f} / {figures['flush ms']:.2f}"
    )


def _cpu(figures: dict[str, float]) -> str:
    return " / ".join(f"{figures[name]:.2f}" for name in ("gateways", "postgresql", "client"))


def run(cluster: Postgres, messages: int, rounds: int, connections: int) -> list[Sample]:
    samples = []
    for round_ in range(rounds):
        for setup in SETUPS:
            found = sample(setup, cluster, messages, connections)
            samples.append(found)
            figures = found.figures()
            print(
                f"round {round_ + 1}/{rounds} {setup!s:26} "
                f"{pipeline.describe(found.load.rate, found.load.latencies, found.load.failures)}"
                f"  routed {found.routed} at {figures['routed']:.0f} msg/s"
                f"  CPU ms/msg {_cpu(figures)}  write lock | WAL: {_lock(figures)}",
                flush=True,
            )
    return samples


def report(samples: list[Sample], messages: int, connections: int) -> str:
    medians: dict[Setup, dict[str, float]] = {}
    for setup in SETUPS:
        each = [sample.figures() for sample in samples if sample.setup == setup]
        medians[setup] = {name: statistics.median(run[name] for run in each) for name in each[0]}
    baseline = medians[SETUPS[0]]
    lines = [
        "| store, gateway processes | accept msg/s | x SQLite | accept p50 / p99 ms "
        "| routed msg/s, first to last | x SQLite "
        "| CPU ms per message: gateways / PostgreSQL / client "
        "| write lock: held, share of the time / ms per message / writers waiting "
        "| WAL: flushes / ms flushing, per message |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for setup, figures in medians.items():
        runs = [sample for sample in samples if sample.setup == setup]
        latencies = [x for sample in runs for x in sample.load.latencies]
        refused = sum(sum(sample.load.failures.values()) for sample in runs)
        lines.append(
            f"| {setup} | {figures['accept']:.0f} | {figures['accept'] / baseline['accept']:.2f} "
            f"| {pipeline.percentile(latencies, 0.5):.2f} / "
            f"{pipeline.percentile(latencies, 0.99):.2f}"
            f"{f' ({refused} not accepted)' if refused else ''} "
            f"| {figures['routed']:.0f} | {figures['routed'] / baseline['routed']:.2f} "
            f"| {_cpu(figures)} | {_lock(figures)} |"
        )
    rounds = len(samples) // len(SETUPS)
    lines.append(
        f"\n{messages:,} messages a run over {connections} pipelining connections, the"
        f" setups alternating, {rounds} round{'s' if rounds > 1 else ''}; medians. CPU from the"
        " load's start until every message was routed and its alert written (the client's"
        " while it sent); the write lock sampled every"
        f" {SAMPLE_SECONDS * 1000:.0f} ms, its ms per message that share of the same time."
    )
    return "\n".join(lines)


def measure(messages: int = MESSAGES, rounds: int = ROUNDS, connections: int = CONNECTIONS) -> str:
    if not available():
        return NOT_INSTALLED
    with running_postgres(durable=True) as cluster:
        cluster.psql("ALTER SYSTEM SET track_wal_io_timing = on")
        cluster.psql("SELECT pg_reload_conf()")
        samples = run(cluster, messages, rounds, connections)
    return report(samples, messages, connections)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.postgres", description=__doc__)
    parser.add_argument("--messages", type=int, default=MESSAGES, help="sent in each run")
    parser.add_argument("--rounds", type=int, default=ROUNDS, help="alternating rounds")
    parser.add_argument("--connections", type=int, default=CONNECTIONS)
    args = parser.parse_args()
    print(measure(args.messages, args.rounds, args.connections))


if __name__ == "__main__":
    main()
