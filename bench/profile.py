"""Where the gateway's time goes per message, accept's and intake's: a profile under load.

    .venv/bin/python -m bench.profile [--seconds 2] [--connections 32]

The daemon runs twice, each time as `gateway run` does (a wrapper in this
module starts the measure at SIGUSR1 and writes it at SIGUSR2), under
bench.pipeline's load for the given seconds, and is measured from the load's
start until intake has routed every message and the outbox has written every
alert: once plain (its CPU per
message, by thread and for the parser process, from the kernel's clocks), once
under cProfile (the loop's thread; aiosqlite's and the executor's are not
profiled, their CPU is in the first table). The profile's times are the loop
thread's wall time, and cProfile inflates them (the plain run's CPU per message
shows by how much). A stage is the time inside its functions (callees included:
the SQL statements intake runs on the loop count as intake), less the stages
nested in it; the parse runs in a process of its own and is timed apart, on
the same messages, in this process.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import multiprocessing
import os
import pstats
import re
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from bench import pipeline
from bench.processes import ROOT, free_port, gateway_config, wait_port
from gateway.cli import main as gateway_main
from gateway.intake.parsing import extract_each

SECONDS = 2.0  # the outbox takes some ten times as long to write their alerts
CONNECTIONS = 32


@dataclass(frozen=True)
class Stage:
    name: str
    files: tuple[str, ...]  # path parts, e.g. "gateway/routing/"
    functions: frozenset[str] | None = None  # None: every function of the files
    inside: Stage | None = None  # the stage it is nested in, whose figure excludes it

    def holds(self, key: Key) -> bool:
        path = key[0].replace(os.sep, "/")
        return any(part in path for part in self.files) and (
            self.functions is None or key[2] in self.functions
        )


Key = tuple[str, int, str]  # pstats: (file, line, function)

SESSIONS = Stage(
    "accept: SMTP sessions (aiosmtpd's command loop, the relay's hooks, replies)",
    ("aiosmtpd/smtp.py", "gateway/ingress/smtp.py"),
)
INTAKE = Stage(
    "intake: batches (pending read, the transaction's statements, events, logs)",
    ("gateway/intake/worker.py",),
)
# Whatever no stage holds is the loop's own (selector, transports, task steps).
STAGES = (
    SESSIONS,
    Stage("accept: DATA reader (smtpdata.py)", ("gateway/ingress/smtpdata.py",), inside=SESSIONS),
    Stage("accept: dedup key", ("gateway/intake/facts.py",), frozenset({"dedup_key"}), SESSIONS),
    Stage(
        "accept: store commit, the loop's part (group commit, INSERTs)",
        ("gateway/ingress/accept.py",),
        frozenset({"_write"}),
    ),
    INTAKE,
    Stage("intake: parse hand-off, the loop's part", ("gateway/intake/parsing.py",), inside=INTAKE),
    Stage("intake: threading", ("gateway/intake/threads.py",), inside=INTAKE),
    Stage("intake: routing", ("gateway/routing/",), inside=INTAKE),
    Stage("outbox: alerts claimed, rendered, written", ("gateway/notify/",)),
)
IDLE = "<method 'poll' of 'select.epoll' objects>"  # the loop waiting for work


def _entered(stats: dict[Key, Any], stage: Stage) -> float:
    """Seconds inside the stage's functions, callees included, counted where they are
    called from outside it, so a stage's own nesting is counted once; a call back into
    it from its own callees (Outbox.run, DrainLoop.run, Outbox.drain) is nesting too.
    A coroutine is counted while it runs, not while it waits."""
    callees: dict[Key, set[Key]] = {}
    for key, entry in stats.items():
        for caller in entry[4]:
            callees.setdefault(caller, set()).add(key)
    below: set[Key] = set()
    todo = [key for key in stats if stage.holds(key)]
    while todo:
        for callee in callees.get(todo.pop(), ()):
            if callee not in below:
                below.add(callee)
                todo.append(callee)
    total = 0.0
    for key, (_, _, _, _, callers) in stats.items():
        if stage.holds(key):
            total += sum(
                edge[3]
                for caller, edge in callers.items()
                if not stage.holds(caller) and caller not in below
            )
    return total


# ---- in the daemon's process ----------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """The CPU (user and system) process `pid` has used so far, by the kernel's clocks."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


PROCESS, LOOP = "the daemon's process", "the loop's thread"
# The daemon's worker processes (gateway/offload.py), by their names.
WORKERS = {"gateway-parser": "the parser process", "gateway-alerts": "the alert builder process"}
GONE = "threads ended meanwhile"


def _thread_kind(thread: threading.Thread) -> str:
    if thread is threading.main_thread():
        return LOOP
    if "_connection_worker_thread" in thread.name:
        return "aiosqlite's thread"
    if thread.name.startswith("asyncio_"):
        return "asyncio.to_thread's threads"
    return "other threads"


def _cpu() -> dict[str, float]:
    """CPU seconds so far: the process's, by kind of thread, and its worker processes'."""
    found = {PROCESS: time.process_time()}
    for thread in threading.enumerate():
        if thread.ident is not None:
            clock = time.pthread_getcpuclockid(thread.ident)
            kind = _thread_kind(thread)
            found[kind] = found.get(kind, 0.0) + time.clock_gettime(clock)
    for name, kind in WORKERS.items():
        found[kind] = sum(
            cpu_seconds(child.pid)
            for child in multiprocessing.active_children()
            if child.pid is not None and child.name == name
        )
    return found


def daemon(folder: Path, profiled: bool, argv: list[str]) -> int:
    """`gateway` with `argv`: SIGUSR1 starts the measure, SIGUSR2 writes it into `folder`."""
    profiler = cProfile.Profile()
    before: dict[str, float] = {}

    def start(signum: int, frame: FrameType | None) -> None:
        before.update(_cpu())
        if profiled:
            profiler.enable()
        (folder / "started").touch()

    def stop(signum: int, frame: FrameType | None) -> None:
        if profiled:
            profiler.disable()
            profiler.dump_stats(folder / "profile.stats")
        spent = {kind: seconds - before.get(kind, 0.0) for kind, seconds in _cpu().items()}
        (folder / "cpu.tmp").write_text(json.dumps(spent))
        (folder / "cpu.tmp").rename(folder / "cpu.json")

    signal.signal(signal.SIGUSR1, start)
    signal.signal(signal.SIGUSR2, stop)
    return gateway_main(argv)


# ---- in the bench's process -----------------------------------------------------------


@dataclass
class Sample:
    connections: int
    messages: int
    load: pipeline.Run
    cpu: dict[str, float]
    stats: dict[Key, Any] | None


def _wait(condition: Callable[[], bool], what: str, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.05)


def _settled(database: Path) -> bool:
    """Every message routed, every alert written."""
    with sqlite3.connect(database, timeout=30) as conn:
        row = conn.execute(
            "SELECT (SELECT count(*) FROM messages WHERE state = 'pending')"
            " + (SELECT count(*) FROM outbox WHERE state = 'pending' AND attempts = 0)"
        ).fetchone()
    return bool(row[0] == 0)


def sample(profiled: bool, seconds: float, connections: int) -> Sample:
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        rules = [{"name": "ACME", "sender_domain": ["acme.com"], "assign_to": "agent:a"}]
        config = gateway_config(folder, port, rules=rules)  # bench.__main__'s gateway
        wrapper = [sys.executable, "-m", "bench.profile", "daemon", tmp, str(int(profiled))]
        process = subprocess.Popen(
            [*wrapper, "run", "--config", str(config)],
            cwd=ROOT,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_port(port, process)
            process.send_signal(signal.SIGUSR1)
            _wait((folder / "started").exists, "the measure to start")
            load = pipeline.run(port, connections, seconds)
            database = folder / "gateway.db"
            _wait(lambda: _settled(database), "intake and the outbox to finish")
            process.send_signal(signal.SIGUSR2)
            _wait((folder / "cpu.json").exists, "the daemon's figures")
            cpu = json.loads((folder / "cpu.json").read_text())
            stats = pstats.Stats(str(folder / "profile.stats")).stats if profiled else None  # type: ignore[attr-defined]
            with sqlite3.connect(database) as conn:
                messages = conn.execute("SELECT count(*) FROM messages").fetchone()[0]
        finally:
            process.terminate()
            process.wait(30)
    return Sample(connections, messages, load, cpu, stats)


def parse_cost(count: int = 500) -> float:
    """Seconds per message of the parser's own function, on the bench's messages."""
    items: list[tuple[bytes, str | None]] = [
        (pipeline.message(n), "c@example.org") for n in range(count)
    ]
    extract_each(items[:20])  # imports and caches warm
    started = time.process_time()
    extract_each(items)
    return (time.process_time() - started) / count


def _where(key: Key) -> str:
    path, line, name = key
    if path == "~":  # a builtin: its address changes from run to run
        return re.sub(r" at 0x[0-9a-f]+", "", name).replace("|", "/")
    path = re.sub(r".*/(site-packages|python3\.\d+)/", "", path).replace(f"{ROOT}/", "")
    return f"{path}:{line} {name}"


def _cpu_table(plain: Sample, profiled: Sample, parse: float) -> list[str]:
    lines = [
        "| CPU per message, by the kernel's clocks | plain µs | under cProfile µs |",
        "| --- | --- | --- |",
    ]
    for sample in (plain, profiled):  # a thread that ended meanwhile: counted by its process
        own = [v for k, v in sample.cpu.items() if k != PROCESS and k not in WORKERS.values()]
        threads = sum(own)
        sample.cpu[GONE] = sample.cpu[PROCESS] - threads
    for kind in plain.cpu:
        lines.append(
            f"| {kind} | {plain.cpu[kind] / plain.messages * 1e6:.0f} "
            f"| {profiled.cpu.get(kind, 0.0) / profiled.messages * 1e6:.0f} |"
        )
    alone = f"{parse * 1e6:.0f}"
    lines.append(f"| the parser's function alone (extract_each, timed here) | {alone} |  |")
    return lines


def _stage_table(stats: dict[Key, Any], messages: int) -> list[str]:
    per = 1e6 / messages
    total = sum(entry[2] for entry in stats.values())
    busy = total - sum(entry[2] for key, entry in stats.items() if key[2] == IDLE)
    entered = {stage: _entered(stats, stage) for stage in STAGES}
    own = dict(entered)
    for stage in STAGES:
        if stage.inside is not None:
            own[stage.inside] -= entered[stage]
    rows = [(stage.name, own[stage]) for stage in STAGES]
    rest = busy - sum(entered[stage] for stage in STAGES if stage.inside is None)
    rows.append(("the loop itself and the rest (selector, transports, task steps)", rest))
    lines = [
        "| stage (the loop's thread, wall time under cProfile) | µs per message | share |",
        "| --- | --- | --- |",
    ]
    for name, seconds in rows:
        lines.append(f"| {name} | {seconds * per:.1f} | {seconds / busy:.0%} |")
    lines.append(f"| **the loop's thread, busy** | **{busy * per:.1f}** | 100% |")
    return lines


def _top_table(stats: dict[Key, Any], messages: int) -> list[str]:
    lines = [
        "| top 15 by own time (the loop's thread) | own µs per message | calls per message "
        "| mostly called from |",
        "| --- | --- | --- | --- |",
    ]
    ranked = sorted(
        (item for item in stats.items() if item[0][2] != IDLE), key=lambda item: -item[1][2]
    )
    for key, (_, calls, tt, _, callers) in ranked[:15]:
        caller = max(callers.items(), key=lambda item: item[1][2])[0] if callers else None
        lines.append(
            f"| `{_where(key)}` | {tt * 1e6 / messages:.1f} | {calls / messages:.1f} "
            f"| {f'`{_where(caller)}`' if caller else ''} |"
        )
    return lines


def report(plain: Sample, profiled: Sample, parse: float) -> str:
    assert profiled.stats is not None
    loop_plain = plain.cpu[LOOP] / plain.messages
    loop_profiled = profiled.cpu[LOOP] / profiled.messages
    return "\n".join(
        [
            f"{profiled.connections} pipelining connections for {profiled.load.seconds:.0f} s, "
            f"accepted at {plain.load.rate:.0f} msg/s plain and {profiled.load.rate:.0f} "
            f"under cProfile ({plain.messages} and {profiled.messages} messages), measured "
            "until each was routed and its alert written.",
            "",
            *_cpu_table(plain, profiled, parse),
            "",
            f"cProfile makes the loop's thread's CPU per message {loop_profiled / loop_plain:.1f}"
            " times as much; the stages below are the loop thread's wall time under it, waits"
            " that block the thread included (the loop waiting in its selector is not).",
            "",
            *_stage_table(profiled.stats, profiled.messages),
            "",
            *_top_table(profiled.stats, profiled.messages),
        ]
    )


def measure(seconds: float = SECONDS, connections: int = CONNECTIONS) -> str:
    parse = parse_cost()
    plain = sample(False, seconds, connections)
    profiled = sample(True, seconds, connections)
    return report(plain, profiled, parse)


def main() -> None:
    if sys.argv[1:2] == ["daemon"]:
        sys.exit(daemon(Path(sys.argv[2]), sys.argv[3] == "1", sys.argv[4:]))
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__)
    parser.add_argument("--seconds", type=float, default=SECONDS, help="length of the load")
    parser.add_argument("--connections", type=int, default=CONNECTIONS)
    args = parser.parse_args()
    print(measure(args.seconds, args.connections))


if __name__ == "__main__":
    main()
