"""docs/SETTINGS.md is generated from the settings code and current; every flag has help."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
from tensorwasm_common.settings import env_name
from tensorwasm_executor.settings import ExecutorSettings
from tensorwasm_gateway.settings import GatewaySettings

ROOT = Path(__file__).resolve().parents[2]
TOOL = ROOT / "tools" / "settings_reference.py"


def test_the_reference_is_current() -> None:
    checked = subprocess.run(
        [sys.executable, str(TOOL), "--check"], capture_output=True, text=True, check=False
    )
    assert checked.returncode == 0, checked.stderr


@pytest.mark.parametrize(
    ("service", "cls"), [("gateway", GatewaySettings), ("executor", ExecutorSettings)]
)
def test_every_variable_is_in_the_reference(service: str, cls: type) -> None:
    text = (ROOT / "docs" / "SETTINGS.md").read_text()
    own = set(cls.__annotations__)
    for field in dataclasses.fields(cls):
        if field.init and field.name in own:
            assert f"`{env_name(service, field.name)}`" in text, field.name


def test_a_services_help_describes_each_flag() -> None:
    shown = subprocess.run(
        [sys.executable, "-m", "tensorwasm_executor", "--help"],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert shown.returncode == 0, shown.stderr
    help_text = " ".join(shown.stdout.split())
    assert "Read-only directories a function may be granted live under <root>/<tenant>/" in (
        help_text
    )
    assert "env TENSORWASM_EXECUTOR_GUEST_DIRS_ROOT" in help_text
    assert "env TENSORWASM_EXECUTOR_MAX_OUTPUT_BYTES; default 1 << 20" in help_text
