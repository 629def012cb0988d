"""What every part of the bench needs to run servers: the checkout, free ports, readiness."""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import tomli_w

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_port(port: int, process: subprocess.Popen[bytes]) -> None:
    """Until `process` listens on `port`; SystemExit if it ends first or never does."""
    for _ in range(300):
        if process.poll() is not None:
            raise SystemExit(f"the server exited: {process.returncode}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise SystemExit(f"nothing listens on {port}")


def gateway_config(folder: Path, port: int, **sections: Any) -> Path:
    """The gateway under test: SMTP on `port`, round-robin over a, b, c; `sections` replace.

    One client address sends everything in a bench: per-client limits would measure
    the throttle, so they are off.
    """
    config: dict[str, Any] = {
        "gateway": {"database": "gateway.db", "hostname": "bench.test"},
        "smtp": {
            "listen": [f"127.0.0.1:{port}"],
            "max_connections_per_client": 0,
            "max_messages_per_minute_per_client": 0,
        },
        "notify": {"backend": "file", "file_dir": "alerts"},
        "round_robin": {"enabled": True, "agents": ["a", "b", "c"]},
        "agents": [{"id": x, "email": f"{x}@agents.test"} for x in "abc"],
        "inboxes": [{"address": "support@example.com"}],
        **sections,
    }
    path = folder / "gateway.toml"
    path.write_text(tomli_w.dumps(config))
    return path
