"""Configuration: a bad file fails at start naming the key, the value and why."""

from __future__ import annotations

import re
import typing
from collections.abc import Iterator
from copy import deepcopy
from pathlib import Path
from typing import Any

import pytest
import tomli_w
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError
from pydantic_core import InitErrorDetails

from gateway.config import Settings, describe, load, parse_size
from gateway.errors import ConfigError, Refused
from gateway.ingress import users

VALID = """
[[agents]]
id = "alice"
email = "alice@example.com"

[[inboxes]]
address = "support@example.com"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "gateway.toml"
    path.write_text(text)
    return path


def error_of(tmp_path: Path, text: str) -> str:
    with pytest.raises(ConfigError) as failed:
        load(write(tmp_path, text))
    return str(failed.value)


def test_defaults_and_relative_paths_from_the_config_folder(tmp_path: Path) -> None:
    settings = load(write(tmp_path, VALID))
    assert settings.gateway.database == str(tmp_path / "gateway.db")
    assert settings.notify.file_dir == str(tmp_path / "alerts")
    assert settings.round_robin.enabled is False
    assert settings.notify.enabled and settings.notify.on_reply and settings.agents[0].notify


def test_environment_overrides_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GATEWAY_SMTP__MAX_MESSAGE_SIZE", "2MiB")
    monkeypatch.setenv("GATEWAY_NOTIFY__ENABLED", "false")
    settings = load(write(tmp_path, VALID + '[smtp]\nmax_message_size = "1MB"\n'))
    assert settings.smtp.max_message_size == 2 * 1024 * 1024
    assert settings.notify.enabled is False


def test_bad_value_names_key_value_and_reason(tmp_path: Path) -> None:
    message = error_of(tmp_path, VALID + '[smtp]\nmax_message_size = "huge"\n')
    assert "smtp.max_message_size = 'huge': must be a size" in message


def test_unknown_key_is_an_error(tmp_path: Path) -> None:
    message = error_of(tmp_path, VALID + "[round_robin]\nenabeld = true\n")
    assert "round_robin.enabeld: unknown key" in message


def test_rule_naming_an_unknown_agent_is_an_error(tmp_path: Path) -> None:
    message = error_of(tmp_path, VALID + '[[rules]]\nname = "x"\nassign_to = "agent:zed"\n')
    assert "rules[0].assign_to: 'agent:zed' names no configured agent" in message


def test_team_and_rotation_with_unknown_agents_are_errors(tmp_path: Path) -> None:
    assert "teams[0].agents: 'bob' is not a configured agent" in error_of(
        tmp_path, VALID + '[[teams]]\nid = "t"\nagents = ["alice", "bob"]\n'
    )
    assert "round_robin.agents: 'bob' is not a configured agent" in error_of(
        tmp_path, VALID + '[round_robin]\nenabled = true\nagents = ["bob"]\n'
    )


def test_rule_without_an_action_is_an_error(tmp_path: Path) -> None:
    assert "needs assign_to, tags, or both" in error_of(
        tmp_path, VALID + '[[rules]]\nname = "idle"\nsender_domain = ["a.com"]\n'
    )


def test_invalid_toml_is_reported_as_such(tmp_path: Path) -> None:
    assert "is not valid TOML" in error_of(tmp_path, "[smtp\n")


def test_bad_listen_and_network_are_errors(tmp_path: Path) -> None:
    assert "must be HOST:PORT" in error_of(tmp_path, VALID + '[smtp]\nlisten = ["localhost"]\n')
    assert "is not a network" in error_of(
        tmp_path, VALID + '[smtp]\nallowed_networks = ["10.0.0.0/33"]\n'
    )


@pytest.mark.parametrize(
    ("text", "size"),
    [("25MB", 25_000_000), ("10KB", 10_000), ("1KiB", 1024), ("2 MiB", 2 * 2**20), (512, 512)],
)
def test_sizes(text: str | int, size: int) -> None:
    assert parse_size(text) == size


def test_a_bad_password_value_is_not_echoed(tmp_path: Path) -> None:
    message = error_of(tmp_path, VALID + '[notify]\npassword_file = ["hunter2"]\n')
    assert "notify.password" in message and "hunter2" not in message


def test_a_misspelled_environment_section_is_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GATEWAY_SMPT__LISTEN", '["0.0.0.0:25"]')
    assert "GATEWAY_SMPT__LISTEN: no configuration section 'smpt'" in error_of(tmp_path, VALID)


def test_a_password_in_the_file_is_refused(tmp_path: Path) -> None:
    message = error_of(tmp_path, VALID + '[notify]\npassword = "hunter2"\n')
    assert "notify.password: a secret does not belong in the file" in message
    assert "hunter2" not in message


def test_require_auth_needs_a_users_file_and_auth_needs_tls(tmp_path: Path) -> None:
    assert "require_auth needs auth_users_file" in error_of(
        tmp_path, VALID + "[smtp]\nrequire_auth = true\n"
    )
    (tmp_path / "users").write_text(users.hash_password("pw").line("desk") + "\n")
    assert "auth_users_file needs tls_cert" in error_of(
        tmp_path, VALID + '[smtp]\nauth_users_file = "users"\n'
    )


def test_a_plaintext_users_file_is_refused_naming_its_line(tmp_path: Path) -> None:
    (tmp_path / "cert.pem").write_text("")
    (tmp_path / "users").write_text("# desk users\ndesk:hunter2\n")
    message = error_of(
        tmp_path, VALID + '[smtp]\ntls_cert = "cert.pem"\nauth_users_file = "users"\n'
    )
    assert "smtp.auth_users_file" in message and "line 2 holds no scrypt hash" in message
    assert "hunter2" not in message


def test_a_certificate_that_cannot_be_loaded_stops_the_start(tmp_path: Path) -> None:
    (tmp_path / "cert.pem").write_text("not a certificate\n")
    message = error_of(tmp_path, VALID + '[smtp]\ntls_cert = "cert.pem"\n')
    assert f"smtp.tls_cert = '{tmp_path / 'cert.pem'}': cannot be loaded" in message


def test_inbox_addresses_differing_only_by_plus_tag_collide(tmp_path: Path) -> None:
    text = VALID + '[[inboxes]]\naddress = "Support+x@example.com"\n'
    assert "appears twice" in error_of(tmp_path, text)


def test_the_replies_address_cannot_be_an_inbox(tmp_path: Path) -> None:
    text = VALID + '[replies]\naddress = "Support@example.com"\n'
    assert "replies.address: 'Support@example.com' is an inbox's address or alias" in error_of(
        tmp_path, text
    )


def test_the_replies_address_takes_no_plus_tag(tmp_path: Path) -> None:
    text = VALID + '[replies]\naddress = "replies+x@gw.example.com"\n'
    assert "address must have no +tag" in error_of(tmp_path, text)


def test_replies_without_an_address_cannot_poll_a_mailbox(tmp_path: Path) -> None:
    text = VALID + '[replies.imap]\nhost = "h"\nusername = "u"\npassword_file = "p"\n'
    assert "imap needs address" in error_of(tmp_path, text)


IMAP = '[inboxes.imap]\nhost = "imap.example.com"\nusername = "support"\n'


def test_imap_defaults_and_a_relative_password_file(tmp_path: Path) -> None:
    settings = load(write(tmp_path, VALID + IMAP + 'password_file = "imap.pw"\n'))
    imap = settings.inboxes[0].imap
    assert imap is not None
    assert (imap.port_number, imap.tls, imap.mode, imap.initial_sync, imap.folder) == (
        993,
        True,
        "idle",
        "new",
        "INBOX",
    )
    assert imap.password_file == str(tmp_path / "imap.pw")
    (tmp_path / "imap.pw").write_text("s3cret\n")
    assert imap.secret() == "s3cret"  # the editor's newline is not part of it


def test_imap_starttls_with_tls_and_a_missing_password_file_are_errors(tmp_path: Path) -> None:
    message = error_of(tmp_path, VALID + IMAP + 'password_file = "p"\nstarttls = true\n')
    assert "starttls = true goes with tls = false (port 143)" in message
    message = error_of(tmp_path, VALID + IMAP)
    assert 'inboxes[0].imap: password_file is required (auth = "password")' in message


OAUTH = IMAP + 'auth = "oauth2"\nclient_id = "app"\n'


def test_an_oauth2_mailbox_with_a_provider_preset_and_files_beside_the_configuration(
    tmp_path: Path,
) -> None:
    text = OAUTH + 'provider = "microsoft"\ntenant = "contoso.onmicrosoft.com"\n'
    text += 'client_secret_file = "app.secret"\nrefresh_token_file = "support.refresh"\n'
    imap = load(write(tmp_path, VALID + text)).inboxes[0].imap
    assert imap is not None
    assert imap.token_endpoint == (
        "https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0/token"
    )
    assert (imap.client_secret_file, imap.refresh_token_file, imap.password_file) == (
        str(tmp_path / "app.secret"),
        str(tmp_path / "support.refresh"),
        None,
    )
    (tmp_path / "support.refresh").write_text("1//r3fresh\n")
    assert imap.refresh_token() == "1//r3fresh"  # the editor's newline is not part of it
    google = OAUTH + 'provider = "google"\nrefresh_token_file = "r"\n'
    imap = load(write(tmp_path, VALID + google)).inboxes[0].imap
    assert imap is not None and imap.token_endpoint == "https://oauth2.googleapis.com/token"


@pytest.mark.parametrize(
    ("keys", "said"),
    [
        ('token_url = "https://t"\n', "without refresh_token_file, client credentials need"),
        ('refresh_token_file = "r"\n', 'auth = "oauth2" needs token_url, or provider'),
        (
            'provider = "google"\ntoken_url = "https://t"\nrefresh_token_file = "r"\n',
            'auth = "oauth2" needs token_url, or provider',
        ),
        ('provider = "microsoft"\nrefresh_token_file = "r"\n', "tenant goes with"),
        (
            'provider = "google"\nclient_secret_file = "s"\nscope = "x"\n',
            "Google mailboxes need refresh_token_file",
        ),
        (
            'token_url = "http://login.example.com/t"\nrefresh_token_file = "r"\n',
            "token_url must be https://",
        ),
        (
            'token_url = "https://t"\nrefresh_token_file = "r"\npassword_file = "p"\n',
            "password_file: not with auth",
        ),
    ],
)
def test_oauth2_settings_that_cannot_work_are_refused_naming_the_key(
    tmp_path: Path, keys: str, said: str
) -> None:
    assert f"inboxes[0].imap: {said}" in error_of(tmp_path, VALID + OAUTH + keys)


def test_oauth2_keys_on_a_password_mailbox_are_refused(tmp_path: Path) -> None:
    text = VALID + IMAP + 'password_file = "p"\nclient_id = "app"\nscope = "x"\n'
    assert 'inboxes[0].imap: client_id, scope: only with auth = "oauth2"' in error_of(
        tmp_path, text
    )


def test_agent_ids_differing_only_in_case_are_an_error(tmp_path: Path) -> None:
    text = VALID + '[[agents]]\nid = "Alice"\nemail = "other@example.com"\n'
    assert "agents (ids, in any case): 'alice' appears twice" in error_of(tmp_path, text)


def test_an_address_shared_by_agents_is_refused_asking_for_an_id(tmp_path: Path) -> None:
    text = VALID + '[[agents]]\nid = "desk"\nemail = "Alice@example.com"\n'
    settings = load(write(tmp_path, text))
    assert settings.agent_named("ALICE").id == "alice"  # an id is never ambiguous
    with pytest.raises(Refused) as refused:
        settings.agent_named("alice@example.com")
    assert str(refused.value) == (
        "'alice@example.com' is the address of several agents (alice, desk); name one by id."
    )
    assert settings.actor("alice@example.com") == "alice@example.com"  # nobody in particular


# --- every error in our words ---------------------------------------------------

# What pydantic says in its own words; none of it may reach a person.
STOCK = (
    "Input should",
    "should be",
    "should have",
    "Value error",
    "Assertion failed",
    "Field required",
    "Extra inputs",
    "unable to",
    "valid dictionary",
    "instance of",
)
FALLBACK = "is not a value this key takes"
SECTIONS = "[smtp]\n"  # a bad value below lands in [smtp] unless the text opens another table


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ('timeout = "soon"', "smtp.timeout = 'soon': must be a number"),
        ("timeout = 0", "smtp.timeout = 0: must be greater than 0"),
        ("[notify]\nsmtp_port = nan", "notify.smtp_port = nan: must be a finite number"),
        (
            'max_connections_per_client = "many"',
            "smtp.max_connections_per_client = 'many': must be a whole number",
        ),
        (
            "max_connections_per_client = 1.5",
            "smtp.max_connections_per_client = 1.5: must be a whole number",
        ),
        (
            "max_connections_per_client = -1",
            "smtp.max_connections_per_client = -1: must be 0 or more",
        ),
        ('require_auth = "maybe"', "smtp.require_auth = 'maybe': must be true or false"),
        (
            'listen = "127.0.0.1:25"',
            'smtp.listen = \'127.0.0.1:25\': must be a list, such as ["a", "b"]',
        ),
        ("listen = [25]", "smtp.listen[0] = 25: must be text, in quotes"),
        ('[notify]\nbackend = "pigeon"', "notify.backend = 'pigeon': must be 'smtp' or 'file'"),
        ("[notify]\nsmtp_port = 70000", "notify.smtp_port = 70000: must be 65535 or less"),
        ("[notify]\nfrom = 5", "notify.from = 5: must be text, in quotes"),
        (
            "[threading]\nsubject_fallback_days = 2.5",
            "threading.subject_fallback_days = 2.5: must be a whole number",
        ),
        (
            '[[agents]]\nid = "-x"\nemail = "x@example.com"',
            "agents[1].id = '-x': must start with a letter or digit, then only letters,"
            " digits, '.', '_' or '-'",
        ),
        (
            '[[agents]]\nid = "x"\nemail = "x"',
            "agents[1].email = 'x': must be an e-mail address, such as name@example.com",
        ),
        (
            '[[rules]]\nname = "r"\nassign_to = "alice"',
            "rules[0].assign_to = 'alice': must be agent:ID or team:ID",
        ),
        ('[[teams]]\nid = "t"', "teams[0].agents: required, but missing"),
        ("[[agents]]\nid = 5", "agents[1].id = 5: must be text, in quotes"),
    ],
)
def test_a_bad_value_is_reported_with_its_key_its_value_and_our_reason(
    tmp_path: Path, text: str, line: str
) -> None:
    message = error_of(tmp_path, VALID + SECTIONS + text + "\n")
    assert f"\n  {line}" in message
    assert not [phrase for phrase in STOCK if phrase in message]


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("smtp = 5\n" + VALID, "smtp = 5"),
        ("notify = 5\n" + VALID, "notify = 5"),  # read for secrets before validation
        (VALID + "imap = false\n", "inboxes[0].imap = False"),
    ],
)
def test_a_section_that_is_not_a_table_is_reported_in_our_words(
    tmp_path: Path, text: str, key: str
) -> None:
    assert f"{key}: must be a table of keys, such as [smtp]" in error_of(tmp_path, text)


def test_a_list_or_table_from_the_environment_that_is_not_json_names_the_section(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GATEWAY_SMTP__LISTEN", "0.0.0.0:25")
    message = error_of(tmp_path, VALID)
    assert "GATEWAY_SMTP…: a list or table from the environment must be JSON" in message
    assert 'such as ["0.0.0.0:25"]' in message


def test_an_error_pydantic_adds_later_still_reads_as_a_sentence() -> None:
    unknown: InitErrorDetails = {
        "type": "uuid_parsing",
        "loc": ("gateway", "hostname"),
        "input": "x",
        "ctx": {"error": "bad"},
    }
    error = ValidationError.from_exception_data("Settings", [unknown])
    assert describe(error) == [f"gateway.hostname = 'x': {FALLBACK}"]


def _model_of(annotation: Any) -> type[BaseModel] | None:
    """The model a field holds, alone, in a list, or optional."""
    for candidate in (annotation, *typing.get_args(annotation)):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
        inner = typing.get_args(candidate)
        if inner and isinstance(inner[0], type) and issubclass(inner[0], BaseModel):
            return inner[0]
    return None


def _keys(
    model: type[BaseModel], prefix: tuple[str | int, ...] = ()
) -> Iterator[tuple[str | int, ...]]:
    """Every key of the configuration, sections and lists of tables included."""
    for name, field in model.model_fields.items():
        path = (*prefix, field.alias or name)
        yield path
        inner = _model_of(field.annotation)
        if inner is not None:
            listed = typing.get_origin(field.annotation) is list
            yield from _keys(inner, (*path, 0) if listed else path)


KEYS = [key for key in _keys(Settings) if key[-1] != "password"]  # refused in the file anyway
COMPLETE: dict[str, Any] = {
    "agents": [{"id": "alice", "email": "alice@example.com"}],
    "teams": [{"id": "t", "agents": ["alice"]}],
    "inboxes": [
        {
            "address": "support@example.com",
            "imap": {"host": "imap.example.com", "username": "s", "password_file": "pw"},
        }
    ],
    "rules": [{"name": "r", "assign_to": "team:t"}],
}
TOML_VALUES = st.recursive(
    st.none()  # stands for a key left out
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=12)
    | st.dates(),
    lambda inner: (
        st.lists(inner.filter(lambda v: v is not None), max_size=3)
        | st.dictionaries(
            st.sampled_from(["id", "x", "host"]), inner.filter(lambda v: v is not None), max_size=2
        )
    ),
    max_leaves=4,
)
# key, or key (what is compared), then = value where it may be shown, then why
KEY_PATH = re.compile(r"^[a-z_]+(\[\d+\])?(\.[a-z_]+(\[\d+\])?)*( \(.+?\))?( = .+)?: \S")


def _put(data: dict[str, Any], key: tuple[str | int, ...], value: Any) -> None:
    where: Any = data
    for part in key[:-1]:
        where = where.setdefault(part, {}) if isinstance(part, str) else where[part]
    if value is None:
        where.pop(key[-1], None)
    else:
        where[key[-1]] = value


@hypothesis_settings(max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(key=st.sampled_from(KEYS), value=TOML_VALUES)
def test_every_configuration_error_is_a_key_and_a_reason_in_our_words(
    tmp_path: Path, key: tuple[str | int, ...], value: Any
) -> None:
    data = deepcopy(COMPLETE)
    _put(data, key, value)
    path = tmp_path / "gateway.toml"
    path.write_text(tomli_w.dumps(data))
    try:
        load(path, environ={})
    except ConfigError as error:
        for line in error.details:
            assert KEY_PATH.match(line), line
            assert not [phrase for phrase in STOCK if phrase in line], line
            assert FALLBACK not in line, line  # a kind of error we have no words for yet


def test_a_subject_fallback_beyond_a_century_is_an_error(tmp_path: Path) -> None:
    # timedelta cannot hold 10**12 days: every message's intake would fail on it
    message = error_of(tmp_path, VALID + "[threading]\nsubject_fallback_days = 1000000000000\n")
    assert "threading.subject_fallback_days = 1000000000000: must be 36500 or less" in message


def test_max_open_of_zero_is_no_limit_and_a_negative_one_is_refused(tmp_path: Path) -> None:
    limited = VALID.replace(
        'email = "alice@example.com"', 'email = "alice@example.com"\nmax_open = 0'
    )
    assert load(write(tmp_path, limited)).agents[0].max_open is None
    negative = limited.replace("max_open = 0", "max_open = -1")
    assert "agents[0].max_open = -1" in error_of(tmp_path, negative)


def test_a_bad_web_listen_or_base_url_names_the_key(tmp_path: Path) -> None:
    message = error_of(tmp_path, VALID + '[web]\nlisten = "8025"\n')
    assert "web.listen = '8025': '8025' must be HOST:PORT" in message
    message = error_of(tmp_path, VALID + '[web]\nbase_url = "https://desk.example.com/inbox"\n')
    assert "web.base_url = 'https://desk.example.com/inbox': must be the inbox" in message
    message = error_of(tmp_path, VALID + '[[agents]]\nid = "x"\nemail = "x@y.z"\nrole = "boss"\n')
    assert "agents[1].role = 'boss'" in message
