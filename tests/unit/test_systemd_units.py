"""systemd/gateway@.service (N instances on one PostgreSQL store) is gateway.service but for
its header comment and Description: one unit to keep, checked here, not two."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

UNITS = Path(__file__).parents[2] / "systemd"


def body(name: str) -> list[str]:
    """The unit from [Unit] on, its Description aside."""
    text = (UNITS / name).read_text()
    lines = text[text.index("[Unit]") :].splitlines()
    return [line for line in lines if not line.startswith("Description=")]


def test_the_instances_unit_is_the_service_but_for_its_header_and_description() -> None:
    assert body("gateway@.service") == body("gateway.service")


def test_each_instance_names_itself() -> None:
    [description] = re.findall(r"^Description=.*$", (UNITS / "gateway@.service").read_text(), re.M)
    assert "%i" in description


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze here")
def test_the_instances_unit_is_as_hardened_as_the_service(tmp_path: Path) -> None:
    def exposure(unit: Path) -> str:
        done = subprocess.run(
            ["systemd-analyze", "security", "--offline=true", str(unit)],
            capture_output=True,
            text=True,
            check=True,
        )
        return done.stdout.strip().splitlines()[-1].split(":", 1)[1]

    instance = tmp_path / "gateway@1.service"  # an instance, as systemd would load it
    instance.write_text((UNITS / "gateway@.service").read_text())
    assert exposure(instance) == exposure(UNITS / "gateway.service")
