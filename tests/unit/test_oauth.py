"""Token requests against a real local token endpoint (tests/tokens.py, over HTTP)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from gateway import oauth
from gateway.config import ImapSection
from tests.conftest import free_port
from tests.tokens import TokenServer


def mailbox(tokens: TokenServer, tmp_path: Path, **extra: Any) -> ImapSection:
    (tmp_path / "client.secret").write_text(tokens.client_secret + "\n")
    refresh = tmp_path / "support.refresh"
    if not refresh.exists():
        refresh.write_text(tokens.refresh_token_for("support") + "\n")
    keys: dict[str, Any] = {
        "host": "127.0.0.1",
        "username": "support",
        "auth": "oauth2",
        "token_url": tokens.token_url,
        "client_id": tokens.client_id,
        "client_secret_file": str(tmp_path / "client.secret"),
        "refresh_token_file": str(refresh),
        **extra,
    }
    return ImapSection(**keys)


async def test_a_token_is_held_and_renewed_a_tenth_of_its_life_before_it_expires(
    tokens: TokenServer, tmp_path: Path
) -> None:
    tokens.lifetime = 2  # renewed after 1.8 s: the server may see it a little later
    imap = mailbox(tokens, tmp_path)
    asked = time.monotonic()
    first = await oauth.access_token(imap)
    assert await oauth.access_token(imap) == first
    await asyncio.sleep(asked + 1.9 - time.monotonic())  # in the last tenth of its life
    assert await oauth.access_token(imap) != first


async def test_a_refresh_token_the_endpoint_rotates_is_used_for_the_next_token(
    tokens: TokenServer, tmp_path: Path
) -> None:
    tokens.rotate = True  # the file's token is dead after the first refresh
    imap = mailbox(tokens, tmp_path)
    first = await oauth.access_token(imap)
    second = await oauth.access_token(imap, refused=first)
    assert second != first and tokens.grants == ["refresh_token", "refresh_token"]


async def test_a_new_refresh_token_in_the_file_wins_over_the_one_held(
    tokens: TokenServer, tmp_path: Path
) -> None:
    tokens.rotate = True
    imap = mailbox(tokens, tmp_path)
    first = await oauth.access_token(imap)
    tokens.revoke("support")  # the consent given again: the rotated one is dead too
    (tmp_path / "support.refresh").write_text(tokens.refresh_token_for("support") + "\n")
    assert await oauth.access_token(imap, refused=first) != first


async def test_a_cancelled_request_keeps_the_refresh_token_the_endpoint_rotated(
    tokens: TokenServer, tmp_path: Path
) -> None:
    """A stop in the middle of a renewal: the endpoint has rotated the refresh token, so
    the answer must still be kept, or the next renewal presents a dead one."""
    tokens.rotate = True
    imap = mailbox(tokens, tmp_path)
    asking = asyncio.ensure_future(oauth.access_token(imap))
    # The endpoint has answered; the answer is on its way.
    assert await asyncio.to_thread(tokens.granted.wait, 10)
    asking.cancel()
    first = await oauth.access_token(imap)
    assert await oauth.access_token(imap, refused=first) != first
    assert tokens.grants == ["refresh_token", "refresh_token"]


async def test_a_revoked_refresh_token_is_said_without_the_token(
    tokens: TokenServer, tmp_path: Path
) -> None:
    imap = mailbox(tokens, tmp_path)
    tokens.revoke("support")  # and the endpoint quotes it in its answer
    with pytest.raises(oauth.TokenError) as refused:
        await oauth.access_token(imap)
    assert str(refused.value) == (
        "the token endpoint refused the refresh token: invalid_grant (Refresh token … is revoked.)"
    )


async def test_a_wrong_client_secret_is_said_as_the_client_refused(
    tokens: TokenServer, tmp_path: Path
) -> None:
    imap = mailbox(tokens, tmp_path)
    (tmp_path / "client.secret").write_text("not-the-secret\n")
    with pytest.raises(oauth.TokenError) as refused:
        await oauth.access_token(imap)
    assert str(refused.value) == (
        "the token endpoint refused the client: invalid_client (Unknown client.)"
    )


async def test_an_endpoint_that_is_not_there_and_a_missing_secret_file_are_sentences(
    tokens: TokenServer, tmp_path: Path
) -> None:
    gone = mailbox(tokens, tmp_path, token_url=f"http://127.0.0.1:{free_port()}/token")
    with pytest.raises(oauth.TokenError, match=r"^the token endpoint cannot be reached: "):
        await oauth.access_token(gone)
    missing = mailbox(tokens, tmp_path, client_secret_file=str(tmp_path / "nowhere"))
    with pytest.raises(oauth.TokenError) as unread:
        await oauth.access_token(missing)
    nowhere = str(tmp_path / "nowhere")
    assert str(unread.value) == (
        f"client_secret_file {nowhere!r} cannot be read: No such file or directory"
    )
