"""Mail and passwords stay private: files only the gateway can read, no secret in a log."""

from __future__ import annotations

import stat
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, Envelope
from structlog.testing import capture_logs

from gateway.config import Settings
from tests.conftest import RunningDaemon, free_port, mail, smtp_notify, wait_until

pytestmark = pytest.mark.integration

SECRET = "smarthost-pa55word-never-logged"


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.sqlite_only("the modes of the SQLite file and its WAL")
def test_the_database_and_alert_files_are_readable_by_the_gateway_alone(
    daemon: RunningDaemon,
) -> None:
    daemon.send(mail("private"))
    daemon.drain()
    database = Path(daemon.settings.gateway.database)
    alerts = Path(daemon.settings.notify.file_dir)
    wait_until(lambda: list(alerts.glob("*.eml")), what="the alert file")
    files = [database, *database.parent.glob(database.name + "-*"), *alerts.glob("*.eml")]
    assert len(files) >= 3  # the database, its WAL and shared memory, the alert
    assert {path.name: mode(path) for path in files} == {path.name: 0o600 for path in files}
    assert mode(alerts) == 0o700


class RefusingSmarthost:
    """A smarthost that offers AUTH and refuses every login."""

    def __init__(self, port: int) -> None:
        self._controller = Controller(
            self,
            hostname="127.0.0.1",
            port=port,
            authenticator=lambda *args: AuthResult(success=False, handled=False),
            auth_require_tls=False,
        )

    async def handle_DATA(self, server: object, session: object, envelope: Envelope) -> str:
        return "250 OK"


@pytest.fixture
def refusing_smarthost() -> Iterator[int]:
    port = free_port()
    server = RefusingSmarthost(port)
    server._controller.start()
    yield port
    server._controller.stop()


def test_a_failed_smarthost_login_logs_no_password(
    make_settings: Callable[..., Settings],
    start_daemon: Callable[..., RunningDaemon],
    refusing_smarthost: int,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("GATEWAY_NOTIFY__PASSWORD", SECRET)
    settings = make_settings(notify=smtp_notify(refusing_smarthost, username="gateway"))
    assert settings.notify.secret() == SECRET  # taken from the environment
    with capture_logs() as logs:
        running = start_daemon(settings)
        running.send(mail("needs an alert"))
        wait_until(lambda: running.events(1, "notify_failed"), what="the refused login")
        running.stop()
    failures = [line for line in logs if line["event"] == "alert.failed"]
    assert failures and "535" in failures[0]["error"]
    assert SECRET not in repr(logs)
    assert SECRET not in repr([dict(row) for row in running.query("SELECT * FROM events")])
    assert SECRET not in repr([dict(row) for row in running.query("SELECT * FROM outbox")])


@pytest.mark.sqlite_only("the modes of the SQLite file made in the shared folder")
def test_state_in_a_folder_shared_with_a_group_is_shared_with_it(
    make_settings: Callable[..., Settings],
    start_daemon: Callable[..., RunningDaemon],
    tmp_path: Path,
) -> None:
    """The service's state folder made group-writable (as the unit's StateDirectoryMode
    does, for the admins in the gateway's group): what the gateway makes there is too."""
    state = tmp_path / "state"
    state.mkdir()
    state.chmod(0o2770)
    running = start_daemon(
        make_settings(
            gateway={"database": str(state / "gateway.db"), "hostname": "gw.test"},
            notify={"enabled": True, "backend": "file", "file_dir": str(state / "alerts")},
        )
    )
    running.send(mail("shared"))
    running.drain()
    alerts = state / "alerts"
    wait_until(lambda: list(alerts.glob("*.eml")), what="the alert file")
    database = state / "gateway.db"
    files = [database, *state.glob("gateway.db-*"), *alerts.glob("*.eml")]
    assert {path.name: mode(path) for path in files} == {path.name: 0o660 for path in files}
    assert mode(alerts) & 0o777 == 0o770
