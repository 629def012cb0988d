"""The web inbox in a real browser (Debian's Chromium, driven by Playwright) against the
real daemon: mail in over SMTP, answers out to a real SMTP sink, another process's and
another browser's changes shown without a reload."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from email.message import EmailMessage

import pytest
from playwright.sync_api import BrowserContext, Page, expect

from tests.browser import watch
from tests.conftest import Sink, config_file, mail, smtp_notify, wait_until
from tests.hostile import FOLDER as HOSTILE
from tests.hostile import deliver
from tests.web import PASSWORDS, WebDesk

pytestmark = pytest.mark.integration

NO_ROTATION = {"enabled": False, "agents": []}
Contexts = Callable[..., BrowserContext]


def sign_in(context: BrowserContext, desk: WebDesk, agent: str) -> Page:
    page = context.new_page()
    page.goto(f"{desk.url}/login")
    page.get_by_label("Agent").fill(agent)
    page.get_by_label("Password").fill(PASSWORDS[agent])
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", name="Conversations")).to_be_visible()
    return page


def arrived(desk: WebDesk, message: EmailMessage) -> int:
    """Send it over SMTP, let intake route it; its conversation's id."""
    desk.running.send(message)
    desk.running.drain()
    return int(desk.running.conversations()[-1]["id"])


def assignee(desk: WebDesk, conversation_id: int) -> str | None:
    [row] = desk.running.query(
        "SELECT assignee FROM conversations WHERE id = ?", (conversation_id,)
    )
    return row["assignee"]  # type: ignore[no-any-return]


def gateway(desk: WebDesk, *args: str) -> None:
    """A `gateway` command, as another process on the server runs it."""
    config = config_file(desk.running.settings)
    subprocess.run(
        [sys.executable, "-m", "gateway", *args, "--config", str(config)], check=True, timeout=60
    )


def test_the_unassigned_view_lists_mail_that_arrived_over_smtp(
    web_desk: Callable[..., WebDesk], browser_context: Contexts
) -> None:
    desk = web_desk(round_robin=NO_ROTATION)
    number = arrived(desk, mail(subject="Printer on fire"))
    page = sign_in(browser_context(), desk, "bob")
    page.get_by_role("link", name="Unassigned").click()
    row = page.get_by_role("row").filter(has_text="Printer on fire")
    expect(row).to_contain_text("customer@example.org")
    expect(row.get_by_role("link", name=f"#{number}")).to_be_visible()
    expect(page.get_by_role("link", name="Unassigned")).to_have_text("Unassigned 1")


def test_claim_takes_it(web_desk: Callable[..., WebDesk], browser_context: Contexts) -> None:
    desk = web_desk(round_robin=NO_ROTATION)
    number = arrived(desk, mail(subject="Printer on fire"))
    page = sign_in(browser_context(), desk, "bob")
    page.goto(f"{desk.url}/conversations/{number}")
    page.get_by_role("button", name="Claim").click()
    expect(page.get_by_role("status")).to_have_text(f"Conversation {number} is now bob's.")
    assert assignee(desk, number) == "bob"
    [claimed] = desk.running.events(number, "claimed")
    assert claimed["actor"] == "bob" and '"via": "web"' in claimed["detail"]


def test_the_assignee_dropdown_reassigns(
    web_desk: Callable[..., WebDesk], browser_context: Contexts
) -> None:
    desk = web_desk(round_robin=NO_ROTATION)
    number = arrived(desk, mail())
    page = sign_in(browser_context(), desk, "alice")
    page.goto(f"{desk.url}/conversations/{number}")
    page.get_by_label("Assignee").select_option(label="Bob Roe")
    page.get_by_role("button", name="Assign").click()
    expect(page.get_by_label("Assignee")).to_have_value("bob")
    page.get_by_label("Assignee").select_option(label="Carol Poe")
    page.get_by_role("button", name="Assign").click()
    expect(page.get_by_role("status")).to_contain_text("reassigned to carol (it was bob's)")
    assert assignee(desk, number) == "carol"
    page.get_by_label("Assignee").select_option(label="Unassigned")
    page.get_by_role("button", name="Assign").click()
    expect(page.get_by_role("button", name="Claim")).to_be_visible()
    assert assignee(desk, number) is None


def test_an_answer_in_the_reply_box_reaches_the_customer(
    web_desk: Callable[..., WebDesk], browser_context: Contexts, sink: Sink
) -> None:
    desk = web_desk(round_robin=NO_ROTATION, notify=smtp_notify(sink.port))
    number = arrived(desk, mail(subject="Printer on fire", Message_ID="<fire@example.org>"))
    page = sign_in(browser_context(), desk, "bob")
    page.goto(f"{desk.url}/conversations/{number}")
    page.get_by_label("Reply").fill("Unplug it, then call us.")
    page.get_by_role("button", name="Send reply").click()
    expect(page.get_by_role("status")).to_contain_text("is on its way to customer@example.org")
    [answer] = wait_until(
        lambda: [e for e in sink.received if e.rcpt_tos == ["customer@example.org"]],
        what="the answer at the smarthost",
    )
    raw = answer.original_content
    assert b"Unplug it, then call us." in raw
    assert b"In-Reply-To: <fire@example.org>" in raw
    assert answer.mail_from == "support@example.com"
    # claim_on_reply: answering an unassigned conversation takes it
    assert assignee(desk, number) == "bob"
    expect(page.locator("article.answer")).to_contain_text("Unplug it, then call us.")


def test_away_makes_the_rotation_skip_you(
    web_desk: Callable[..., WebDesk], browser_context: Contexts
) -> None:
    desk = web_desk()
    page = sign_in(browser_context(), desk, "alice")
    page.get_by_role("link", name="Agents").click()
    page.get_by_label("Status", exact=True).select_option("away")
    page.get_by_role("button", name="Set status", exact=True).click()
    expect(page.get_by_role("status")).to_have_text("alice is now away.")
    for n in range(3):
        arrived(desk, mail(subject=f"Question {n}"))
    assigned = [row["assignee"] for row in desk.running.conversations()]
    assert assigned == ["bob", "carol", "bob"]


def test_a_manager_sets_another_agents_status(
    web_desk: Callable[..., WebDesk], browser_context: Contexts
) -> None:
    desk = web_desk()
    page = sign_in(browser_context(), desk, "alice")
    page.goto(f"{desk.url}/agents")
    page.get_by_label("Status of Bob Roe", exact=True).select_option("dnd")
    page.get_by_role("button", name="Set status of Bob Roe").click()
    expect(page.get_by_role("status")).to_have_text("bob is now dnd.")
    expect(page.get_by_role("row").filter(has_text="Bob Roe")).to_contain_text("dnd")


def test_another_browsers_changes_show_without_a_reload(
    web_desk: Callable[..., WebDesk], browser_context: Contexts
) -> None:
    desk = web_desk(round_robin=NO_ROTATION)
    number = arrived(desk, mail(subject="Printer on fire"))
    watcher = sign_in(browser_context(), desk, "alice")
    watcher.goto(f"{desk.url}/conversations?view=unassigned")
    watcher.evaluate("window.notReloaded = true")
    expect(watcher.get_by_role("row").filter(has_text="Printer on fire")).to_be_visible()

    bob = sign_in(browser_context(), desk, "bob")
    bob.goto(f"{desk.url}/conversations/{number}")
    bob.get_by_role("button", name="Claim").click()
    expect(bob.get_by_role("status")).to_contain_text("is now bob's")

    expect(watcher.get_by_role("row").filter(has_text="Printer on fire")).to_have_count(0)
    expect(watcher.get_by_role("link", name="Unassigned")).to_have_text("Unassigned 0")
    arrived(desk, mail(subject="Second fire"))
    expect(watcher.get_by_role("row").filter(has_text="Second fire")).to_be_visible()
    assert watcher.evaluate("window.notReloaded") is True


def test_changes_from_the_command_line_show_on_an_open_conversation(
    web_desk: Callable[..., WebDesk], browser_context: Contexts
) -> None:
    desk = web_desk(round_robin=NO_ROTATION)
    number = arrived(desk, mail(subject="Printer on fire"))
    page = sign_in(browser_context(), desk, "alice")
    page.goto(f"{desk.url}/conversations/{number}")
    page.evaluate("window.notReloaded = true")
    gateway(desk, "assign", str(number), "carol", "--by", "dana")
    expect(page.get_by_label("Assignee")).to_have_value("carol")
    expect(page.get_by_role("list").filter(has_text="assigned to carol by dana")).to_be_visible()
    gateway(desk, "close", str(number))
    expect(page.get_by_role("button", name="Reopen")).to_be_visible()
    assert page.evaluate("window.notReloaded") is True


def test_two_agents_claiming_at_once_one_wins_the_other_is_told_who(
    web_desk: Callable[..., WebDesk], browser_context: Contexts
) -> None:
    desk = web_desk(round_robin=NO_ROTATION)
    number = arrived(desk, mail())
    # Bob's page does not update itself (no script), as if he clicked before it could.
    bob = sign_in(browser_context(java_script_enabled=False), desk, "bob")
    bob.goto(f"{desk.url}/conversations/{number}")
    alice = sign_in(browser_context(), desk, "alice")
    alice.goto(f"{desk.url}/conversations/{number}")
    alice.get_by_role("button", name="Claim").click()
    bob.get_by_role("button", name="Claim").click()
    expect(alice.get_by_role("status")).to_have_text(f"Conversation {number} is now alice's.")
    expect(bob.get_by_role("status")).to_have_text(
        f"Conversation {number} is already assigned to alice."
    )
    assert assignee(desk, number) == "alice"
    assert len(desk.running.events(number, "claimed")) == 1


XSS = (
    b"From: \"<img src=x onerror=alert('name')>\" <evil@example.org>\r\n"
    b"To: support@example.com\r\n"
    b"Subject: <script>alert('subject')</script><img src=x onerror=alert(1)>\r\n"
    b"Message-ID: <xss@example.org>\r\n"
    b"MIME-Version: 1.0\r\n"
    b'Content-Type: multipart/mixed; boundary="b"\r\n\r\n'
    b"--b\r\nContent-Type: text/html; charset=utf-8\r\n\r\n"
    b"<p>Hi</p><script>alert('body')</script><img src=x onerror=alert('img')>"
    b'<a href="javascript:alert(\'link\')">click</a><iframe src="javascript:alert(2)"></iframe>\r\n'
    b"--b\r\nContent-Type: text/plain\r\nContent-Disposition: attachment;"
    b' filename="<img src=x onerror=alert(3)>.txt"\r\n\r\nfile\r\n--b--\r\n'
)


def test_hostile_mail_renders_as_text(
    web_desk: Callable[..., WebDesk], browser_context: Contexts
) -> None:
    desk = web_desk(round_robin=NO_ROTATION, smtp={"listen": ["127.0.0.1:0"]})
    samples = [XSS, *(path.read_bytes() for path in sorted(HOSTILE.glob("*.eml")))]
    for raw in samples:
        deliver(desk.running.port, raw, ["support@example.com"])
    desk.running.drain()
    context = browser_context()
    seen = watch(context)
    page = sign_in(context, desk, "alice")
    page.goto(f"{desk.url}/conversations?view=all")
    expect(
        page.get_by_role("row").filter(has_text="<script>alert('subject')</script>")
    ).to_be_visible()
    ids = [row["id"] for row in desk.running.conversations()]
    assert len(ids) >= len(samples) - 2  # two of the corpus are refused at SMTP
    for number in ids:
        page.goto(f"{desk.url}/conversations/{number}")
        expect(page.get_by_role("heading", level=1)).to_be_visible()
        assert page.locator("img, iframe, a[href^='javascript:']").count() == 0
        assert page.locator("script").count() == 1  # the page's own live.js
    page.goto(f"{desk.url}/conversations/{ids[0]}")  # the XSS mail, the first to arrive
    expect(page.locator("pre")).to_contain_text("Hi")  # its HTML as text: no markup, no link
    files = page.get_by_role("list", name="Attachments")
    expect(files).to_contain_text("<img src=x onerror=alert(3)>.txt (4 bytes)")
    assert seen.problems == []
