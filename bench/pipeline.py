"""An SMTP load client that pipelines (RFC 2920), on raw asyncio streams, in processes of its own.

    .venv/bin/python -m bench.pipeline PORT [--connections 32] [--processes 1] [--seconds 3]
        [--messages N]

Each connection says EHLO once, and runs only if the server advertises PIPELINING.
Then, per message: MAIL, RCPT and DATA in one write and their three replies, the
dot-stuffed message with its `.` line and the 250. Every reply's code is checked:
whatever differs from 250, 250, 354, 250 is counted by command and code and
reported (a refused transaction is reset with RSET and the next one goes on).
A message's latency is from the end of its data's write to its 250. N connections
are spread over P client processes, which start sending together and stop after
S seconds, or once N messages are sent (spread over the processes as the
connections are), whichever comes first.

aiosmtplib (bench.__main__.load) waits a round trip per command, and email's generator
takes some 0.65 ms a message: both made the client the ceiling. Here a process builds
one message and makes each next one from it with a replace.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import multiprocessing
import os
import queue
import time
from collections import Counter
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.policy import SMTP as SMTP_POLICY
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Barrier

GROUP = b"MAIL FROM:<c@example.org>\r\nRCPT TO:<support@example.com>\r\nDATA\r\n"
EXPECTED = (("MAIL", 250), ("RCPT", 250), ("DATA", 354))


def message(n: int) -> bytes:
    msg = EmailMessage()
    msg["From"] = f"Customer {n} <c{n}@example.org>"
    msg["To"] = "support@example.com"
    msg["Subject"] = f"Question number {n} about my order"
    msg["Message-ID"] = f"<bench-{os.getpid()}-{time.monotonic_ns()}-{n}@example.org>"
    msg.set_content(("The order has not arrived yet and I would like to know why. " * 30)[:1800])
    return msg.as_bytes(policy=SMTP_POLICY)


class Messages:
    """message(n) as it goes on the wire (dot-stuffed, its `.` line after), for the cost
    of a replace: its n is a mark in one message built once."""

    MARK = b"9999999999999"  # no run numbers a message this high

    def __init__(self) -> None:
        raw = message(int(self.MARK))
        stuffed = (b"." if raw.startswith(b".") else b"") + raw.replace(b"\r\n.", b"\r\n..")
        self._template = stuffed + b".\r\n"

    def __call__(self, n: int) -> bytes:
        return self._template.replace(self.MARK, str(n).encode())


@dataclass
class Run:
    sent: int = 0
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)
    failures: Counter[str] = field(default_factory=Counter)  # "RCPT 550": how many
    cpu: float = 0.0  # the client's CPU seconds, all its processes

    @property
    def rate(self) -> float:
        return self.sent / self.seconds

    def add(self, other: Run) -> None:
        self.sent += other.sent
        self.seconds = max(self.seconds, other.seconds)
        self.latencies += other.latencies
        self.failures += other.failures
        self.cpu += other.cpu


class Quota:
    """The messages a client process's connections may still start, all together."""

    def __init__(self, messages: float) -> None:
        self.left = messages

    def take(self) -> bool:
        self.left -= 1
        return self.left >= 0


def percentile(latencies: list[float], p: float) -> float:
    """In ms."""
    ordered = sorted(latencies)
    return ordered[min(int(len(ordered) * p), len(ordered) - 1)] * 1000 if ordered else 0.0


class NoPipelining(Exception):
    pass


async def _reply(reader: asyncio.StreamReader) -> tuple[int, list[bytes]]:
    """One reply: its code and its lines' texts ("250-" continues it, "250 " ends it)."""
    texts = []
    while True:
        line = await reader.readuntil(b"\r\n")
        texts.append(line[4:-2])
        if line[3:4] != b"-":
            return int(line[:3]), texts


async def _open(host: str, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection(host, port)
    code, texts = await _reply(reader)
    if code != 220:
        raise NoPipelining(f"greeted with {code} {texts[0]!r}")
    writer.write(b"EHLO bench.test\r\n")
    code, texts = await _reply(reader)
    if code != 250 or b"PIPELINING" not in (text.upper() for text in texts):
        raise NoPipelining(f"{host}:{port} does not advertise PIPELINING: refusing to pipeline")
    return reader, writer


async def _send(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    first: int,
    deadline: float,
    quota: Quota,
    run: Run,
) -> None:
    messages = Messages()
    n = first
    try:
        while time.monotonic() < deadline and quota.take():
            writer.write(GROUP)
            codes = [(await _reply(reader))[0] for _ in EXPECTED]
            for (command, expected), code in zip(EXPECTED, codes, strict=True):
                if code != expected:
                    run.failures[f"{command} {code}"] += 1
            if codes[2] != 354:  # RFC 2920: no data after a refused DATA; start over
                writer.write(b"RSET\r\n")
                if (code := (await _reply(reader))[0]) != 250:
                    run.failures[f"RSET {code}"] += 1
                continue
            writer.write(messages(n))
            n += 1
            started = time.perf_counter()
            code = (await _reply(reader))[0]
            if code == 250:
                run.latencies.append(time.perf_counter() - started)
            else:
                run.failures[f"end of data {code}"] += 1
        writer.write(b"QUIT\r\n")
        await _reply(reader)
    except (ConnectionError, asyncio.IncompleteReadError):
        run.failures["connection lost"] += 1
    except ValueError:  # a reply that does not start with a code
        run.failures["garbled reply"] += 1
    writer.close()


async def _client(
    host: str, port: int, workers: range, seconds: float, messages: float, ready: Barrier
) -> Run:
    sessions = [await _open(host, port) for _ in workers]
    # Every process connected: they start together, so none measures alone.
    await asyncio.to_thread(ready.wait, 60)
    run = Run()
    started, cpu = time.monotonic(), time.process_time()
    deadline = started + seconds
    quota = Quota(messages)
    await asyncio.gather(
        *(
            _send(reader, writer, worker * 1_000_000, deadline, quota, run)
            for worker, (reader, writer) in zip(workers, sessions, strict=True)
        )
    )
    run.seconds = time.monotonic() - started
    run.cpu = time.process_time() - cpu
    run.sent = len(run.latencies)
    return run


def _process(
    host: str,
    port: int,
    workers: range,
    seconds: float,
    messages: float,
    ready: Barrier,
    out: Queue[Run | str],
) -> None:
    try:
        out.put(asyncio.run(_client(host, port, workers, seconds, messages, ready)))
    except Exception as error:
        ready.abort()  # the others stop waiting for this one
        out.put(f"{type(error).__name__}: {error}")


def _split(total: int, parts: int) -> list[int]:
    """`total` in `parts` as even as they go."""
    return [total // parts + (i < total % parts) for i in range(parts)]


def run(
    port: int, connections: int, seconds: float, processes: int = 1, messages: int | None = None
) -> Run:
    """`connections` sessions against 127.0.0.1:`port` for `seconds` or until `messages`
    are sent, spread over `processes` client processes; their results together."""
    processes = min(processes, connections)
    context = multiprocessing.get_context("spawn")  # the bench may have threads: no fork
    ready = context.Barrier(processes)
    out: Queue[Run | str] = context.Queue()
    shares = _split(connections, processes)
    quotas: list[float] = [math.inf] * processes
    if messages is not None:
        quotas[:] = _split(messages, processes)
    starts = [sum(shares[:i]) for i in range(processes)]
    children = [
        context.Process(
            target=_process,
            args=("127.0.0.1", port, range(start, start + share), seconds, quota, ready, out),
        )
        for start, share, quota in zip(starts, shares, quotas, strict=True)
    ]
    for child in children:
        child.start()
    answers = []
    deadline = time.monotonic() + seconds + 120
    while len(answers) < len(children):
        try:
            answers.append(out.get(timeout=1))
        except queue.Empty:
            if any(child.exitcode for child in children) or time.monotonic() > deadline:
                for child in children:
                    child.kill()
                raise SystemExit(
                    "the pipelining client's processes ended without a result"
                ) from None
    for child in children:
        child.join(30)
    errors = [answer for answer in answers if isinstance(answer, str)]
    if errors:  # the first is the cause; the others saw the barrier broken by it
        raise SystemExit(f"the pipelining client failed: {errors[0]}")
    total = Run()
    for answer in answers:
        assert isinstance(answer, Run)
        total.add(answer)
    return total


def describe(rate: float, latencies: list[float], failures: Counter[str]) -> str:
    """A run in a line, with every reply that was not the one expected."""
    refused = ", ".join(f"{what}: {count}" for what, count in sorted(failures.items()))
    return (
        f"{rate:7.0f} msg/s  p50 {percentile(latencies, 0.5):6.2f} ms  "
        f"p99 {percentile(latencies, 0.99):6.2f} ms"
        + (f"  NOT ACCEPTED: {refused}" if refused else "")
    )


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.pipeline", description=__doc__)
    parser.add_argument("port", type=int, help="an SMTP server on 127.0.0.1")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--processes", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--messages", type=int, help="at most this many (default: no limit)")
    args = parser.parse_args()
    result = run(args.port, args.connections, args.seconds, args.processes, args.messages)
    print(describe(result.rate, result.latencies, result.failures))


if __name__ == "__main__":
    main()
