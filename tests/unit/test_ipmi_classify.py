"""Which failures the ipmi driver turns into BMC errors, and the pyghmi pin (issue 11, defect 4).

Only pyghmi's own failures are BMC errors (and only they can be retryable). An
AttributeError, TypeError or KeyError is a bug and propagates, except the session
defects pyghmi 1.6.19 raises from inside its own session module.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from pyghmi import exceptions as pyghmi_exc
from pyghmi.ipmi import command as ipmi_command
from pyghmi.ipmi.private import session as pyghmi_session

from provisiond.drivers.power import (
    BmcAuthError,
    BmcBusy,
    BmcPrivilegeError,
    BmcSessionError,
    BmcTarget,
    BmcUnreachable,
    BmcUnsupported,
    ipmi,
)
from provisiond.errors import ConfigError

TARGET = BmcTarget("127.0.0.1", 623, "admin", "password", credential_source="credential set 'x'")
ROOT = Path(__file__).resolve().parents[2]


def _raised(fn: object) -> BaseException:
    try:
        fn()  # type: ignore[operator]
    except Exception as exc:
        return exc
    raise AssertionError("expected an exception")


def _pyghmi_session_error() -> BaseException:
    """A real AttributeError from pyghmi's session module: a half-made Session."""
    return _raised(lambda: pyghmi_session.Session._is_session_valid(object()))


def test_pyghmi_failures_map_to_fatal_or_retryable_errors() -> None:
    cases = [
        (pyghmi_exc.IpmiException("Incorrect password provided"), BmcAuthError, False),
        (pyghmi_exc.IpmiException("insufficient privilege", 0xD4), BmcPrivilegeError, False),
        (pyghmi_exc.IpmiException("Node busy", 0xC0), BmcBusy, True),
        (pyghmi_exc.IpmiException(), BmcUnreachable, True),  # pyghmi's bare timeout
        (TimeoutError("timed out"), BmcUnreachable, True),
        (pyghmi_exc.UnsupportedFunctionality("no"), BmcUnsupported, False),
    ]
    for exc, kind, retryable in cases:
        error = ipmi.classify(exc, TARGET, "read power state")
        assert type(error) is kind, (exc, error)
        assert error.retryable is retryable
    assert ipmi.PRIVILEGE_CODE == BmcPrivilegeError.code == "bmc_privilege_insufficient"


def test_our_bugs_propagate_unchanged() -> None:
    driver = ipmi.IpmiPower(TARGET)
    for bug in (AttributeError("no such thing"), TypeError("bad argument"), KeyError("k")):
        with pytest.raises(type(bug)) as raised, driver._bmc_errors("read power state"):
            raise bug
        assert raised.value is bug


def test_only_pyghmi_session_defects_are_session_errors() -> None:
    in_session_module = _pyghmi_session_error()
    elsewhere_in_pyghmi = _raised(lambda: ipmi_command.Command.get_power(object()))
    assert isinstance(in_session_module, AttributeError)
    assert isinstance(elsewhere_in_pyghmi, AttributeError)
    assert ipmi.pyghmi_session_defect(in_session_module)
    assert not ipmi.pyghmi_session_defect(elsewhere_in_pyghmi)
    assert not ipmi.pyghmi_session_defect(_raised(lambda: {}["key"]))

    driver = ipmi.IpmiPower(TARGET)
    with pytest.raises(BmcSessionError) as raised, driver._bmc_errors("read power state"):
        pyghmi_session.Session._is_session_valid(object())
    assert raised.value.retryable and "inside pyghmi" in raised.value.message
    with pytest.raises(AttributeError), driver._bmc_errors("read power state"):
        ipmi_command.Command.get_power(object())


def test_pyghmi_is_pinned_to_the_version_the_workarounds_use() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    pyghmi = [d for d in project["project"]["dependencies"] if d.startswith("pyghmi")]
    assert pyghmi == [f"pyghmi=={ipmi.PYGHMI_VERSION}"]
    ipmi.check_pyghmi()  # the installed one passes


def test_another_pyghmi_refuses_to_start(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ipmi.importlib.metadata, "version", lambda _name: "1.6.20")
    with pytest.raises(ConfigError) as raised:
        ipmi.check_pyghmi()
    assert "pyghmi 1.6.20 is installed" in raised.value.message
    assert f"pyghmi=={ipmi.PYGHMI_VERSION}" in raised.value.hint
