"""Settings: one TOML file, every key overridable by GATEWAY_<SECTION>__<KEY>.

Validation happens here, at the edge: the rest of the code receives a
`Settings` it can trust. Every error names the key path, the value and why.
"""

from __future__ import annotations

import ipaddress
import os
import re
import ssl
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
    TomlConfigSettingsSource,
)

from gateway.addresses import normalize_address
from gateway.errors import ConfigError, Refused
from gateway.ingress import users

_SIZE = re.compile(r"^\s*(\d+)\s*(B|KB|MB|GB|KIB|MIB|GIB)?\s*$", re.IGNORECASE)
_UNITS = {
    "B": 1,
    "KB": 10**3,
    "MB": 10**6,
    "GB": 10**9,
    "KIB": 2**10,
    "MIB": 2**20,
    "GIB": 2**30,
}


def parse_size(value: object) -> int:
    """'25MB' → 25_000_000; KB/MB are powers of ten, KiB/MiB of two."""
    if isinstance(value, int) and not isinstance(value, bool):
        if value <= 0:
            raise ValueError("must be a positive size")
        return value
    if not isinstance(value, str):
        raise ValueError("must be a size such as 25MB or 10MiB")
    match = _SIZE.match(value)
    if match is None:
        raise ValueError("must be a size such as 25MB or 10MiB")
    number, unit = match.groups()
    size = int(number) * _UNITS[(unit or "B").upper()]
    if size <= 0:
        raise ValueError("must be a positive size")
    return size


def parse_listen(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"{value!r} must be HOST:PORT, such as 127.0.0.1:2525")
    return host.strip("[]"), int(port)


def loopback(host: str) -> bool:
    """Whether a listen host is this machine's loopback alone (a name other than
    localhost is taken as reachable from elsewhere)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


Size = Annotated[int, BeforeValidator(parse_size)]

_ID = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"
_ADDRESS = r"^[^@\s]+@[^@\s]+$"
_TARGET = r"^(agent|team):.+$"

_STRICT = ConfigDict(extra="forbid", frozen=True)


class GatewaySection(BaseModel):
    model_config = _STRICT
    # A SQLite file's path (the embedded default), or a postgresql:// URL: several
    # daemons sharing one PostgreSQL database (DESIGN §15).
    database: str = "gateway.db"
    hostname: str = "localhost"

    @field_validator("database")
    @classmethod
    def _database(cls, value: str) -> str:
        if "://" in value and not value.startswith(("postgresql://", "postgres://")):
            scheme = value.split("://", 1)[0]
            raise ValueError(
                f"a {scheme}:// database is not one this gateway knows: give a SQLite file's"
                " path, or a postgresql:// URL"
            )
        return value


class SmtpSection(BaseModel):
    model_config = _STRICT
    listen: list[str] = ["127.0.0.1:2525"]
    max_message_size: Size = 25_000_000
    allowed_networks: list[str] = ["127.0.0.0/8", "::1/128"]
    # STARTTLS with this certificate (PEM; key in tls_key, or in the same file).
    tls_cert: str | None = None
    tls_key: str | None = None
    # SMTP AUTH (PLAIN, LOGIN; only after STARTTLS) against scrypt hashes in this file.
    auth_users_file: str | None = None
    require_auth: bool = False
    # Seconds a client may be silent between commands, and take for a whole DATA.
    timeout: float = Field(300.0, gt=0)
    # Per client address; 0 turns a limit off. Beyond: 421 to a new connection, 451 to MAIL.
    max_connections_per_client: int = Field(50, ge=0)
    max_messages_per_minute_per_client: int = Field(6000, ge=0)

    @model_validator(mode="after")
    def _tls_and_auth(self) -> SmtpSection:
        if self.tls_key and not self.tls_cert:
            raise ValueError("tls_key is set without tls_cert")
        if self.require_auth and not self.auth_users_file:
            raise ValueError("require_auth needs auth_users_file")
        if self.auth_users_file and not self.tls_cert:
            # Passwords never cross the wire in the clear: AUTH is offered only after STARTTLS.
            raise ValueError("auth_users_file needs tls_cert (AUTH is offered only over TLS)")
        return self

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("needs at least one HOST:PORT")
        for item in value:
            parse_listen(item)
        return value

    @field_validator("allowed_networks")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        for item in value:
            try:
                ipaddress.ip_network(item, strict=False)
            except ValueError:
                raise ValueError(f"{item!r} is not a network such as 127.0.0.0/8") from None
        return value

    def endpoints(self) -> list[tuple[str, int]]:
        return [parse_listen(item) for item in self.listen]

    def tls_context(self) -> ssl.SSLContext | None:
        """The server context STARTTLS offers; None when no certificate is configured."""
        if self.tls_cert is None:
            return None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.tls_cert, self.tls_key)
        return context

    def users(self) -> dict[str, users.Hashed]:
        return users.load(Path(self.auth_users_file)) if self.auth_users_file else {}

    def networks(self) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
        return [ipaddress.ip_network(item, strict=False) for item in self.allowed_networks]


class LmtpSection(BaseModel):
    """The LMTP door (RFC 2033), for an MTA on this host handing mail over (Postfix's
    `lmtp:` transport): one answer per recipient, each after its commit."""

    model_config = _STRICT
    # HOST:PORT, or the absolute path of a unix socket; none: no LMTP.
    listen: list[str] = []

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: list[str]) -> list[str]:
        for item in value:
            if not item.startswith("/"):
                parse_listen(item)
        return value

    def endpoints(self) -> list[tuple[str, int] | str]:
        """Each listener: (host, port), or a unix socket's path."""
        return [item if item.startswith("/") else parse_listen(item) for item in self.listen]


class WebSection(BaseModel):
    """The web inbox (DESIGN §13), served by the daemon; no `listen`: none."""

    model_config = _STRICT
    listen: str | None = None  # HOST:PORT
    # Where people open it (behind a proxy, its public address): links in alerts, the
    # origin forms are posted from; https makes the session cookie Secure.
    base_url: str | None = None

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: str | None) -> str | None:
        if value is not None:
            parse_listen(value)
        return value

    @field_validator("base_url")
    @classmethod
    def _base_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not re.fullmatch(r"https?://[^/\s?#@]+/?", value):
            raise ValueError(
                "must be the inbox's address as people open it, http(s)://HOST[:PORT],"
                " with no path (serve it at the root of its own host name)"
            )
        # As a browser writes it in Origin and Host: lower case, no default port.
        scheme, _, host = value.rstrip("/").lower().partition("://")
        default = ":443" if scheme == "https" else ":80"
        return f"{scheme}://{host.removesuffix(default)}"

    def endpoint(self) -> tuple[str, int] | None:
        return parse_listen(self.listen) if self.listen else None

    def link(self, conversation_id: int) -> str | None:
        """Where a conversation opens in the web inbox: under base_url, else at `listen`."""
        base = self.base_url or (f"http://{self.listen}" if self.listen else None)
        return f"{base.rstrip('/')}/conversations/{conversation_id}" if base else None

    def origin(self) -> str | None:
        """base_url's scheme and host, as a browser sends them in Origin."""
        return self.base_url.rstrip("/") if self.base_url else None


class NotifySection(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)
    enabled: bool = True
    backend: Literal["smtp", "file"] = "smtp"
    from_: str = Field("Assignments <gateway@localhost>", alias="from")
    # Envelope sender of alerts, where their bounces go; none: the null sender (RFC 3834),
    # so they go nowhere. For a smarthost that refuses MAIL FROM:<>.
    bounce_address: str | None = Field(None, pattern=r"^[^@\s<>]+@[^@\s<>]+$")
    smtp_host: str = "localhost"
    smtp_port: int = Field(25, ge=1, le=65535)
    starttls: bool = False
    tls: bool = False
    username: str | None = None
    password: str | None = None
    password_file: str | None = None
    file_dir: str = "alerts"
    on_reply: bool = True
    # Alerts one sender's mail may cause in an hour (0: no limit): ends a loop with a
    # peer that strips Auto-Submitted, and a flood from one address.
    max_alerts_per_sender_per_hour: int = Field(30, ge=0)

    def secret(self) -> str | None:
        """The smarthost password, from the environment or its file."""
        if self.password is not None:
            return self.password
        if self.password_file is not None:
            return Path(self.password_file).read_text().rstrip("\r\n")
        return None


Mode = Literal["rotation", "balanced"]


class RoundRobinSection(BaseModel):
    model_config = _STRICT
    enabled: bool = False
    agents: list[str] = []
    # rotation: each in turn; balanced: the fewest open, ties by longest since assigned.
    mode: Mode = "rotation"
    # Conversations nobody could take are handed out as soon as somebody can.
    hand_out_queue: bool = True


class ThreadingSection(BaseModel):
    model_config = _STRICT
    subject_fallback_days: int = Field(14, ge=0, le=36500)  # a century; timedelta has bounds


class RoutingSection(BaseModel):
    """What routing does when an agent is away or dnd (DESIGN §14)."""

    model_config = _STRICT
    # A rule's agent is away or dnd: assign anyway, go on to the next rule and the
    # rotation, or leave it waiting in the rotation's queue.
    rule_agent_away: Literal["assign", "next", "unassign"] = "assign"
    # The customer writes again and the assignee is away or dnd: keep it theirs, route it
    # again (rules, rotation), or put it back in the queue.
    reply_when_assignee_away: Literal["keep", "reassign", "unassign"] = "keep"


class Agent(BaseModel):
    model_config = _STRICT
    id: str = Field(pattern=_ID)
    name: str = ""
    email: str = Field(pattern=_ADDRESS)
    notify: bool = True
    # Open conversations the rotation and team picks give the agent at most (DESIGN §14);
    # absent or 0: no limit. A rule naming the agent, or a person, assigns whatever the load.
    max_open: int | None = Field(None, ge=0)
    # A manager may set anyone's status in the web inbox; an agent only their own.
    role: Literal["agent", "manager"] = "agent"

    @field_validator("max_open")
    @classmethod
    def _no_limit(cls, value: int | None) -> int | None:
        return value or None


class Team(BaseModel):
    model_config = _STRICT
    id: str = Field(pattern=_ID)
    agents: list[str]
    mode: Mode | None = None  # None: as [round_robin] mode


# Token endpoints of the providers whose mailboxes take XOAUTH2; {tenant}: Microsoft's
# directory (its id or domain, or "organizations").
TOKEN_URLS = {
    "microsoft": "https://login.microsoftonline.com/{tenant}/oauth2/v2.0/token",
    "google": "https://oauth2.googleapis.com/token",
}
_OAUTH_KEYS = "provider tenant token_url client_id client_secret_file refresh_token_file scope"
_LOOPBACK_URL = re.compile(r"^http://(127\.0\.0\.1|localhost|\[::1\])[:/]")


class ImapSection(BaseModel):
    """A connected mailbox, polled over IMAP."""

    model_config = _STRICT
    host: str
    port: int | None = Field(None, ge=1, le=65535)
    tls: bool = True  # implicit TLS (993); false: STARTTLS, or plain text for tests on loopback
    starttls: bool = False  # with tls = false: upgrade on 143 before logging in, or fail
    username: str
    # password: LOGIN with password_file; oauth2: XOAUTH2 with a token from token_url.
    auth: Literal["password", "oauth2"] = "password"
    password_file: str | None = None
    provider: Literal["microsoft", "google"] | None = None  # fills token_url
    tenant: str | None = None  # Microsoft's directory, for provider = "microsoft"
    token_url: str | None = None
    client_id: str | None = None
    client_secret_file: str | None = None
    # A refresh token (a user's consent, RFC 6749 §6); without one, the client's own
    # credentials (§4.4, app-only access as Microsoft 365 grants it) for `scope`.
    refresh_token_file: str | None = None
    scope: str | None = None
    folder: str = "INBOX"
    mode: Literal["idle", "poll"] = "idle"
    poll_interval: int = Field(30, ge=1)
    initial_sync: Literal["new", "all"] = "new"

    @model_validator(mode="after")
    def _auth(self) -> ImapSection:
        if self.tls and self.starttls:
            raise ValueError(
                "starttls: with tls = true the connection is TLS from the start;"
                " starttls = true goes with tls = false (port 143)"
            )
        if self.auth == "password":
            if self.password_file is None:
                raise ValueError('password_file is required (auth = "password")')
            stray = [key for key in _OAUTH_KEYS.split() if getattr(self, key) is not None]
            if stray:
                raise ValueError(f'{", ".join(stray)}: only with auth = "oauth2"')
            return self
        if self.password_file is not None:
            raise ValueError('password_file: not with auth = "oauth2" (XOAUTH2 takes a token)')
        if (self.provider is None) == (self.token_url is None):
            raise ValueError('auth = "oauth2" needs token_url, or provider to fill it in')
        if (self.provider == "microsoft") != (self.tenant is not None):
            raise ValueError('tenant goes with provider = "microsoft", and it needs one')
        if self.token_url is not None and not (
            self.token_url.startswith("https://") or _LOOPBACK_URL.match(self.token_url)
        ):
            raise ValueError("token_url must be https:// (http:// only to this host)")
        if self.client_id is None:
            raise ValueError('auth = "oauth2" needs client_id')
        if self.refresh_token_file is None:
            if self.provider == "google":
                raise ValueError("Google mailboxes need refresh_token_file (no app-only access)")
            if self.client_secret_file is None or self.scope is None:
                raise ValueError(
                    "without refresh_token_file, client credentials need client_secret_file"
                    " and scope"
                )
        return self

    @property
    def port_number(self) -> int:
        return self.port or (993 if self.tls else 143)

    @property
    def token_endpoint(self) -> str:
        """Where the OAuth 2.0 tokens come from (auth = "oauth2")."""
        if self.token_url is not None:
            return self.token_url
        assert self.provider is not None  # the validator sees to it
        return TOKEN_URLS[self.provider].format(tenant=self.tenant)

    def secret(self) -> str:
        """The password from its file, without the trailing newline editors add."""
        assert self.password_file is not None  # auth = "password"
        return _read_secret(self.password_file)

    def client_secret(self) -> str | None:
        return _read_secret(self.client_secret_file) if self.client_secret_file else None

    def refresh_token(self) -> str | None:
        return _read_secret(self.refresh_token_file) if self.refresh_token_file else None


def _read_secret(path: str) -> str:
    return Path(path).read_text().rstrip("\r\n")


class Inbox(BaseModel):
    model_config = _STRICT
    address: str = Field(pattern=_ADDRESS)
    aliases: list[str] = []
    imap: ImapSection | None = None


class RepliesSection(BaseModel):
    """Agents answer customers and act by replying to their alerts (DESIGN §12)."""

    model_config = _STRICT
    # The address alerts' Reply-To is made from (replies+TOKEN@...); none: alerts are
    # answered to the customer directly, as before.
    address: str | None = Field(None, pattern=_ADDRESS)
    # Answering an unassigned conversation takes it, through whichever door.
    claim_on_reply: bool = True
    # An alert can be answered this long after it was sent; later mail is refused.
    token_days: int = Field(30, ge=1, le=3650)
    imap: ImapSection | None = None  # when the address is a mailbox to poll instead

    @model_validator(mode="after")
    def _address(self) -> RepliesSection:
        if self.imap is not None and self.address is None:
            raise ValueError("imap needs address (the address that mailbox receives)")
        if self.address is not None and "+" in self.address.partition("@")[0]:
            raise ValueError("address must have no +tag: the gateway adds one to every alert")
        return self


class Rule(BaseModel):
    model_config = _STRICT
    name: str
    sender_domain: list[str] = []
    subject_keywords: list[str] = []
    recipient: list[str] = []
    assign_to: str | None = Field(None, pattern=_TARGET)
    tags: list[str] = []

    @model_validator(mode="after")
    def _has_action(self) -> Rule:
        if self.assign_to is None and not self.tags:
            raise ValueError("a rule needs assign_to, tags, or both")
        return self

    @field_validator("subject_keywords")
    @classmethod
    def _keywords(cls, value: list[str]) -> list[str]:
        if any(not keyword.strip() for keyword in value):
            raise ValueError("a keyword cannot be empty")
        return value


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="GATEWAY_",
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
    )
    gateway: GatewaySection = GatewaySection()
    smtp: SmtpSection = SmtpSection()
    lmtp: LmtpSection = LmtpSection()
    notify: NotifySection = NotifySection()
    round_robin: RoundRobinSection = RoundRobinSection()
    threading: ThreadingSection = ThreadingSection()
    routing: RoutingSection = RoutingSection()
    replies: RepliesSection = RepliesSection()
    web: WebSection = WebSection()
    agents: list[Agent] = []
    teams: list[Team] = []
    inboxes: list[Inbox] = []
    rules: list[Rule] = []

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        toml_file = settings_cls.model_config.get("toml_file")
        return (env_settings, init_settings, TomlConfigSettingsSource(settings_cls, toml_file))

    @model_validator(mode="after")
    def _references(self) -> Settings:
        agent_ids = [agent.id for agent in self.agents]
        team_ids = [team.id for team in self.teams]
        # People name them in any case (agent_named), so case does not make another one.
        _unique("agents (ids, in any case)", [agent_id.casefold() for agent_id in agent_ids])
        _unique("teams (ids, in any case)", [team_id.casefold() for team_id in team_ids])
        known_agents = set(agent_ids)
        for i, team in enumerate(self.teams):
            for name in team.agents:
                if name not in known_agents:
                    raise ValueError(f"teams[{i}].agents: {name!r} is not a configured agent")
        for name in self.round_robin.agents:
            if name not in known_agents:
                raise ValueError(f"round_robin.agents: {name!r} is not a configured agent")
        for i, rule in enumerate(self.rules):
            if rule.assign_to is None:
                continue
            kind, _, target = rule.assign_to.partition(":")
            known = known_agents if kind == "agent" else set(team_ids)
            if target not in known:
                raise ValueError(
                    f"rules[{i}].assign_to: {rule.assign_to!r} names no configured {kind}"
                )
        # Compared as the relay compares them: case and +tag do not make another address.
        addresses = [
            normalize_address(a) for inbox in self.inboxes for a in (inbox.address, *inbox.aliases)
        ]
        _unique("inboxes (addresses and aliases, without +tag)", addresses)
        if self.replies.address and normalize_address(self.replies.address) in addresses:
            # An agent's mail there must never become a customer's conversation.
            raise ValueError(
                f"replies.address: {self.replies.address!r} is an inbox's address or alias"
            )
        return self

    def agent(self, agent_id: str) -> Agent | None:
        """The agent of a configured id, as the store records it."""
        return next((agent for agent in self.agents if agent.id == agent_id), None)

    def agent_named(self, name: str) -> Agent:
        """The agent a person names (every door asks this): its id or e-mail address, any case."""
        found = self._agents_named(name)
        if len(found) > 1:
            ids = ", ".join(agent.id for agent in found)
            raise Refused(f"{name!r} is the address of several agents ({ids}); name one by id.")
        if not found:
            raise Refused(f"There is no agent {name!r}; {_which('agent', self.agents)}.")
        return found[0]

    def actor(self, name: str) -> str:
        """Who acts (`--by`): the agent's id when the name is one agent's, else the name."""
        found = self._agents_named(name)
        return found[0].id if len(found) == 1 else name.strip()

    def _agents_named(self, name: str) -> list[Agent]:
        wanted = name.strip().casefold()
        return [agent for agent in self.agents if agent.id.casefold() == wanted] or [
            agent for agent in self.agents if agent.email.casefold() == wanted
        ]

    def team_named(self, name: str) -> Team:
        """The team a person names, by its id in any case."""
        wanted = name.strip().casefold()
        for team in self.teams:
            if team.id.casefold() == wanted:
                return team
        raise Refused(f"There is no team {name!r}; {_which('team', self.teams)}.")

    def inbox_map(self) -> dict[str, str]:
        """Normalised address or alias → the inbox address it means; the replies address
        (and so its +TOKEN forms) is taken in as an inbox of its own, handled by intake."""
        found = {
            normalize_address(address): inbox.address
            for inbox in self.inboxes
            for address in (inbox.address, *inbox.aliases)
        }
        if self.replies.address is not None:
            found[normalize_address(self.replies.address)] = self.replies.address
        return found

    def mailboxes(self) -> list[Inbox]:
        """The connected mailboxes to poll: the inboxes', and the replies address's."""
        found = [inbox for inbox in self.inboxes if inbox.imap is not None]
        if self.replies.address is not None and self.replies.imap is not None:
            found.append(Inbox(address=self.replies.address, imap=self.replies.imap))
        return found

    def is_replies(self, inbox: str) -> bool:
        """Whether mail stored for `inbox` came to the replies address."""
        return self.replies.address is not None and inbox == self.replies.address

    def inbox_for(self, address: str) -> str | None:
        return self.inbox_map().get(normalize_address(address))


def _which(kind: str, configured: list[Agent] | list[Team]) -> str:
    """What exists, for a sentence refusing a name: 'the agents are alice, bob'."""
    ids = [item.id for item in configured]
    if not ids:
        return f"no {kind} is configured"
    if len(ids) == 1:
        return f"the only {kind} is {ids[0]}"
    return f"the {kind}s are {', '.join(ids)}"


def _unique(what: str, values: list[str]) -> None:
    seen: set[str] = set()
    for value in values:
        if value in seen:
            raise ValueError(f"{what}: {value!r} appears twice")
        seen.add(value)


def _secrets_in_file(data: dict[str, Any]) -> list[str]:
    # Read before validation, so any shape may be here: what is no table is reported later.
    found = []
    notify, inboxes = data.get("notify"), data.get("inboxes")
    if isinstance(notify, dict) and "password" in notify:
        found.append(
            "notify.password: a secret does not belong in the file; use notify.password_file"
            " or the environment variable GATEWAY_NOTIFY__PASSWORD"
        )
    for i, inbox in enumerate(inboxes if isinstance(inboxes, list) else []):
        imap = inbox.get("imap") if isinstance(inbox, dict) else None
        if isinstance(imap, dict) and "password" in imap:
            found.append(
                f"inboxes[{i}].imap.password: a secret does not belong in the file;"
                " use password_file"
            )
    return found


def _unknown_environment(env: Mapping[str, str]) -> list[str]:
    """GATEWAY_* variables that name no section: a typo would otherwise be ignored."""
    sections = set(Settings.model_fields)
    found = []
    for name in env:
        upper = name.upper()
        if not upper.startswith("GATEWAY_") or upper == "GATEWAY_CONFIG":
            continue
        section = upper.removeprefix("GATEWAY_").split("__", 1)[0].lower()
        if section not in sections:
            found.append(f"{name}: no configuration section {section!r} (a typo?)")
    return found


def load(path: Path, environ: Mapping[str, str] = os.environ) -> Settings:
    """Read and validate the configuration; relative paths are made relative to its folder."""
    path = path.resolve()
    if not path.is_file():
        raise ConfigError(f"{path}: no such configuration file")
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"{path}: cannot be read: {error}") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path}: is not valid TOML: {error}") from None
    problems = _secrets_in_file(data) + _unknown_environment(environ)
    if problems:
        raise ConfigError(f"{path}: invalid configuration", problems)

    class FileSettings(Settings):
        model_config = SettingsConfigDict(**{**Settings.model_config, "toml_file": path})

    try:
        settings: Settings = FileSettings()
    except ValidationError as error:
        raise ConfigError(f"{path}: invalid configuration", describe(error)) from None
    except SettingsError as error:
        raise ConfigError(f"{path}: invalid configuration", [_not_json(error)]) from None
    settings = _anchor(settings, path.parent)
    problems = _unreadable(settings.smtp)
    if problems:
        raise ConfigError(f"{path}: invalid configuration", problems)
    return settings


def _not_json(error: SettingsError) -> str:
    """pydantic-settings reads a list or table from the environment as JSON, and names
    only the top-level field it failed on ('error parsing value for field "smtp" ...')."""
    field = re.search(r'field "(\w+)"', str(error))
    where = f"GATEWAY_{field.group(1).upper()}…" if field else "a GATEWAY_ variable"
    return (
        f"{where}: a list or table from the environment must be JSON,"
        ' such as ["0.0.0.0:25"] or {"host": "..."}'
    )


def _unreadable(smtp: SmtpSection) -> list[str]:
    """The certificate and users file are read at start, so a bad one stops the start."""
    problems = []
    try:
        smtp.tls_context()
    except (OSError, ssl.SSLError) as error:
        problems.append(f"smtp.tls_cert = {smtp.tls_cert!r}: cannot be loaded: {error}")
    try:
        smtp.users()
    except OSError as error:
        problems.append(f"smtp.auth_users_file = {smtp.auth_users_file!r}: {error.strerror}")
    except ValueError as error:
        problems.append(f"smtp.auth_users_file = {smtp.auth_users_file!r}: {error}")
    return problems


def _anchor(settings: Settings, folder: Path) -> Settings:
    database = settings.gateway.database
    if "://" not in database and not Path(database).is_absolute():
        database = str(folder / database)
    file_dir = settings.notify.file_dir
    if not Path(file_dir).is_absolute():
        file_dir = str(folder / file_dir)
    inboxes = [
        inbox.model_copy(update={"imap": _anchored(inbox.imap, folder)})
        for inbox in settings.inboxes
    ]
    replies = settings.replies.model_copy(update={"imap": _anchored(settings.replies.imap, folder)})
    smtp = settings.smtp.model_copy(
        update={
            key: str(folder / value)
            for key in ("tls_cert", "tls_key", "auth_users_file")
            if (value := getattr(settings.smtp, key)) is not None
        }
    )
    return settings.model_copy(
        update={
            "gateway": settings.gateway.model_copy(update={"database": database}),
            "smtp": smtp,
            "notify": settings.notify.model_copy(update={"file_dir": file_dir}),
            "inboxes": inboxes,
            "replies": replies,
        }
    )


def _anchored(imap: ImapSection | None, folder: Path) -> ImapSection | None:
    if imap is None:
        return None
    files = ("password_file", "client_secret_file", "refresh_token_file")
    return imap.model_copy(
        update={key: str(folder / value) for key in files if (value := getattr(imap, key))}
    )


def describe(error: ValidationError) -> list[str]:
    """One line per error: the key, its value where it may be shown, and why, in our words."""
    lines = []
    for item in error.errors(include_url=False):
        key = _key(item["loc"])
        reason = _reason(item)
        shown = item["type"] not in ("missing", "extra_forbidden")
        if not key:
            lines.append(reason)
        elif not shown or isinstance(item.get("input"), dict) or "password" in key:
            lines.append(f"{key}: {reason}")
        else:
            lines.append(f"{key} = {_short(item.get('input'))}: {reason}")
    return lines


def _key(loc: tuple[int | str, ...]) -> str:
    """('inboxes', 0, 'imap', 'port') → inboxes[0].imap.port, as our own sentences write keys."""
    key = ""
    for part in loc:
        key += f"[{part}]" if isinstance(part, int) else f".{part}" if key else str(part)
    return key


_PATTERNS = {
    _ID: "must start with a letter or digit, then only letters, digits, '.', '_' or '-'",
    _ADDRESS: "must be an e-mail address, such as name@example.com",
    _TARGET: "must be agent:ID or team:ID",
}
_TABLE = 'must be a table of keys, such as [smtp] or {{ host = "..." }}'
# pydantic's error types a configuration can provoke, in our words; {name} is from its ctx.
_REASONS = {
    "missing": "required, but missing",
    "extra_forbidden": "unknown key (a typo? it would be ignored otherwise)",
    "int_type": "must be a whole number",
    "int_parsing": "must be a whole number",
    "int_from_float": "must be a whole number",
    "int_parsing_size": "is too large a number",
    "float_type": "must be a number",
    "float_parsing": "must be a number",
    "finite_number": "must be a finite number",
    "bool_type": "must be true or false",
    "bool_parsing": "must be true or false",
    "string_type": "must be text, in quotes",
    "string_unicode": "must be text, in quotes",
    "string_sub_type": "must be text, in quotes",
    "list_type": 'must be a list, such as ["a", "b"]',
    "model_type": _TABLE,
    "model_attributes_type": _TABLE,
    "dict_type": _TABLE,
    "literal_error": "must be {expected}",
    "enum": "must be {expected}",
    "greater_than": "must be greater than {gt}",
    "greater_than_equal": "must be {ge} or more",
    "less_than": "must be less than {lt}",
    "less_than_equal": "must be {le} or less",
    "string_too_short": "must be at least {min_length} characters long",
    "string_too_long": "must be at most {max_length} characters long",
    "too_short": "must hold at least {min_length} items",
    "too_long": "must hold at most {max_length} items",
    "json_invalid": "must be JSON when it comes from the environment",
    "value_error": "{error}",  # our own validators' sentences
    "assertion_error": "{error}",
}


def _reason(item: Any) -> str:
    ctx = item.get("ctx", {})
    if item["type"] == "string_pattern_mismatch":
        return _PATTERNS.get(ctx.get("pattern"), "does not have the form this key takes")
    reason = _REASONS.get(item["type"])
    try:
        return "is not a value this key takes" if reason is None else reason.format(**ctx)
    except (KeyError, IndexError):  # a ctx without the field we name: say it plainly
        return "is not a value this key takes"


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
