"""Screenshots of the web inbox's three main pages, for the README: `make screenshots`.

    .venv/bin/python -m bench.screenshots [--out docs]

The daemon runs on the trial configuration (config.example.toml, in a temporary
folder, on free ports); Alice gets a password from `gateway set-password`, a
few customers write over SMTP (one sends a photo), one conversation is put back
in the unassigned queue, Alice answers one through the page's Reply box and
Carol is away. Debian's Chromium, driven by Playwright, signs Alice in and
saves the conversations list, a conversation and the agents as PNG files.
Playwright never downloads a browser here: it is given /usr/bin/chromium.
"""

from __future__ import annotations

import argparse
import os
import random
import smtplib
import subprocess
import sys
import tempfile
import tomllib
from email.message import EmailMessage
from email.utils import make_msgid
from pathlib import Path

import tomli_w
from playwright.sync_api import Page, ViewportSize, sync_playwright

from bench.processes import ROOT, free_port, wait_port
from bench.web import routed
from tests.browser import CHROMIUM, FLAGS  # the tests' Chromium, started as they start it

VIEWPORT: ViewportSize = {"width": 1100, "height": 700}
PASSWORD = "trial-password-alice"

# (From, Subject, text, the mail it answers: an index into this list, or None, a file)
MAILS = [
    ("Maria Lopez <maria.lopez@example.org>", "Parcel arrived damaged",
     "Hello,\n\nmy order 4711 arrived today and the box was crushed; the lamp inside is"
     " broken.\nCan you send a new one, or should I send this one back first?\n\nMaria",
     None, None),
    ("Tom Becker <tom.becker@acme.com>", "Invoice 2024-118 charged twice",
     "Hi,\n\nour card was charged twice for invoice 2024-118 (EUR 1,240.00).\n"
     "Please refund the second charge.\n\nTom Becker\nACME Purchasing", None, None),
    ("Priya Natarajan <priya.n@mail.test>", "Cannot sign in after the password reset",
     "The reset link worked, but the new password is refused every time.", None, None),
    ("Jonas Berg <jonas.berg@shop.test>", "Change the delivery address of order 5120",
     "Please deliver order 5120 to Hauptstrasse 12, 10115 Berlin instead.", None, None),
    ("Maria Lopez <maria.lopez@example.org>", "Re: Parcel arrived damaged",
     "Here is what the box looked like when it came. The lamp's glass is in pieces.", 0,
     "box.jpg"),
    ("Emma Wright <emma.wright@example.org>", "Do you ship to Norway?",
     "Hello, do you ship to Norway, and how long does it take?\n\nEmma", None, None),
]  # fmt: skip
ANSWER = (
    "Hello Maria,\n\nI am sorry the lamp arrived broken. A new one leaves our warehouse"
    " today; you do not need to send the old one back.\n\nAlice"
)


def trial_config(folder: Path, smtp_port: int, web_port: int) -> Path:
    """config.example.toml as `make run` uses it, on free ports, its files in `folder`."""
    config = tomllib.loads((ROOT / "config.example.toml").read_text())
    config["smtp"]["listen"] = [f"127.0.0.1:{smtp_port}"]
    config["web"]["listen"] = f"127.0.0.1:{web_port}"
    path = folder / "gateway.toml"
    path.write_text(tomli_w.dumps(config))
    return path


def gateway(config: Path, *args: str, text: str | None = None) -> None:
    subprocess.run(
        [sys.executable, "-m", "gateway", *args, "--config", str(config)],
        input=text,
        text=True,
        cwd=ROOT,
        check=True,
        capture_output=True,
    )


def send_mails(port: int, database: Path) -> dict[str, int]:
    """MAILS over SMTP, each routed before the next: each subject's conversation."""
    sent: list[EmailMessage] = []
    found = {}
    with smtplib.SMTP("127.0.0.1", port) as smtp:
        for sender, subject, text, answers, attached in MAILS:
            msg = EmailMessage()
            msg["From"], msg["To"], msg["Subject"] = sender, "support@example.com", subject
            msg["Message-ID"] = make_msgid("shot", sender.split("@")[1].rstrip(">"))
            if answers is not None:
                msg["In-Reply-To"] = msg["References"] = sent[answers]["Message-ID"]
            msg.set_content(text + "\n")
            if attached is not None:
                photo = random.Random(attached).randbytes(48_000)
                msg.add_attachment(photo, maintype="image", subtype="jpeg", filename=attached)
            smtp.send_message(msg)
            sent.append(msg)
            found[subject] = routed(database, msg["Message-ID"])
    return found


def shoot(url: str, conversation: int, out: Path) -> None:
    """Alice signs in, answers the conversation, and each page is saved."""
    with tempfile.TemporaryDirectory() as nowhere:
        os.environ["PLAYWRIGHT_BROWSERS_PATH"] = nowhere  # no browser of Playwright's own
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
            try:
                page = browser.new_page(viewport=VIEWPORT)
                page.goto(f"{url}/login")
                page.get_by_label("Agent").fill("alice")
                page.get_by_label("Password").fill(PASSWORD)
                page.get_by_role("button", name="Sign in").click()
                page.wait_for_url(f"{url}/conversations")
                page.goto(f"{url}/conversations/{conversation}")
                page.get_by_label("Reply").fill(ANSWER)
                page.get_by_role("button", name="Send reply").click()
                page.wait_for_load_state()
                save(page, f"{url}/conversations?view=all", out / "conversations.png")
                save(page, f"{url}/conversations/{conversation}", out / "conversation.png")
                save(page, f"{url}/agents", out / "agents.png")
            finally:
                browser.close()


def save(page: Page, address: str, path: Path) -> None:
    page.goto(address)
    page.screenshot(path=path)
    print(f"{path.relative_to(ROOT)}: {path.stat().st_size // 1024} KB", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.screenshots", description=__doc__)
    parser.add_argument("--out", type=Path, default=ROOT / "docs", help="folder for the PNGs")
    args = parser.parse_args()
    if not CHROMIUM.exists():
        raise SystemExit(f"{CHROMIUM} is missing: `make peers` installs Debian's chromium.")
    args.out.mkdir(exist_ok=True)
    smtp_port, web_port = free_port(), free_port()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        config = trial_config(folder, smtp_port, web_port)
        gateway(config, "set-password", "alice", text=PASSWORD + "\n")
        daemon = subprocess.Popen(
            [sys.executable, "-m", "gateway", "run", "--config", str(config)],
            cwd=ROOT,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_port(smtp_port, daemon)
            wait_port(web_port, daemon)
            conversations = send_mails(smtp_port, folder / "gateway.db")
            waiting = conversations["Do you ship to Norway?"]
            gateway(config, "unassign", str(waiting), "--by", "alice")
            gateway(config, "status", "carol", "away")
            first = conversations["Parcel arrived damaged"]
            shoot(f"http://127.0.0.1:{web_port}", first, args.out.resolve())
        finally:
            daemon.terminate()
            daemon.wait(30)


if __name__ == "__main__":
    main()
