"""The shipped systemd unit is valid, and stopping or losing the daemon takes dnsmasq too."""

from __future__ import annotations

import configparser
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import provisiond

UNIT = Path(provisiond.__file__).parent / "systemd" / "provisiond.service"


def _unit() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(UNIT.read_text())
    return parser


def test_the_unit_kills_the_whole_cgroup_and_restarts_on_failure() -> None:
    service = _unit()["Service"]
    # dnsmasq drops privileges (which clears its PR_SET_PDEATHSIG): only the cgroup
    # kill stops it when the daemon dies; "mixed" lets the daemon stop it first.
    assert service["KillMode"] == "mixed"
    # dnsmasq as nobody must traverse the state folder; the rest stays private.
    assert service["StateDirectoryMode"] == "0711" and service["UMask"] == "0077"
    assert "Environment" not in service  # an env variable would override the TOML file
    assert service["Restart"] == "on-failure"
    assert service["ExecStart"].endswith("provisiond serve")
    assert service["ExecStartPre"].endswith("provisiond db upgrade")


def test_systemd_analyze_verifies_the_unit(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.fail("systemd-analyze is missing: run scripts/bootstrap.sh (package systemd)")
    command = Path(sys.executable).parent / "provisiond"
    assert command.exists(), command
    unit = tmp_path / "provisiond.service"
    unit.write_text(UNIT.read_text().replace("/usr/local/bin/provisiond", str(command)))
    result = subprocess.run(
        [analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "Unknown" not in result.stderr and "nknown key" not in result.stderr, result.stderr
    # and it does reject a broken unit (this check can fail)
    unit.write_text(unit.read_text().replace("KillMode=", "KilMode="))
    bad = subprocess.run(
        [analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60, check=False
    )
    assert "KilMode" in bad.stderr
