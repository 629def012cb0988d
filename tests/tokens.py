"""A local OAuth 2.0 authorisation server for the XOAUTH2 tests: the token endpoint the
gateway asks (RFC 6749: refresh_token and client_credentials grants), and the
introspection endpoint Dovecot's oauth2 passdb asks about each token (RFC 7662).

It runs in a thread (http.server), issues access tokens of a chosen lifetime, and
remembers what it was asked, so a test can say which tokens were used and when.
"""

from __future__ import annotations

import base64
import json
import secrets
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs

import pytest


@dataclass
class Issued:
    user: str
    expires: float  # time.monotonic()
    revoked: bool = False


@dataclass
class TokenServer:
    """Client `gateway` with its secret; refresh tokens and app-only clients name their user."""

    client_id: str = "gateway"
    client_secret: str = field(default_factory=lambda: "cs-" + secrets.token_hex(8))
    lifetime: int = 3600  # seconds an access token lives
    rotate: bool = False  # answer each refresh with a new refresh token, the old one dead
    refresh_tokens: dict[str, str] = field(default_factory=dict)  # refresh token → user
    app_users: dict[str, str] = field(default_factory=dict)  # client_credentials scope → user
    issued: dict[str, Issued] = field(default_factory=dict)
    grants: list[str] = field(default_factory=list)  # grant_type of each token issued
    ever: list[str] = field(default_factory=list)  # every refresh token issued
    granted: threading.Event = field(default_factory=threading.Event)  # a token was issued
    expired_presented: int = 0  # introspections of a token past its lifetime
    port: int = 0
    _server: ThreadingHTTPServer | None = None

    @property
    def token_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/token"

    @property
    def introspection_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/introspect"

    def refresh_token_for(self, user: str) -> str:
        token = "rt-" + secrets.token_hex(12)
        self.refresh_tokens[token] = user
        self.ever.append(token)
        return token

    def revoke(self, user: str) -> None:
        """Every refresh token and access token of `user` stops working."""
        for token, owner in list(self.refresh_tokens.items()):
            if owner == user:
                del self.refresh_tokens[token]
        self.revoke_access_tokens()

    def revoke_access_tokens(self) -> None:
        """The access tokens issued so far stop working; refresh tokens still give new ones."""
        for issued in self.issued.values():
            issued.revoked = True

    def all_expired(self) -> bool:
        return all(time.monotonic() >= issued.expires for issued in self.issued.values())

    def secrets(self) -> list[str]:
        """Every secret it knows of, as it was given and as XOAUTH2 carries a token (base64)."""
        sasl = [
            base64.b64encode(f"user={issued.user}\1auth=Bearer {token}\1\1".encode()).decode()
            for token, issued in self.issued.items()
        ]
        return [self.client_secret, *self.ever, *self.issued, *sasl]

    def start(self) -> None:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                form = {k: v[0] for k, v in parse_qs(self.rfile.read(length).decode()).items()}
                if self.path == "/token":
                    status, answer = owner._token(form, self.headers.get("Authorization"))
                elif self.path == "/introspect":
                    status, answer = 200, owner._introspect(form.get("token", ""))
                else:
                    status, answer = 404, {"error": "not_found"}
                body = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # the tests read what was asked from the server's own fields

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def _token(self, form: dict[str, str], authorization: str | None) -> tuple[int, Any]:
        client, secret = form.get("client_id"), form.get("client_secret")
        if authorization and authorization.startswith("Basic "):
            client, _, secret = base64.b64decode(authorization[6:]).decode().partition(":")
        if (client, secret) != (self.client_id, self.client_secret):
            return 401, {"error": "invalid_client", "error_description": "Unknown client."}
        grant = form.get("grant_type")
        answer: dict[str, Any] = {}
        if grant == "refresh_token":
            user = self.refresh_tokens.get(form.get("refresh_token", ""))
            if user is None:  # quoting what it was sent, as some endpoints do
                return 400, {
                    "error": "invalid_grant",
                    "error_description": f"Refresh token {form.get('refresh_token')} is revoked.",
                }
            if self.rotate:
                del self.refresh_tokens[form["refresh_token"]]
                answer["refresh_token"] = self.refresh_token_for(user)
        elif grant == "client_credentials":
            user = self.app_users.get(form.get("scope", ""))
            if user is None:
                return 400, {"error": "invalid_scope", "error_description": "No such scope."}
        else:
            return 400, {"error": "unsupported_grant_type"}
        token = "at-" + secrets.token_hex(16)
        self.issued[token] = Issued(user, time.monotonic() + self.lifetime)
        self.grants.append(grant)
        self.granted.set()
        return 200, {
            **answer,
            "access_token": token,
            "token_type": "Bearer",
            "expires_in": self.lifetime,
        }

    def _introspect(self, token: str) -> dict[str, Any]:
        issued = self.issued.get(token)
        if issued is None or issued.revoked:
            return {"active": False}
        if time.monotonic() >= issued.expires:
            self.expired_presented += 1
            return {"active": False}
        return {"active": True, "username": issued.user}


@pytest.fixture
def tokens() -> Iterator[TokenServer]:
    """A token endpoint of the test's own, on a free port."""
    server = TokenServer()
    server.start()
    yield server
    server.stop()
