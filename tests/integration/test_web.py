"""The web inbox over HTTP against the real daemon: its guards and its JSON."""

from __future__ import annotations

from collections.abc import Callable

from tests.web import WebDesk


async def test_a_page_without_a_session_goes_to_sign_in(web_desk: Callable[..., WebDesk]) -> None:
    desk = web_desk()
    async with desk.client() as browser:
        for path in ("/", "/conversations", "/conversations/1", "/agents"):
            async with browser.http.get(path, allow_redirects=False) as response:
                assert response.status == 303, path
                assert response.headers["Location"] in {"/login", "/conversations"}, path
