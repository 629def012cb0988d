"""Behind Postfix: how fast Postfix delivers to the gateway by each recipe of contrib/postfix/.

    .venv/bin/python -m bench.behind_postfix [--messages 500] [--pipe-messages 200]

Per recipe (SMTP relay, LMTP, pipe into `gateway ingest`): a fresh store, the
gateway (`gateway run`, its own process) and a private Postfix configured by the
recipe (tests/postfix.py); a client sends the messages to Postfix on 4
connections (distinct Message-IDs), and the rate is from the first 250 Postfix
answered to the last message in the gateway's store. Needs root and Debian's
postfix (`make peers`).
"""

from __future__ import annotations

import argparse
import shutil
import smtplib
import sqlite3
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from email.message import EmailMessage
from email.utils import make_msgid
from pathlib import Path

from bench.processes import ROOT, free_port, gateway_config, wait_port
from tests.postfix import (
    QUICK_RETRY,
    Postfix,
    gateway_recipients,
    lmtp_recipe,
    pipe_home,
    pipe_recipe,
    relay_recipe,
)

CONNECTIONS = 4
SIZE_LIMIT = 24_990_000  # the recipes' own, under the gateway's default 25MB


def message(number: int) -> bytes:
    msg = EmailMessage()
    msg["From"] = "Customer <customer@example.org>"
    msg["To"] = "support@example.com"
    msg["Subject"] = f"Behind Postfix {number}"
    msg["Message-ID"] = make_msgid(domain="example.org")
    msg.set_content("Please help.\n" * 20)
    return msg.as_bytes()


def send(port: int, count: int) -> float:
    """Send `count` messages to Postfix on a few connections; when the first 250 came."""
    answered: list[float] = []

    def one_connection(numbers: range) -> None:
        with smtplib.SMTP("127.0.0.1", port, timeout=60) as client:
            for number in numbers:
                client.sendmail("customer@example.org", ["support@example.com"], message(number))
                answered.append(time.monotonic())

    with ThreadPoolExecutor(CONNECTIONS) as pool:
        parts = [range(i, count, CONNECTIONS) for i in range(CONNECTIONS)]
        list(pool.map(one_connection, parts))
    return min(answered)


def stored(database: Path, count: int, timeout: float = 600) -> float:
    """When the store held `count` messages."""
    deadline = time.monotonic() + timeout
    with sqlite3.connect(database, timeout=30) as conn:
        while time.monotonic() < deadline:
            if conn.execute("SELECT count(*) FROM messages").fetchone()[0] >= count:
                return time.monotonic()
            time.sleep(0.02)
    raise SystemExit(f"the store did not reach {count} messages")


def measure(method: str, count: int) -> tuple[float, int]:
    """Messages a second, and how many times Postfix deferred a delivery."""
    with tempfile.TemporaryDirectory(prefix="gw-bench-postfix-") as tmp:
        folder = Path(tmp)
        folder.chmod(0o755)
        database = pipe_home(folder / "gateway")
        smtp_port, lmtp_port = free_port(), free_port()
        path = gateway_config(
            database.parent, smtp_port, lmtp={"listen": [f"127.0.0.1:{lmtp_port}"]}
        )
        path.chmod(0o644)
        gateway = subprocess.Popen(
            [sys.executable, "-m", "gateway", "run", "--config", str(path)],
            cwd=ROOT,
            stderr=subprocess.DEVNULL,
        )
        extra = ""
        if method == "smtp relay":
            main_cf = relay_recipe(folder / "postfix", smtp_port, SIZE_LIMIT)
        elif method == "lmtp":
            main_cf = lmtp_recipe(folder / "postfix", lmtp_port, SIZE_LIMIT)
        else:
            main_cf, extra = pipe_recipe(folder / "postfix", path, SIZE_LIMIT)
        postfix = Postfix(folder / "postfix", free_port(), main_cf + QUICK_RETRY, extra)
        try:
            wait_port(smtp_port, gateway)
            postfix.postmap("gateway_recipients", gateway_recipients(path))
            postfix.start()
            began = send(postfix.port, count)
            ended = stored(database, count)
            return count / (ended - began), postfix.log().count("status=deferred")
        finally:
            postfix.stop()
            gateway.terminate()
            gateway.wait(30)
            shutil.rmtree(folder / "postfix", ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.behind_postfix",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--messages", type=int, default=500, help="per run, relay and LMTP")
    parser.add_argument("--pipe-messages", type=int, default=200, help="per run, the pipe")
    args = parser.parse_args()
    print("| method | messages | msg/s | deferred deliveries |")
    print("| --- | ---: | ---: | ---: |")
    for method in ("smtp relay", "lmtp", "pipe"):
        count = args.pipe_messages if method == "pipe" else args.messages
        rate, deferred = measure(method, count)
        print(f"| {method} | {count} | {rate:.1f} | {deferred} |", flush=True)


if __name__ == "__main__":
    main()
