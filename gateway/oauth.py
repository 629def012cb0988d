"""OAuth 2.0 access tokens for mailboxes that take XOAUTH2 (Microsoft 365, Google).

A token comes from the mailbox's token endpoint (RFC 6749): for a refresh token
(§6), or for the client's own credentials (§4.4). It is held per mailbox and
renewed shortly before it expires, or at once when the server refuses it. A
refresh token the endpoint replaces (rotation) is held in memory, not written
back to its file: a new one put in the file wins over it.

Tokens are held per event loop: the daemon's poller and keyword writer share
them; `gateway check` has its own.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from gateway.config import ImapSection

TIMEOUT_SECONDS = 30.0
EARLY_SECONDS = 60.0  # renewed this long before it expires, or a tenth of its life if shorter
_DESCRIPTION_CHARS = 200  # Microsoft's run to several lines of trace ids


class TokenError(Exception):
    """No token could be had: said in a sentence that holds no secret."""


@dataclass
class _Held:
    access_token: str | None = None
    renew_at: float = 0.0  # time.monotonic()
    refresh_token: str | None = None  # the endpoint's latest, when it rotates them
    from_file: str | None = None  # the file's when refresh_token was had: a new one there wins
    renewing: asyncio.Future[str] | None = None


_held: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[ImapSection, _Held]] = (
    weakref.WeakKeyDictionary()
)


async def access_token(imap: ImapSection, refused: str | None = None) -> str:
    """The mailbox's token: the one held while it is fresh and not `refused`, else a new one.

    One request at a time per mailbox, finished even if the caller is cancelled: a
    rotated refresh token must not be lost with it.
    """
    held = _held.setdefault(asyncio.get_running_loop(), {}).setdefault(imap, _Held())
    if held.renewing is None:
        fresh = time.monotonic() < held.renew_at and held.access_token != refused
        if held.access_token is not None and fresh:
            return held.access_token
        held.renewing = asyncio.ensure_future(_renew(imap, held))
        held.renewing.add_done_callback(lambda done: _renewed(held, done))
    return await asyncio.shield(held.renewing)


def _renewed(held: _Held, done: asyncio.Future[str]) -> None:
    held.renewing = None
    if not done.cancelled():
        done.exception()  # retrieved: a failure nobody awaited any more is no warning


async def _renew(imap: ImapSection, held: _Held) -> str:
    form, secrets = _form(imap, held)
    asked = time.monotonic()
    answer = await asyncio.to_thread(_post, imap.token_endpoint, form, secrets)
    token = answer.get("access_token")
    if not isinstance(token, str) or not token:
        raise TokenError("the token endpoint answered without an access token")
    lifetime = answer.get("expires_in")
    if isinstance(lifetime, int | float) and lifetime > 0:
        held.renew_at = asked + lifetime - min(EARLY_SECONDS, lifetime / 10)
    else:  # no lifetime said: kept until the server refuses it
        held.renew_at = float("inf")
    rotated = answer.get("refresh_token")
    if isinstance(rotated, str) and rotated:
        held.refresh_token = rotated
    held.access_token = token
    return token


def _form(imap: ImapSection, held: _Held) -> tuple[dict[str, str], list[str]]:
    """The token request's form (client authentication in the body, RFC 6749 §2.3.1),
    and the secrets in it, kept out of any sentence."""
    assert imap.client_id is not None  # auth = "oauth2" has one
    form = {"client_id": imap.client_id}
    client_secret = _secret(imap, "client_secret_file", imap.client_secret)
    if client_secret is not None:
        form["client_secret"] = client_secret
    from_file = _secret(imap, "refresh_token_file", imap.refresh_token)
    if from_file is not None:
        if from_file != held.from_file:  # a first refresh, or a new token in the file
            held.from_file, held.refresh_token = from_file, from_file
        form["grant_type"] = "refresh_token"
        form["refresh_token"] = held.refresh_token or from_file
    else:
        form["grant_type"] = "client_credentials"
    if imap.scope is not None:
        form["scope"] = imap.scope
    secrets = [form[key] for key in ("client_secret", "refresh_token") if key in form]
    return form, secrets


def _secret(imap: ImapSection, key: str, read: Callable[[], str | None]) -> str | None:
    try:
        return read()
    except OSError as error:
        raise TokenError(f"{key} {getattr(imap, key)!r} cannot be read: {error.strerror}") from None


_GRANTS = {"refresh_token": "the refresh token", "client_credentials": "the client credentials"}


def _post(url: str, form: dict[str, str], secrets: list[str]) -> dict[str, Any]:
    """The endpoint's JSON answer (in a thread: urllib blocks)."""
    request = urllib.request.Request(
        url, data=urlencode(form).encode(), headers={"Accept": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_SECONDS) as response:
            return _json(response.read())
    except urllib.error.HTTPError as error:
        with error:
            answer = _json(error.read(), strict=False)
        code = answer.get("error") or f"HTTP {error.code}"
        description = str(answer.get("error_description") or "").strip()
        for secret in secrets:  # an endpoint that echoes what it was sent says nothing of it
            description = description.replace(secret, "…")
        said = f" ({description.splitlines()[0][:_DESCRIPTION_CHARS]})" if description else ""
        what = "the client" if code == "invalid_client" else _GRANTS[form["grant_type"]]
        raise TokenError(f"the token endpoint refused {what}: {code}{said}") from None
    except urllib.error.URLError as error:
        raise TokenError(f"the token endpoint cannot be reached: {error.reason}") from None
    except TimeoutError:
        raise TokenError("the token endpoint did not answer in time") from None


def _json(body: bytes, strict: bool = True) -> dict[str, Any]:
    try:
        answer = json.loads(body)
    except ValueError:
        answer = None
    if isinstance(answer, dict):
        return answer
    if strict:
        raise TokenError("the token endpoint's answer is not a JSON object")
    return {}
