"""The web inbox over HTTP against the real daemon: its guards, its sessions, its JSON,
its counts and its live stream; the command line runs as the real `gateway` process."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from email import message_from_bytes, policy
from email.message import EmailMessage
from email.utils import parseaddr
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from yarl import URL

from gateway.config import Settings
from gateway.web.access import COOKIE, SECURE_COOKIE
from tests.conftest import (
    RunningDaemon,
    Sink,
    config_file,
    free_port,
    mail,
    smtp_notify,
    wait_until,
)
from tests.web import AGENTS, PASSWORDS, Client, WebDesk, set_passwords

pytestmark = pytest.mark.integration

NO_ROTATION = {"enabled": False}  # conversations stay unassigned until someone acts
BILLING_RULE = [{"name": "Money", "subject_keywords": ["refund"], "assign_to": "team:billing"}]
WRONG = "The agent or the password is wrong."
_VERSION = re.compile(r'<body data-version="([^"]*)"')
_COUNT = re.compile(r'>([^<>]+) <span class="count">(\d+)</span>')


# --- helpers ---------------------------------------------------------------------------


def arrive(desk: WebDesk, *subjects: str) -> None:
    """Customers' mail over SMTP, one conversation each, taken in by intake."""
    for subject in subjects:
        desk.running.send(mail(subject))
    desk.running.drain()


def config_of(settings: Settings) -> Path:
    return config_file(settings)


async def gateway(
    settings: Settings, *args: str, stdin: str = ""
) -> subprocess.CompletedProcess[str]:
    """The real `gateway` command, another process beside the daemon."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway",
        *args,
        "--config",
        str(config_of(settings)),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    out, err = await process.communicate(stdin.encode())
    assert process.returncode is not None
    return subprocess.CompletedProcess(args, process.returncode, out.decode(), err.decode())


async def ok(desk: WebDesk, *args: str) -> str:
    done = await gateway(desk.running.settings, *args)
    assert done.returncode == 0, done.stderr
    return done.stdout


async def signed_in(desk: WebDesk, agent: str) -> Client:
    browser = desk.client()
    response = await browser.sign_in(agent)
    assert response.status == 303, f"{agent} could not sign in"
    return browser


def state(running: RunningDaemon, conversation_id: int = 1) -> tuple[Any, ...]:
    """What an action would change: assignee, status, events, agents' statuses."""
    [row] = running.query("SELECT * FROM conversations WHERE id = ?", (conversation_id,))
    statuses = running.query("SELECT agent, status FROM agent_status ORDER BY agent")
    return (
        row["assignee"],
        row["status"],
        len(running.events(conversation_id)),
        [tuple(s) for s in statuses],
    )


def cookie_of(browser: Client) -> str | None:
    found = browser.http.cookie_jar.filter_cookies(URL(browser.url)).get(COOKIE)
    return None if found is None else found.value


def details(running: RunningDaemon, conversation_id: int) -> list[tuple[str, str, Any]]:
    return [
        (e["kind"], e["actor"], json.loads(e["detail"]).get("via"))
        for e in running.events(conversation_id)
    ]


def status_of(running: RunningDaemon, agent: str) -> str:
    rows = running.query("SELECT status FROM agent_status WHERE agent = ?", (agent,))
    return str(rows[0]["status"]) if rows else "available"


def counts_on(page: str) -> dict[str, int]:
    return {name: int(count) for name, count in _COUNT.findall(page)}


def counts_in_store(running: RunningDaemon, me: str) -> dict[str, int]:
    def count(where: str = "", *args: str) -> int:
        sql = "SELECT count(*) FROM conversations WHERE status = 'open'" + where
        return int(running.query(sql, args)[0][0])

    return {
        "Mine": count(" AND assignee = ?", me),
        "Unassigned": count(" AND assignee IS NULL"),
        "All": count(),
        "billing": count(" AND team = ?", "billing"),
    }


def version_of(page: str) -> str:
    found = _VERSION.search(page)
    assert found is not None and found.group(1), "the page carries no data version"
    return found.group(1)


async def first_event(response: aiohttp.ClientResponse) -> list[str]:
    """The lines of the stream's first event (comments skipped)."""
    lines: list[str] = []
    async for raw in response.content:
        line = raw.decode().rstrip("\n")
        if line.startswith(":"):
            continue
        if not line and lines:
            return lines
        if line:
            lines.append(line)
    raise AssertionError(f"the stream ended after {lines}")


# --- without a session -------------------------------------------------------------------


async def test_a_page_without_a_session_goes_to_sign_in(web_desk: Callable[..., WebDesk]) -> None:
    desk = web_desk()
    async with desk.client() as browser:
        for path in (
            "/",
            "/conversations",
            "/conversations?view=all",
            "/conversations/1",
            "/agents",
        ):
            async with browser.http.get(path, allow_redirects=False) as response:
                assert response.status == 303, path
                assert response.headers["Location"] == "/login", path


async def test_the_api_and_the_live_stream_without_a_session_answer_401_json(
    web_desk: Callable[..., WebDesk],
) -> None:
    desk = web_desk()
    async with desk.client() as browser:
        for path in ("/api/conversations", "/api/conversations/1", "/live?since=0"):
            async with browser.http.get(path, allow_redirects=False) as response:
                assert response.status == 401, path
                assert response.content_type == "application/json", path
                assert await response.json() == {"error": "Sign in first."}, path


# --- forms from elsewhere ----------------------------------------------------------------


async def test_a_post_without_the_csrf_token_is_refused_and_changes_nothing(
    web_desk: Callable[..., WebDesk],
) -> None:
    desk = web_desk(round_robin=NO_ROTATION)
    arrive(desk, "Where is my parcel?")
    before = state(desk.running)
    async with await signed_in(desk, "bob") as bob:
        response = await bob.post("/conversations/1/claim", {}, csrf=False)
    assert response.status == 403
    assert "nothing was changed" in await response.text()
    assert state(desk.running) == before


async def test_a_post_with_another_sessions_csrf_token_is_refused_and_changes_nothing(
    web_desk: Callable[..., WebDesk],
) -> None:
    desk = web_desk(round_robin=NO_ROTATION)
    arrive(desk, "Where is my parcel?")
    before = state(desk.running)
    async with await signed_in(desk, "alice") as alice, await signed_in(desk, "bob") as bob:
        hers = await alice.csrf()
        response = await bob.post("/conversations/1/claim", {"csrf": hers}, csrf=False)
    assert response.status == 403
    assert state(desk.running) == before


@pytest.mark.parametrize(
    "headers",
    [
        {"Origin": "http://evil.test"},
        {"Origin": "null", "Referer": "http://evil.test/page"},
        {"Referer": "http://evil.test/page"},
        {},
    ],
    ids=["another-origin", "null-origin-foreign-referer", "foreign-referer", "neither"],
)
async def test_a_post_not_from_the_inbox_own_page_is_refused_and_changes_nothing(
    web_desk: Callable[..., WebDesk], headers: dict[str, str]
) -> None:
    desk = web_desk(round_robin=NO_ROTATION)
    arrive(desk, "Where is my parcel?")
    before = state(desk.running)
    async with await signed_in(desk, "bob") as bob:
        response = await bob.post("/conversations/1/claim", {}, headers=headers)
    assert response.status == 403
    assert "was not sent from the inbox" in await response.text()
    assert state(desk.running) == before


async def test_a_post_with_the_own_referer_and_no_origin_is_accepted(
    web_desk: Callable[..., WebDesk],
) -> None:
    desk = web_desk(round_robin=NO_ROTATION)
    arrive(desk, "Where is my parcel?")
    async with await signed_in(desk, "bob") as bob:
        referer = {"Referer": f"{desk.url}/conversations/1"}
        response = await bob.post("/conversations/1/claim", {}, headers=referer)
    assert response.status == 303
    assert state(desk.running)[0] == "bob"


async def test_the_sign_in_form_from_another_origin_is_refused_and_makes_no_session(
    web_desk: Callable[..., WebDesk],
) -> None:
    desk = web_desk()
    async with desk.client() as browser:
        form = {"agent": "bob", "password": PASSWORDS["bob"]}
        response = await browser.post(
            "/login", form, csrf=False, headers={"Origin": "http://evil.test"}
        )
        assert response.status == 403
        assert COOKIE not in response.cookies and cookie_of(browser) is None
    assert desk.running.query("SELECT count(*) FROM web_sessions")[0][0] == 0


async def test_a_request_under_another_host_name_is_refused_and_makes_no_session(
    web_desk: Callable[..., WebDesk],
) -> None:
    """DNS rebinding: an attacker's name pointed at the inbox's address; its own origin
    would pass the Origin check, so the name itself is refused."""
    desk = web_desk()
    port = desk.url.rsplit(":", 1)[1]
    rebound = {"Host": f"evil.test:{port}", "Origin": f"http://evil.test:{port}"}
    async with desk.client() as browser:
        async with browser.http.get("/login", headers={"Host": rebound["Host"]}) as response:
            assert response.status == 421
        form = {"agent": "bob", "password": PASSWORDS["bob"]}
        response = await browser.post("/login", form, csrf=False, headers=rebound)
        assert response.status == 421
    assert desk.running.query("SELECT count(*) FROM web_sessions")[0][0] == 0


async def test_the_base_urls_host_name_and_the_loopback_names_are_served(
    web_desk: Callable[..., WebDesk],
) -> None:
    desk = web_desk(web={"listen": "127.0.0.1:0", "base_url": "https://desk.example.com"})
    port = desk.url.rsplit(":", 1)[1]
    async with desk.client() as browser:
        for host in ("desk.example.com", f"localhost:{port}", f"127.0.0.1:{port}"):
            async with browser.http.get("/login", headers={"Host": host}) as response:
                assert response.status == 200, host


# --- headers ---------------------------------------------------------------------------


async def test_every_kind_of_response_carries_the_secure_headers(
    web_desk: Callable[..., WebDesk],
) -> None:
    desk = web_desk(round_robin=NO_ROTATION)
    arrive(desk, "Where is my parcel?")
    seen: dict[str, tuple[int, Any]] = {}
    async with desk.client() as stranger, await signed_in(desk, "bob") as bob:
        for kind, browser, path in [
            ("page", bob, "/conversations/1"),
            ("redirect", stranger, "/conversations"),
            ("404", bob, "/conversations/99"),
            ("static file", stranger, "/static/inbox.css"),
            ("API 401", stranger, "/api/conversations"),
            ("sign-in page", stranger, "/login"),
            ("SSE stream", bob, "/live?since=0"),
        ]:
            async with browser.http.get(path, allow_redirects=False) as response:
                seen[kind] = (response.status, response.headers)
        refused = await bob.post("/conversations/1/claim", {}, csrf=False)
        seen["403"] = (refused.status, refused.headers)
    assert [status for status, _ in seen.values()] == [200, 303, 404, 200, 401, 200, 200, 403]
    for kind, (_, headers) in seen.items():
        policy_ = headers.get("Content-Security-Policy", "")
        assert "script-src 'self'" in policy_ and "'unsafe-inline'" not in policy_, kind
        assert headers.get("X-Frame-Options") == "DENY", kind
        assert headers.get("X-Content-Type-Options") == "nosniff", kind


# --- signing in --------------------------------------------------------------------------


async def test_a_wrong_password_says_so_and_sets_no_cookie(
    web_desk: Callable[..., WebDesk],
) -> None:
    desk = web_desk()
    async with desk.client() as browser:
        response = await browser.sign_in("bob", "not-bobs")
        assert response.status == 401
        assert WRONG in await response.text()
        assert cookie_of(browser) is None


async def test_an_unknown_agent_is_told_the_same_as_a_wrong_password(
    web_desk: Callable[..., WebDesk],
) -> None:
    desk = web_desk()
    async with desk.client() as browser:
        response = await browser.sign_in("mallory", "anything")
        assert response.status == 401
        assert WRONG in await response.text()
        assert cookie_of(browser) is None


async def test_after_five_failures_for_one_account_even_the_right_password_must_wait(
    web_desk: Callable[..., WebDesk],
) -> None:
    desk = web_desk()
    async with desk.client() as browser:
        for _ in range(5):
            assert (await browser.sign_in("bob", "guess")).status == 401
        response = await browser.sign_in("bob")
        assert response.status == 429
        assert "Too many failed sign-ins; try again in" in await response.text()
        assert cookie_of(browser) is None


async def test_failures_spread_over_accounts_from_one_address_are_slowed_past_twenty(
    web_desk: Callable[..., WebDesk],
) -> None:
    desk = web_desk()
    async with desk.client() as browser:
        for n in range(20):
            assert (await browser.sign_in(f"guess{n}", "guess")).status == 401, n
        response = await browser.sign_in("bob")
        assert response.status == 429
        assert cookie_of(browser) is None


async def test_tries_sent_at_once_count_as_tries_one_after_another(
    web_desk: Callable[..., WebDesk],
) -> None:
    desk = web_desk()
    async with desk.client() as browser:
        answers = await asyncio.gather(*(browser.sign_in("bob", "guess") for _ in range(12)))
        assert sorted(r.status for r in answers) == [401] * 5 + [429] * 7
        assert (await browser.sign_in("bob")).status == 429


async def test_failures_from_another_address_do_not_lock_the_agent_out(
    web_desk: Callable[..., WebDesk],
) -> None:
    """Anyone who knows an agent's id could otherwise keep them out for good."""
    desk = web_desk()
    elsewhere = Client(desk.url, local_address="127.0.0.2")
    async with elsewhere:
        for _ in range(6):
            await elsewhere.sign_in("bob", "guess")
        assert (await elsewhere.sign_in("bob")).status == 429
    async with desk.client() as browser:
        assert (await browser.sign_in("bob")).status == 303


async def test_an_agent_signs_in_with_their_email_address(
    web_desk: Callable[..., WebDesk],
) -> None:
    desk = web_desk()
    async with desk.client() as browser:
        response = await browser.sign_in("Bob@Agents.test", PASSWORDS["bob"])
        assert (response.status, response.headers["Location"]) == (303, "/conversations")
        assert '<span class="me">Bob Roe</span>' in await browser.page("/conversations")


# --- sessions ----------------------------------------------------------------------------


async def test_after_sign_out_the_old_cookie_cannot_act(web_desk: Callable[..., WebDesk]) -> None:
    desk = web_desk(round_robin=NO_ROTATION)
    arrive(desk, "Where is my parcel?")
    before = state(desk.running)
    async with await signed_in(desk, "bob") as bob:
        cookie, token = cookie_of(bob), await bob.csrf()
        assert (await bob.post("/logout", {})).status == 303
    async with desk.client() as copy:  # the cookie as it was, kept by a thief or a tab
        copy.http.cookie_jar.update_cookies({COOKIE: cookie}, URL(desk.url))
        response = await copy.post("/conversations/1/claim", {"csrf": token}, csrf=False)
        assert (response.status, response.headers["Location"]) == (303, "/login")
    assert state(desk.running) == before


async def test_gateway_sign_out_ends_the_agents_live_sessions_at_once(
    web_desk: Callable[..., WebDesk],
) -> None:
    desk = web_desk()
    async with (
        await signed_in(desk, "bob") as laptop,
        await signed_in(desk, "bob") as phone,
        await signed_in(desk, "alice") as alice,
    ):
        for browser in (laptop, phone, alice):  # in use
            await browser.page("/conversations")
        out = await ok(desk, "sign-out", "bob")
        assert "2 sessions ended" in out
        for browser in (laptop, phone):
            async with browser.http.get("/conversations", allow_redirects=False) as response:
                assert (response.status, response.headers["Location"]) == (303, "/login")
        await alice.page("/conversations")  # hers goes on


async def test_the_session_cookie_is_httponly_and_samesite_lax_not_secure_over_http(
    web_desk: Callable[..., WebDesk],
) -> None:
    desk = web_desk()
    async with desk.client() as browser:
        cookie = (await browser.sign_in("bob")).cookies[COOKIE]
    assert cookie["httponly"] and cookie["samesite"] == "Lax"
    assert not cookie["secure"]


async def test_the_session_cookie_is_secure_when_base_url_is_https(
    web_desk: Callable[..., WebDesk],
) -> None:
    desk = web_desk(web={"listen": "127.0.0.1:0", "base_url": "https://desk.example.com"})
    async with desk.client() as browser:
        cookie = (await browser.sign_in("bob")).cookies[SECURE_COOKIE]
    assert cookie["secure"] and cookie["httponly"] and cookie["samesite"] == "Lax"
    # __Host-: no other host of the domain can set it, nor Domain widen it
    assert SECURE_COOKIE.startswith("__Host-") and not cookie["domain"]
    assert cookie["path"] == "/"


async def test_gateway_run_serves_a_signed_in_visit_with_library_warnings_as_errors(
    make_settings: Callable[..., Settings],
) -> None:
    """As the test suite runs the daemon (warnings are errors), but in a process of its own:
    aiohttp warns of a plain-string request key once a process, so only a fresh one shows
    it, as a 500 on the first signed-in page."""
    port = free_port()
    settings = make_settings(agents=AGENTS, web={"listen": f"127.0.0.1:{port}"})
    set_passwords(settings, {"bob": PASSWORDS["bob"]})
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-W",
        "error::UserWarning",
        "-m",
        "gateway",
        "run",
        "--config",
        str(config_of(settings)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        async with Client(f"http://127.0.0.1:{port}") as bob:
            while True:  # until it listens
                with contextlib.suppress(aiohttp.ClientConnectionError):
                    if (await bob.sign_in("bob")).status == 303:
                        break
                await asyncio.sleep(0.05)
            await bob.page("/conversations")
            assert (await bob.post("/agents/bob/status", {"status": "away"})).status == 303
        process.terminate()
        out, err = await process.communicate()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode == 0, err
    logged = [json.loads(line) for line in (out + err).decode().splitlines()]
    assert [line for line in logged if line["level"] not in {"debug", "info"}] == []


# --- gateway set-password --------------------------------------------------------------


async def test_set_password_before_the_first_start_makes_the_store_for_signing_in(
    make_settings: Callable[..., Settings], start_daemon: Callable[..., RunningDaemon]
) -> None:
    settings = make_settings(agents=AGENTS, web={"listen": "127.0.0.1:0"})
    assert not os.access(settings.gateway.database, os.F_OK)  # no store yet
    done = await gateway(settings, "set-password", "bob", stdin="piped-secret-7\n")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("bob can sign in to the web inbox with this password now")
    running = start_daemon(settings)
    assert running.daemon.web_bound is not None
    host, port = running.daemon.web_bound
    async with WebDesk(running, f"http://{host}:{port}").client() as browser:
        assert (await browser.sign_in("bob", "piped-secret-7")).status == 303


async def test_a_new_password_ends_the_sessions_signed_in_with_the_old(
    web_desk: Callable[..., WebDesk],
) -> None:
    desk = web_desk()
    async with await signed_in(desk, "bob") as bob:
        assert (await bob.page("/agents")).count("Bob Roe") >= 1
        done = await gateway(desk.running.settings, "set-password", "bob", stdin="new-secret\n")
        assert done.returncode == 0, done.stderr
        async with bob.http.get("/agents", allow_redirects=False) as response:
            assert (response.status, response.headers["Location"]) == (303, "/login")


async def test_set_password_for_an_unknown_agent_is_refused_with_a_sentence(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings(agents=AGENTS)
    done = await gateway(settings, "set-password", "mallory", stdin="whatever\n")
    assert done.returncode == 1
    assert "mallory" in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert "Traceback" not in done.stderr


async def test_set_password_refuses_an_empty_password(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings(agents=AGENTS)
    done = await gateway(settings, "set-password", "bob", stdin="\n")
    assert (done.returncode, done.stderr.strip()) == (1, "An empty password is refused.")
    assert not os.access(settings.gateway.database, os.F_OK)  # no store yet


# --- the JSON API ------------------------------------------------------------------------


@pytest.fixture
def busy(web_desk: Callable[..., WebDesk]) -> WebDesk:
    """Five conversations handed out in turn, the fourth by the billing rule."""
    desk = web_desk(rules=BILLING_RULE)
    arrive(desk, "first", "second", "third", "refund me", "fifth")
    return desk


async def test_the_api_lists_each_queue_as_gateway_conversations_json_does(
    busy: WebDesk,
) -> None:
    await ok(busy, "unassign", "5")
    await ok(busy, "close", "3")
    queues = {
        "view=all": ["conversations"],
        "view=unassigned": ["conversations", "--unassigned"],
        "view=mine": ["conversations", "--agent", "bob"],
        "view=all&team=billing": ["conversations", "--team", "billing"],
        "view=all&status=closed": ["conversations", "--status", "closed"],
        "view=all&status=all": ["conversations", "--status", "all"],
    }
    printed = await asyncio.gather(*(ok(busy, *args, "--json") for args in queues.values()))
    async with await signed_in(busy, "bob") as bob:
        for query, out in zip(queues, printed, strict=True):
            async with bob.http.get(f"/api/conversations?{query}") as response:
                assert response.status == 200, query
                assert await response.json() == json.loads(out), query
    assert [len(json.loads(out)) for out in printed] == [4, 1, 1, 1, 1, 5]


async def test_the_api_shows_a_conversation_as_gateway_show_json_does(busy: WebDesk) -> None:
    await ok(busy, "close", "1")
    printed = json.loads(await ok(busy, "show", "1", "--json"))
    async with await signed_in(busy, "bob") as bob, bob.http.get("/api/conversations/1") as got:
        assert got.status == 200
        assert await got.json() == printed


async def test_the_api_answers_an_unknown_conversation_with_404_json(
    web_desk: Callable[..., WebDesk],
) -> None:
    desk = web_desk()
    async with await signed_in(desk, "bob") as bob, bob.http.get("/api/conversations/9") as got:
        assert got.status == 404
        assert await got.json() == {"error": "There is no conversation 9."}


async def test_the_api_answers_a_bad_view_with_400_json(web_desk: Callable[..., WebDesk]) -> None:
    desk = web_desk()
    async with await signed_in(desk, "bob") as bob:
        for query in ("view=everything", "status=pending", "limit=lots"):
            async with bob.http.get(f"/api/conversations?{query}") as got:
                assert got.status == 400, query
                assert "view is mine, unassigned or all" in (await got.json())["error"], query


# --- counts, actions, the claim race, statuses ------------------------------------------


async def test_the_queue_counts_follow_the_command_lines_changes(
    web_desk: Callable[..., WebDesk],
) -> None:
    desk = web_desk(round_robin=NO_ROTATION, rules=BILLING_RULE)
    arrive(desk, "first", "second", "refund me")
    async with await signed_in(desk, "bob") as bob:
        shown = counts_on(await bob.page("/conversations"))

        async def moved_by(*command: str) -> dict[str, int]:
            """What the counts on the next page moved by; they are the store's."""
            nonlocal shown
            await ok(desk, *command)
            before, shown = shown, counts_on(await bob.page("/conversations"))
            assert shown == counts_in_store(desk.running, "bob"), command
            return {
                name: shown[name] - before[name] for name in shown if shown[name] != before[name]
            }

        assert shown == {"Mine": 0, "Unassigned": 2, "All": 3, "billing": 1}  # billing's: alice's
        assert await moved_by("claim", "1", "bob") == {"Mine": 1, "Unassigned": -1}
        assert await moved_by("assign", "3", "bob") == {"Mine": 1}
        assert await moved_by("close", "3") == {"Mine": -1, "All": -1, "billing": -1}


async def test_actions_through_the_web_record_the_signed_in_agent_and_via_web(
    web_desk: Callable[..., WebDesk],
) -> None:
    desk = web_desk(round_robin=NO_ROTATION, notify={"enabled": False})  # its events alone
    arrive(desk, "Where is my parcel?")
    async with await signed_in(desk, "bob") as bob:
        for action, form in [
            ("claim", {}),
            ("assign", {"agent": "carol"}),
            ("assign", {"agent": ""}),
            ("close", {}),
            ("reopen", {}),
        ]:
            assert (await bob.post(f"/conversations/1/{action}", form)).status == 303, action
    assert details(desk.running, 1)[1:] == [
        ("claimed", "bob", "web"),
        ("reassigned", "bob", "web"),
        ("unassigned", "bob", "web"),
        ("closed", "bob", "web"),
        ("reopened", "bob", "web"),
    ]


async def test_two_agents_claiming_at_once_one_wins_and_the_other_is_told_who(
    web_desk: Callable[..., WebDesk],
) -> None:
    desk = web_desk(round_robin=NO_ROTATION)
    arrive(desk, "Where is my parcel?")
    async with await signed_in(desk, "alice") as alice, await signed_in(desk, "bob") as bob:
        tokens = await asyncio.gather(alice.csrf(), bob.csrf())
        await asyncio.gather(
            *(
                browser.post("/conversations/1/claim", {"csrf": token}, csrf=False)
                for browser, token in zip((alice, bob), tokens, strict=True)
            )
        )
        [claimed] = desk.running.events(1, "claimed")
        winner = claimed["agent"]
        loser = bob if winner == "alice" else alice
        page = await loser.page("/conversations/1")
    assert f"Conversation 1 is already assigned to {winner}." in page
    assert state(desk.running)[0] == winner


async def test_an_agent_sets_their_own_status(web_desk: Callable[..., WebDesk]) -> None:
    desk = web_desk()
    async with await signed_in(desk, "bob") as bob:
        assert (await bob.post("/agents/bob/status", {"status": "away"})).status == 303
    assert status_of(desk.running, "bob") == "away"


async def test_what_an_action_did_is_said_on_the_next_page_not_on_a_live_refresh(
    web_desk: Callable[..., WebDesk],
) -> None:
    """The page before the action, told of it by its stream, fetches itself meanwhile."""
    desk = web_desk()
    async with await signed_in(desk, "bob") as bob:
        await bob.post("/agents/bob/status", {"status": "away"})
        async with bob.http.get("/agents", headers={"X-Live-Refresh": "1"}) as refresh:
            assert "bob is now away." not in await refresh.text()
        assert "bob is now away." in await bob.page("/agents")


async def test_an_agent_setting_anothers_status_is_refused_and_changes_nothing(
    web_desk: Callable[..., WebDesk],
) -> None:
    desk = web_desk()
    async with await signed_in(desk, "bob") as bob:
        await bob.post("/agents/carol/status", {"status": "away"})
        assert "Only a manager may set another agent" in await bob.page("/agents")
    assert desk.running.query("SELECT * FROM agent_status") == []


async def test_a_manager_sets_another_agents_status(web_desk: Callable[..., WebDesk]) -> None:
    desk = web_desk()
    async with await signed_in(desk, "alice") as alice:
        assert (await alice.post("/agents/bob/status", {"status": "dnd"})).status == 303
    assert status_of(desk.running, "bob") == "dnd"


# --- live --------------------------------------------------------------------------------


async def test_the_live_stream_says_changed_after_the_command_line_changes_something(
    web_desk: Callable[..., WebDesk],
) -> None:
    desk = web_desk(round_robin=NO_ROTATION)
    arrive(desk, "Where is my parcel?")
    async with await signed_in(desk, "bob") as bob:
        since = version_of(await bob.page("/conversations"))
        async with bob.http.get(f"/live?since={since}") as stream:
            assert stream.status == 200
            await ok(desk, "close", "1")
            newest = desk.running.query("SELECT max(id) FROM events")[0][0]
            event = await first_event(stream)
    assert event[1] == "event: changed"
    assert event[0] != f"id: {since}" and event[0].startswith(f"id: {newest}.")


async def test_the_live_stream_says_changed_at_once_when_its_version_is_stale(
    web_desk: Callable[..., WebDesk],
) -> None:
    desk = web_desk(round_robin=NO_ROTATION)
    arrive(desk, "Where is my parcel?")
    async with await signed_in(desk, "bob") as bob:
        since = version_of(await bob.page("/conversations"))
        await ok(desk, "close", "1")  # between the page and its stream
        # Another page after it: the server knows the new version before the stream asks.
        now = version_of(await bob.page("/conversations"))
        async with bob.http.get(f"/live?since={since}") as stream:
            # A later change: a stream that waited for a change would tell of this one.
            await ok(desk, "reopen", "1")
            event = await first_event(stream)
    assert event == [f"id: {now}", "event: changed", f"data: {now}"]


# --- mail ------------------------------------------------------------------------------


async def test_an_alert_links_to_the_conversation_in_the_web_inbox(
    web_desk: Callable[..., WebDesk],
) -> None:
    port = free_port()
    desk = web_desk(web={"listen": f"127.0.0.1:{port}"})
    arrive(desk, "Where is my parcel?")
    alerts = Path(desk.running.settings.notify.file_dir)
    [alert] = wait_until(lambda: list(alerts.glob("*.eml")), what="the alert file")
    message = message_from_bytes(alert.read_bytes(), policy=policy.default)
    assert isinstance(message, EmailMessage)
    body = message.get_body(("plain",))
    assert body is not None
    link = f"http://127.0.0.1:{port}/conversations/1"
    assert f"Open it in the web inbox: {link}" in str(body.get_content())
    async with await signed_in(desk, "alice") as alice:
        assert "<h1>Where is my parcel?</h1>" in await alice.page(link)


async def test_a_reply_through_the_web_reaches_the_customer_from_the_inbox(
    web_desk: Callable[..., WebDesk], sink: Sink
) -> None:
    desk = web_desk(round_robin=NO_ROTATION, notify=smtp_notify(sink.port))
    arrive(desk, "Where is my parcel?")
    text = "Hello,\nyour lamp ships today.\n\nAlice"
    async with await signed_in(desk, "alice") as alice:
        assert (await alice.post("/conversations/1/reply", {"text": text})).status == 303
    [envelope] = wait_until(
        lambda: [e for e in sink.received if e.rcpt_tos == ["customer@example.org"]],
        what="the answer at the sink",
    )
    answer = message_from_bytes(envelope.original_content, policy=policy.default)
    assert isinstance(answer, EmailMessage)
    body = answer.get_body(("plain",))
    assert body is not None
    assert str(body.get_content()).replace("\r\n", "\n").strip() == text
    assert parseaddr(str(answer["From"]))[1] == "support@example.com"
    assert ("replied", "alice", "web") in details(desk.running, 1)


async def test_a_refused_answer_comes_back_in_the_reply_box_with_why(
    web_desk: Callable[..., WebDesk],
) -> None:
    desk = web_desk(round_robin=NO_ROTATION)
    desk.running.send(mail())
    desk.running.drain()
    draft = "Write to alice@agents.test directly, she knows."
    async with await signed_in(desk, "bob") as bob:
        response = await bob.post("/conversations/1/reply", {"text": draft})
        assert (response.status, response.headers["Location"]) == (303, "/conversations/1")
        page = await bob.page("/conversations/1")
        assert f">{draft}</textarea>" in page
        assert "no customer may see" in page
        assert f">{draft}</textarea>" not in await bob.page("/conversations/1")  # once
    assert desk.running.query("SELECT count(*) FROM outbox WHERE kind = 'answer'")[0][0] == 0


async def test_a_mangled_page_link_shows_the_first_page(web_desk: Callable[..., WebDesk]) -> None:
    desk = web_desk()
    async with await signed_in(desk, "bob") as bob:
        for query in ("after=garbage&after_id=1", "after=2026-01-01T00:00:00%2B00:00&after_id=²"):
            assert "<h1>Conversations</h1>" in await bob.page(f"/conversations?view=all&{query}")
        for path in ("/conversations/²", "/conversations/99999999999999999999"):
            async with bob.http.get(path, allow_redirects=False) as response:
                assert response.status == 404, path


async def test_the_api_refuses_a_limit_past_a_thousand_and_a_mangled_page(
    web_desk: Callable[..., WebDesk],
) -> None:
    desk = web_desk()
    async with await signed_in(desk, "bob") as bob:
        for query in ("limit=0", "limit=1001", "limit=²", "after=garbage&after_id=1"):
            async with bob.http.get(f"/api/conversations?view=all&{query}") as response:
                assert response.status == 400, query
                assert "limit 1 to 1000" in (await response.json())["error"]
