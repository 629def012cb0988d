"""The web inbox's server: aiohttp in the daemon's own loop (no thread, no signal
handlers of its own), its guards as middlewares, secure headers on every response."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from importlib import resources

import structlog
from aiohttp import web

from gateway.clock import Clock
from gateway.config import Settings
from gateway.errors import GatewayError, StoreUnavailable
from gateway.store.db import Database
from gateway.web import access, pages
from gateway.web.desk import DESK, Desk, templates
from gateway.web.live import Watch

log = structlog.get_logger("gateway.web")

# No inline script, no other site's anything; framed by nobody.
POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self';"
    " connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none';"
    " object-src 'none'"
)
HEADERS = {
    "Content-Security-Policy": POLICY,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cross-Origin-Opener-Policy": "same-origin",
}


@web.middleware
async def _unavailable(request: web.Request, handler: access.Handler) -> web.StreamResponse:
    """The store busy or failing: a sentence and 503, never the error's text."""
    try:
        return await handler(request)
    except StoreUnavailable as error:
        log.warning("web.store_unavailable", path=request.path, error=str(error))
        return web.Response(
            status=503,
            text="The inbox cannot reach its store just now; nothing was changed. Try again.",
        )


@web.middleware
async def _guarded(request: web.Request, handler: access.Handler) -> web.StreamResponse:
    desk = request.app[DESK]
    if desk.hosts is not None and request.host not in desk.hosts:
        return web.Response(
            status=421,
            text=f"This inbox is not served under the name {request.host!r};"
            " open it at its own address.",
        )
    if request.method == "POST" and not access.same_origin(request, desk.settings):
        return pages.forbidden(
            request, "This form was not sent from the inbox's own page; nothing was changed."
        )
    if access.public(request.path):
        return await handler(request)
    token = request.cookies.get(access.cookie_name(desk.settings))
    session = await desk.guard.session(desk.settings, token)
    if session is None:
        if request.path.startswith("/api/") or request.path == "/live":
            return web.json_response({"error": "Sign in first."}, status=401)
        raise web.HTTPSeeOther("/login")
    if request.method == "POST":
        form = await request.post()
        if not access.csrf_ok(session, form.get("csrf")):
            return pages.forbidden(
                request,
                "This form is out of date (its security token does not match your session);"
                " nothing was changed. Reload the page and try again.",
            )
    request[pages.SESSION] = session
    return await handler(request)


async def _secure(request: web.Request, response: web.StreamResponse) -> None:
    response.headers.update(HEADERS)
    if "Cache-Control" not in response.headers:
        response.headers["Cache-Control"] = "no-store"  # pages hold customers' mail


def application(desk: Desk) -> web.Application:
    app = web.Application(middlewares=[_unavailable, _guarded], client_max_size=2 * 1024 * 1024)
    app[DESK] = desk
    app.on_response_prepare.append(_secure)
    pages.routes(app)
    app.router.add_static("/static", str(resources.files("gateway.web") / "static"))
    return app


class WebInbox:
    """Started and stopped by the daemon; `prepare` follows its reloads."""

    def __init__(
        self, settings: Settings, db: Database, clock: Clock, wake: Callable[[], None]
    ) -> None:
        self._settings = settings
        self._wake = wake
        self._db = db
        self._clock = clock
        self._runner: web.AppRunner | None = None
        self._desk: Desk | None = None
        self._watching: asyncio.Task[None] | None = None
        self.bound: tuple[str, int] | None = None

    async def start(self, *, shared: bool = False) -> None:
        """Serve the inbox; `shared`: on a port the other daemons sharing the store share
        (SO_REUSEPORT)."""
        endpoint = self._settings.web.endpoint()
        if endpoint is None:
            return
        reader = await Database.open(self._db.path, readonly=True)
        watch = Watch(reader, self._db)
        guard = access.Guard(self._db, reader, self._clock)
        self._desk = Desk(
            self._settings, self._db, reader, guard, watch, templates(), self._clock, self._wake
        )
        self._runner = web.AppRunner(
            application(self._desk), handle_signals=False, access_log=None, shutdown_timeout=5
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, *endpoint, reuse_port=shared)
        try:
            await site.start()
        except OSError as error:
            await self._close()
            raise GatewayError(
                f"web.listen: cannot listen on {endpoint[0]}:{endpoint[1]}: {error.strerror}"
            ) from None
        self._watching = asyncio.create_task(watch.run())
        host, port = self._runner.addresses[0][:2]  # the port the system gave, for port 0
        self.bound = (str(host), int(port))
        self._desk.hosts = access.hosts(self._settings, self.bound)
        log.info("web.ready", listen=f"{host}:{port}")

    def prepare(self, settings: Settings) -> Callable[[], None]:
        def use() -> None:
            self._settings = settings
            if self._desk is not None:
                self._desk.settings = settings
                self._desk.forget()
                if self.bound is not None:
                    self._desk.hosts = access.hosts(settings, self.bound)

        return use

    async def stop(self) -> None:
        if self._desk is not None:
            self._desk.watch.stop()
        await self._close()

    async def _close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._watching is not None:
            await asyncio.gather(self._watching, return_exceptions=True)  # run() logs its own
            self._watching = None
        if self._desk is not None:
            self._desk.guard.close()
            await self._desk.reader.close()
            self._desk = None
