"""The pages and the JSON API: each handler reads through the web's own connection, or
turns a form into one of `gateway.actions`, with the signed-in agent as actor."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Mapping
from datetime import datetime
from typing import Any
from urllib.parse import urlencode

from aiohttp import web
from markupsafe import Markup

from gateway import actions, clock, views
from gateway.actions import Actor
from gateway.errors import Refused, StoreUnavailable
from gateway.model import STATUSES
from gateway.web import access
from gateway.web.desk import DESK, Desk
from gateway.web.live import stream
from gateway.wording import describe, waited, when

LIVE_HEADER = "X-Live-Refresh"  # live.js's fetch of the page after `changed`
# A typed key: a plain string makes aiohttp warn (an error under `-W error`, a 500).
SESSION = web.RequestKey("session", access.Session)
VIEWS = ("mine", "unassigned", "all")
SHOWN = {"open": "open", "closed": "closed", "all": None}  # the status filter: what is listed
API_USAGE = (
    "view is mine, unassigned or all; status open, closed or all; limit 1 to 1000;"
    " after and after_id as a page's last conversation's last_message_at and id"
)
API_LIMIT = 100  # conversations an API call lists unless it asks
API_MOST = 1000  # at most, a call: the rest by `after` (one read holds the others up)
_NUMBER = re.compile(r"[0-9]{1,18}")


def routes(app: web.Application) -> None:
    add = app.router
    add.add_get("/", home)
    add.add_get("/login", login_page)
    add.add_post("/login", login)
    add.add_post("/logout", logout)
    add.add_get("/conversations", conversations)
    add.add_get(r"/conversations/{id:[0-9]{1,18}}", conversation)
    add.add_post(r"/conversations/{id:[0-9]{1,18}}/{action}", act)
    add.add_get("/agents", agents)
    add.add_post("/agents/{agent}/status", set_status)
    add.add_get("/api/conversations", api_conversations)
    add.add_get(r"/api/conversations/{id:[0-9]{1,18}}", api_conversation)
    add.add_get("/live", live)


async def home(request: web.Request) -> web.Response:
    raise web.HTTPSeeOther("/conversations")


def _desk(request: web.Request) -> Desk:
    return request.app[DESK]


def _session(request: web.Request) -> access.Session:
    return request[SESSION]


def render(
    request: web.Request, template: str, *, status: int = 200, **context: Any
) -> web.Response:
    desk = _desk(request)
    session = request.get(SESSION)
    page = desk.templates.get_template(template).render(
        me=session.agent if session else None,
        csrf=session.csrf if session else "",
        # A note is for the page opened next, not for live.js's fetch of the one before.
        note=desk.notes.pop(session.key, None)
        if session and not request.headers.get(LIVE_HEADER)
        else None,
        version=context.pop("version", ""),
        **context,
    )
    return web.Response(text=page, status=status, content_type="text/html")


def forbidden(request: web.Request, why: str) -> web.Response:
    return render(request, "refused.html", status=403, why=why)


def _note(request: web.Request, text: str) -> None:
    _desk(request).notes[_session(request).key] = text


# --- signing in and out ----------------------------------------------------------------


async def login_page(request: web.Request) -> web.Response:
    return render(request, "login.html", error=None, name="")


async def login(request: web.Request) -> web.Response:
    desk = _desk(request)
    form = await request.post()
    name, password = str(form.get("agent", "")), str(form.get("password", ""))
    try:
        token, _ = await desk.guard.sign_in(desk.settings, name, password, request.remote or "")
    except Refused as refusal:
        status = 429 if isinstance(refusal, access.Throttled) else 401
        return render(request, "login.html", status=status, error=str(refusal), name=name)
    response = web.HTTPSeeOther("/conversations")
    response.set_cookie(
        access.cookie_name(desk.settings),
        token,
        max_age=access.SESSION_DAYS * 86400,
        httponly=True,
        samesite="Lax",
        secure=access.secure(desk.settings),
        path="/",
    )
    raise response


async def logout(request: web.Request) -> web.Response:
    await _desk(request).guard.sign_out(_session(request).key)
    response = web.HTTPSeeOther("/login")
    response.del_cookie(access.cookie_name(_desk(request).settings), path="/")
    raise response


# --- conversations ---------------------------------------------------------------------


async def conversations(request: web.Request) -> web.Response:
    desk = _desk(request)
    me = _session(request).agent
    query = request.query
    view = query.get("view", "mine")
    view = view if view in VIEWS else "mine"
    team = _team(desk, query)
    if team == "":
        raise web.HTTPNotFound(text=f"There is no team {query['team']!r}.")
    shown = query.get("status", "open")
    shown = shown if shown in SHOWN else "open"
    try:
        after = _after(query)
    except ValueError:  # a link mangled: its first page
        after = None
    version = await _version(request)
    counts = await desk.shared(
        version, "counts", lambda: views.open_counts(desk.reader, desk.settings)
    )
    mine = await views.open_count_of(desk.reader, me.id)

    here = {"view": view, "status": shown} | ({"team": team} if team else {})
    now = desk.clock()

    async def listing() -> Markup:
        page = await views.queue_page(
            desk.reader,
            assignee=me.id if view == "mine" else None,
            unassigned=view == "unassigned",
            team=team,
            status=SHOWN[shown],
            after=after,
        )
        following = None
        if page["next"]:
            stamp, last = page["next"]
            following = "?" + urlencode(here | {"after": stamp, "after_id": last})
        names = _names(desk)
        rows = [
            c
            | {
                "waited": waited(c["last_message_at"], now),
                "assignee_name": names.get(c["assignee"], c["assignee"]),
            }
            for c in page["conversations"]
        ]
        caption = f"{view.capitalize()}{f' of team {team}' if team else ''}, {shown}"
        return Markup(
            desk.templates.get_template("queue.html").render(
                rows=rows,
                caption=caption,
                following=following,
                first="?" + urlencode(here) if after else None,
            )
        )

    # The same for everyone who looks at this queue (Mine: the agent's tabs) at this
    # version in this minute (waiting times are in minutes): made once.
    minute = now.replace(second=0, microsecond=0)
    whose = me.id if view == "mine" else None
    key = ("queue", view, whose, team, shown, after, minute)
    listed = await desk.shared(version, key, listing)
    return render(
        request,
        "conversations.html",
        version=version,
        view=view,
        team=team,
        shown=shown,
        counts={"mine": mine, "unassigned": counts["unassigned"], "all": counts["all"]},
        teams=counts["teams"],
        listing=listed,
        link=lambda **change: "?" + urlencode({k: v for k, v in (here | change).items() if v}),
    )


def _team(desk: Desk, query: Mapping[str, str]) -> str | None:
    """The team a queue is of (None: no team asked); "" when the one named is not one."""
    team = query.get("team") or None
    if team is None or team in {t.id for t in desk.settings.teams}:
        return team
    return ""


def _after(query: Mapping[str, str]) -> tuple[str, int] | None:
    """Where a page of a queue starts (after= and after_id=: the previous page's last);
    ValueError when they are not a time and an id."""
    stamp, number = query.get("after"), query.get("after_id", "")
    if not stamp:
        return None
    moment = datetime.fromisoformat(stamp)
    if moment.tzinfo is None or not _NUMBER.fullmatch(number):
        raise ValueError("after is not a stored time, or after_id not an id")
    return clock.stamp(moment), int(number)


async def _version(request: web.Request) -> str:
    """The data version a page is built at: read now for a page someone opened; for
    live.js's fetch after `changed`, the version its stream announced, so the pages every
    open browser fetches at once share their reads (what they read is that or newer)."""
    watch = _desk(request).watch
    return await (watch.current() if request.headers.get(LIVE_HEADER) else watch.read())


def _names(desk: Desk) -> dict[str | None, str]:
    return {a.id: a.name or a.id for a in desk.settings.agents}


async def conversation(request: web.Request) -> web.Response:
    desk = _desk(request)
    number = int(request.match_info["id"])
    session = _session(request)
    # An answer refused: the agent's text back in the box (on the page they open next).
    draft = "" if request.headers.get(LIVE_HEADER) else desk.drafts.pop((session.key, number), "")
    version = await _version(request)
    try:
        view = await desk.shared(
            version, ("show", number), lambda: views.show(desk.reader, number, desk.texts())
        )
    except Refused as refusal:
        raise web.HTTPNotFound(text=str(refusal)) from None
    return render(
        request,
        "conversation.html",
        version=version,
        c=view,
        names=_names(desk),
        agents=desk.settings.agents,
        events=[e | {"line": describe(e), "when": when(e["at"])} for e in view["events"]],
        messages=[m | {"when": when(m["received_at"])} for m in view["messages"]],
        draft=draft,
        size=_size,
    )


def _size(octets: int) -> str:
    if octets < 1024:
        return f"{octets} bytes"
    if octets < 1024 * 1024:
        return f"{octets / 1024:.0f} KB"
    return f"{octets / 1024 / 1024:.1f} MB"


async def act(request: web.Request) -> web.Response:
    """A button of the conversation page: Assign, Claim, Close, Reopen, Send reply."""
    number = int(request.match_info["id"])
    form = await request.post()
    action: actions.Action
    match request.match_info["action"]:
        case "assign":
            agent = str(form.get("agent", ""))
            action = actions.Assign(number, agent) if agent else actions.Unassign(number)
        case "claim":
            action = actions.Claim(number)
        case "close":
            action = actions.Close(number)
        case "reopen":
            action = actions.Reopen(number)
        case "reply":
            action = actions.Reply(number, str(form.get("text", "")))
        case _:
            raise web.HTTPNotFound(text="There is no such action.")
    result = await _perform(request, action)
    if result.state == "refused" and isinstance(action, actions.Reply):
        _desk(request).drafts[_session(request).key, number] = action.text
    raise web.HTTPSeeOther(f"/conversations/{number}")


async def _perform(request: web.Request, action: actions.Action) -> actions.Result:
    desk = _desk(request)
    actor = Actor(_session(request).agent.id, "web")
    result = await actions.perform(desk.db, desk.settings, actor, action, desk.clock)
    if result.outbox or result.given:
        desk.wake()
    _note(request, result.text)
    # The page after it carries the version that holds it; the store busy now, the
    # watcher's next read will (what was done is done: never answer "try again").
    with contextlib.suppress(StoreUnavailable):
        await desk.watch.read()
    return result


# --- agents ------------------------------------------------------------------------


async def agents(request: web.Request) -> web.Response:
    desk = _desk(request)
    version = await _version(request)
    found = await desk.shared(version, "agents", lambda: views.agents(desk.reader, desk.settings))
    me = _session(request).agent
    return render(
        request,
        "agents.html",
        version=version,
        agents=found,
        mine=next(a for a in found if a["id"] == me.id),
        manager=me.role == "manager",
        statuses=STATUSES,
    )


async def set_status(request: web.Request) -> web.Response:
    """Set an agent's availability: one's own, or anyone's for a manager."""
    me = _session(request).agent
    agent = request.match_info["agent"]
    form = await request.post()
    if agent != me.id and me.role != "manager":
        _note(request, "Only a manager may set another agent's status; nothing changed.")
    else:
        await _perform(request, actions.SetStatus(agent, str(form.get("status", ""))))
    raise web.HTTPSeeOther("/agents")


# --- JSON for scripts and the live stream ----------------------------------------------


async def api_conversations(request: web.Request) -> web.Response:
    """GET /api/conversations?view=mine|unassigned|all&team=&status=open|closed|all&limit=N"""
    desk = _desk(request)
    query = request.query
    view = query.get("view", "mine")
    shown = query.get("status", "open")
    limit = query.get("limit", str(API_LIMIT))
    try:
        after = _after(query)
    except ValueError:
        after = None
        limit = ""
    bad_limit = not _NUMBER.fullmatch(limit) or not 0 < int(limit) <= API_MOST
    if view not in VIEWS or shown not in SHOWN or bad_limit:
        return web.json_response({"error": API_USAGE}, status=400)
    team = _team(desk, query)
    if team == "":
        return web.json_response({"error": f"There is no team {query['team']!r}."}, status=404)
    found = await views.conversations(
        desk.reader,
        status=SHOWN[shown],
        assignee=_session(request).agent.id if view == "mine" else None,
        team=team,
        unassigned=view == "unassigned",
        limit=int(limit),
        after=after,
    )
    return web.json_response(found)


async def api_conversation(request: web.Request) -> web.Response:
    try:
        found = await views.show(_desk(request).reader, int(request.match_info["id"]))
    except Refused as refusal:
        return web.json_response({"error": str(refusal)}, status=404)
    return web.json_response(found)


async def live(request: web.Request) -> web.StreamResponse:
    desk = _desk(request)
    token = request.cookies.get(access.cookie_name(desk.settings))

    async def signed_in() -> bool:
        with contextlib.suppress(StoreUnavailable):
            return await desk.guard.session(desk.settings, token) is not None
        return True  # the store busy: ask again at the next quiet spell

    return await stream(request, desk.watch, signed_in)
