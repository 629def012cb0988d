"""Hostile mail through the real daemon: intake time per message and peak memory.

    .venv/bin/python -m bench.hostile [--at-limit] [--only NAME ...]

Starts `python -m gateway run` as production does (a process of its own, the
default 25 MB size limit, alerts written as files), sends each sample of the
hostile corpus (tests/hostile.py) over SMTP, one at a time, and waits until it is
routed and its alert written. Per sample: its size, the SMTP answer and DATA
round trip, intake ms (from the daemon's own `message.routed` line: its batch,
taken to committed), the time until the alert was written, the RSS and peak RSS
so far of the daemon and its parser process together (VmHWM: it only grows, so
the sample that raises it is the one to look at), and, measured here in this
process, the pure parts: `extract`, `dedup_key`, and the alert's render and
flattening. `--at-limit` adds samples
grown to the size limit, where any cost worse than linear would show. At the end
one ordinary message must still be routed.
"""

from __future__ import annotations

import argparse
import json
import smtplib
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from email import policy
from pathlib import Path

import tomli_w

from bench.processes import ROOT, free_port, wait_port
from gateway.intake.facts import dedup_key, extract
from gateway.notify.render import AlertInput, render
from tests import hostile
from tests.hostile import SIZE_LIMIT, Sample, deliver, memory_mb

WAIT = 600.0  # seconds a sample may take to be routed and alerted before it counts as stuck


def _fill(name: str, unit: Callable[[int], bytes], head: bytes, tail: bytes) -> Sample:
    """`head`, then `unit(0)`, `unit(1)`... up to just under the size limit, then `tail`."""
    parts, size, n = [head], len(head) + len(tail), 0
    while size < SIZE_LIMIT - 200_000:
        part = unit(n)
        parts.append(part)
        size += len(part)
        n += 1
    return Sample(name, b"".join(parts) + tail)


HEAD = b"From: Big <big@hostile.example>\r\nTo: support@example.com\r\nSubject: big\r\n"
END = b"Message-ID: <%s@hostile.example>\r\n\r\nbody\r\n"
# The corpus's worst shapes grown to the size limit.
AT_LIMIT: dict[str, Callable[[], Sample]] = {
    "header-bomb-at-limit": lambda: _fill(
        "header-bomb-at-limit",
        lambda n: b"X-Bomb-%d: value %d\r\n" % (n, n),
        HEAD,
        END % b"bomb",
    ),
    "to-at-limit": lambda: _fill(
        "to-at-limit",
        lambda n: b"%s<p%d@to.example>" % (b"To: " if n == 0 else b",\r\n ", n),
        HEAD.replace(b"To: support@example.com\r\n", b""),
        b"\r\n" + END % b"to",
    ),
    "references-at-limit": lambda: _fill(
        "references-at-limit",
        lambda n: b"%s<r%d@hostile.example>" % (b"References: " if n == 0 else b"\r\n ", n),
        HEAD,
        b"\r\n" + END % b"refs",
    ),
    "subject-encoded-at-limit": lambda: _fill(
        "subject-encoded-at-limit",
        lambda n: b"Subject: =?utf-8?q?w=C3=B6rd?=" if n == 0 else b"\r\n =?utf-8?q?w?=",
        HEAD.replace(b"Subject: big\r\n", b""),
        b"\r\n" + END % b"subject",
    ),
    "nested-multipart-at-limit": lambda: _fill(
        "nested-multipart-at-limit",
        lambda n: b'Content-Type: multipart/mixed; boundary="l%d"\r\n\r\n--l%d\r\n' % (n, n),
        HEAD + b"Message-ID: <nested@hostile.example>\r\n",
        b"Content-Type: text/plain\r\n\r\nbottom\r\n",
    ),
    "wide-multipart-at-limit": lambda: _fill(
        "wide-multipart-at-limit",
        lambda n: b"--w\r\nContent-Type: text/plain\r\n\r\npart %d\r\n" % n,
        HEAD
        + b"Message-ID: <wide@hostile.example>\r\n"
        + b'Content-Type: multipart/mixed; boundary="w"\r\n\r\n',
        b"--w--\r\n",
    ),
}


def start(folder: Path, port: int) -> tuple[subprocess.Popen[bytes], Path]:
    config = {
        "gateway": {"database": "gateway.db", "hostname": "bench.test"},
        # One client address sends everything here: its limits would measure the throttle.
        "smtp": {
            "listen": [f"127.0.0.1:{port}"],
            "max_message_size": SIZE_LIMIT,
            "max_connections_per_client": 0,
            "max_messages_per_minute_per_client": 0,
        },
        "notify": {"backend": "file", "file_dir": "alerts"},
        "round_robin": {"enabled": True, "agents": ["a", "b", "c"]},
        "agents": [{"id": x, "email": f"{x}@agents.test"} for x in "abc"],
        "inboxes": [{"address": "support@example.com"}, {"address": "sales@example.com"}],
    }
    (folder / "gateway.toml").write_text(tomli_w.dumps(config))
    log = folder / "gateway.log"
    with log.open("wb") as out:  # the child keeps its own descriptor
        process = subprocess.Popen(
            [sys.executable, "-m", "gateway", "run", "--config", str(folder / "gateway.toml")],
            cwd=ROOT,
            stderr=out,
        )
    wait_port(port, process)
    return process, log


class Probe:
    """Another client on its own session, asking NOOP over and over: the longest wait for
    an answer is how long the daemon's loop served nobody else."""

    def __init__(self, port: int) -> None:
        self._port = port
        self._client = self._connect()
        self._worst = 0.0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _connect(self) -> smtplib.SMTP:
        client = smtplib.SMTP("127.0.0.1", self._port, timeout=WAIT)
        client.ehlo()
        return client

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.perf_counter()
            try:
                self._client.noop()
            except smtplib.SMTPServerDisconnected:  # its per-session command limit
                self._client = self._connect()
                continue
            with self._lock:
                self._worst = max(self._worst, time.perf_counter() - started)
            time.sleep(0.005)

    def worst_ms(self) -> float:
        """The longest NOOP since the last call."""
        with self._lock:
            worst, self._worst = self._worst, 0.0
        return worst * 1000

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self._client.close()


def routed_ms(log: Path, ids: set[int]) -> list[float]:
    """The intake ms the daemon logged for these stored messages."""
    found = []
    for line in log.read_text(errors="replace").splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if event.get("event", "").startswith("message.") and event.get("message") in ids:
            found.append(float(event["ms"]))
    return found


def pure(raw: bytes) -> tuple[float, float, float]:
    """ms for extract, dedup_key, and render + flatten of its alert, in this process."""
    started = time.perf_counter()
    facts = extract(raw, "customer@example.org")
    extracted = time.perf_counter()
    dedup_key(raw)
    keyed = time.perf_counter()
    message = render(
        AlertInput(
            event_id=1,
            reason="assigned",
            how="by round-robin",
            conversation_id=1,
            subject=facts.subject,
            customer=facts.sender,
            inbox="support@example.com",
            agent_name="A",
            agent_email="a@agents.test",
            sender="gateway@bench.test",
            hostname="bench.test",
            mark="1.x",
            raw=raw,
            date=datetime.now(UTC),
        )
    )
    message.as_bytes(policy=policy.SMTP)
    done = time.perf_counter()
    return (extracted - started) * 1000, (keyed - extracted) * 1000, (done - keyed) * 1000


def measure(samples: list[Sample]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder, port = Path(tmp), free_port()
        process, log = start(folder, port)
        database = folder / "gateway.db"
        print(f"daemon pid {process.pid}, started: RSS {memory_mb(process.pid)[0]} MB", flush=True)
        print(
            f"{'sample':28} {'bytes':>10} {'smtp':>4} {'DATA ms':>8} {'intake ms':>10} "
            f"{'alert s':>7} {'stall ms':>8} {'RSS MB':>6} {'peak MB':>7} {'extract ms':>10} "
            f"{'dedup ms':>8} {'render ms':>9}",
            flush=True,
        )
        probe = Probe(port)
        try:
            for sample in samples:
                probe.worst_ms()
                one(sample, port, process.pid, database, log, probe)
            ordinary = b"Subject: after\r\nMessage-ID: <after@x>\r\n\r\nx\r\n"
            code = deliver(port, ordinary, ["support@example.com"])[0]
            state = wait(database, "SELECT state FROM messages WHERE message_id = 'after@x'")
            print(f"an ordinary message afterwards: SMTP {code}, {state}", flush=True)
            print(
                f"peak RSS of the daemon over the run: {memory_mb(process.pid)[1]} MB", flush=True
            )
        finally:
            probe.stop()
            process.terminate()
            process.wait(60)


def wait(database: Path, sql: str, want: Callable[[list[sqlite3.Row]], bool] = bool) -> str:
    deadline = time.monotonic() + WAIT
    with sqlite3.connect(database, timeout=30) as conn:
        while time.monotonic() < deadline:
            rows = conn.execute(sql).fetchall()
            if rows and want(rows) and all(r[0] != "pending" for r in rows):
                return ",".join(str(r[0]) for r in rows)
            time.sleep(0.01)
    return "stuck"


def one(sample: Sample, port: int, pid: int, database: Path, log: Path, probe: Probe) -> None:
    with sqlite3.connect(database, timeout=30) as conn:
        before = conn.execute("SELECT coalesce(max(id), 0) FROM messages").fetchone()[0]
        alerts = conn.execute("SELECT count(*) FROM events WHERE kind = 'notified'").fetchone()[0]
    started = time.perf_counter()
    try:
        code = deliver(port, sample.raw, sample.recipients)[0]
    except smtplib.SMTPException as error:
        code = getattr(error, "smtp_code", 0)
    data_ms = (time.perf_counter() - started) * 1000
    intake, alert_s = "-", "-"
    if code == 250:
        sent = time.monotonic()
        wait(database, f"SELECT state FROM messages WHERE id > {before}")
        got = wait(
            database,
            "SELECT count(*) FROM events WHERE kind = 'notified'",
            lambda rows: int(rows[0][0]) >= alerts + len(sample.inboxes),
        )
        alert_s = "stuck" if got == "stuck" else f"{time.monotonic() - sent:.2f}"
        with sqlite3.connect(database, timeout=30) as conn:
            ids = {r[0] for r in conn.execute(f"SELECT id FROM messages WHERE id > {before}")}
        intake = ",".join(f"{ms:.1f}" for ms in routed_ms(log, ids)) or "?"
    stall = probe.worst_ms()
    rss, peak = memory_mb(pid)
    extract_ms, dedup_ms, render_ms = pure(sample.stored)
    print(
        f"{sample.name:28} {len(sample.raw):>10} {code:>4} {data_ms:>8.1f} {intake:>10} "
        f"{alert_s:>7} {stall:>8.1f} {rss:>6} {peak:>7} {extract_ms:>10.1f} {dedup_ms:>8.1f} "
        f"{render_ms:>9.1f}",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.hostile", description=__doc__)
    parser.add_argument("--at-limit", action="store_true", help="add samples grown to 25 MB")
    parser.add_argument("--only", nargs="*", help="these samples only")
    args = parser.parse_args()
    names = args.only or [*hostile.NAMES, *(AT_LIMIT if args.at_limit else ())]
    measure([AT_LIMIT[n]() if n in AT_LIMIT else hostile.sample(n) for n in names])


if __name__ == "__main__":
    main()
