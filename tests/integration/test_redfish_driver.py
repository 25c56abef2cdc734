"""The redfish power driver and the robust power service against sushy-tools' emulator.

The emulator serves HTTPS with a self-signed certificate and basic auth (bcrypt
htpasswd), so pinning and wrong passwords are real. Its fake driver applies power
changes asynchronously (here within 1 s), so every confirmation is a real read-back.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from provisiond.drivers.power import (
    BmcAuthError,
    BmcBusy,
    BmcTarget,
    BmcUnreachable,
    BmcUnsupported,
    BootDevice,
    PowerAction,
    PowerState,
)
from provisiond.drivers.power.redfish import (
    BmcCertificateMismatch,
    BmcTlsError,
    RedfishPower,
    format_fingerprint,
    normalize_fingerprint,
)
from provisiond.drivers.power.redfish_errors import http_error
from provisiond.drivers.power.registry import POWER_DRIVERS
from provisiond.executor import BlockingExecutor
from provisiond.machines import power_calls as power
from provisiond.machines.power_calls import PowerPolicy
from tests.support.redfish_emulator import (
    SYSTEM_UUID,
    RedfishEmulator,
    free_tcp_port,
    require_sushy,
)

FAST = PowerPolicy(call_timeout=10, backoff=(0.1, 0.2), confirm_timeout=10, confirm_interval=0.1)
#: Long backoff: a retry of a fatal error would show up as seconds of sleep.
SLOW_RETRY = PowerPolicy(call_timeout=10, backoff=(3, 3), confirm_timeout=5)
PASSWORD = "s3cret-Redfish-pw"
SOURCE = "credential set 'lab-redfish'"


@pytest.fixture
def emulator(tmp_path: Path) -> Iterator[RedfishEmulator]:
    require_sushy()
    emu = RedfishEmulator(tmp_path / "sushy", free_tcp_port(), password=PASSWORD)
    emu.start()
    try:
        yield emu
    finally:
        emu.stop()


def _driver(emu: RedfishEmulator, **options: str) -> RedfishPower:
    password = options.pop("password", PASSWORD)
    if "cert_fingerprint" not in options and "tls_verify" not in options:
        options["cert_fingerprint"] = format_fingerprint(emu.fingerprint)
    return RedfishPower(
        BmcTarget(
            "127.0.0.1",
            emu.port,
            emu.username,
            password,
            options=options,
            credential_source=SOURCE,
        )
    )


def _until(check: Callable[[], bool], seconds: float = 5) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.1)
    return check()


def test_driver_declares_its_settings() -> None:
    settings = {s.name: s for s in RedfishPower.settings}
    assert RedfishPower.name == "redfish"
    assert settings["password"].secret and not settings["username"].secret
    assert settings["port"].default == 443
    assert "cert_fingerprint" in settings and "tls_verify" in settings
    if "redfish" in POWER_DRIVERS:  # registered by the lead in registry.py
        assert POWER_DRIVERS["redfish"] is RedfishPower


@pytest.mark.parametrize(
    "written",
    [
        "sha256:AB:CD:" + "01:" * 29 + "EF",
        "SHA256 Fingerprint=AB:CD:" + "01:" * 29 + "EF",
        "abcd" + "01" * 29 + "ef",
        "  ABCD" + "01" * 29 + "EF\n",
    ],
)
def test_fingerprints_are_read_in_the_usual_spellings(written: str) -> None:
    assert normalize_fingerprint(written) == "abcd" + "01" * 29 + "ef"


@pytest.mark.parametrize("written", ["", "sha1:AB:CD", "ab" * 31, "zz" * 32])
def test_malformed_fingerprints_are_rejected(written: str) -> None:
    with pytest.raises(ValueError, match="SHA-256"):
        normalize_fingerprint(written)


def test_driver_reads_and_sets_power_and_identity(emulator: RedfishEmulator) -> None:
    driver = _driver(emulator)
    assert driver.get_power() is PowerState.OFF
    driver.set_power(PowerAction.ON)
    assert _until(lambda: driver.get_power() is PowerState.ON)
    assert emulator.system()["PowerState"] == "On"
    emulator.set_power("ForceOff")  # changed behind the driver's back
    assert _until(lambda: driver.get_power() is PowerState.OFF)
    identity = driver.read_identity()
    assert identity.vendor == "Sushy Emulator"
    assert identity.guid == SYSTEM_UUID
    assert identity.firmware == "1.00"  # from the manager the system names
    assert PASSWORD not in repr(driver.target)


def test_boot_device_is_set_once_or_persistently_with_the_uefi_flag(
    emulator: RedfishEmulator,
) -> None:
    driver = _driver(emulator)

    driver.set_boot_device(BootDevice.PXE, persistent=False, uefi=True)
    boot = emulator.system()["Boot"]
    assert (boot["BootSourceOverrideTarget"], boot["BootSourceOverrideMode"]) == ("Pxe", "UEFI")
    # sushy's fake driver always reports Enabled "Continuous", so one-time versus
    # persistent is checked on the wire instead.
    assert emulator.patches()[-1]["Boot"]["BootSourceOverrideEnabled"] == "Once"

    driver.set_boot_device(BootDevice.PXE, persistent=True, uefi=False)
    boot = emulator.system()["Boot"]
    assert (boot["BootSourceOverrideTarget"], boot["BootSourceOverrideMode"]) == ("Pxe", "Legacy")
    assert emulator.patches()[-1]["Boot"] == {
        "BootSourceOverrideTarget": "Pxe",
        "BootSourceOverrideEnabled": "Continuous",
        "BootSourceOverrideMode": "Legacy",
    }

    driver.set_boot_device(BootDevice.DISK, persistent=True, uefi=True)
    boot = emulator.system()["Boot"]
    assert (boot["BootSourceOverrideTarget"], boot["BootSourceOverrideMode"]) == ("Hdd", "UEFI")
    driver.set_boot_device(BootDevice.CDROM, uefi=True)
    assert emulator.system()["Boot"]["BootSourceOverrideTarget"] == "Cd"
    assert "BootSourceOverrideMode" not in emulator.patches()[-1]["Boot"]  # unchanged: not sent

    # The emulator does not list BiosSetup among its boot targets.
    patches = len(emulator.patches())
    with pytest.raises(BmcUnsupported, match="offers Pxe, Cd, Hdd"):
        driver.set_boot_device(BootDevice.BIOS, uefi=True)
    assert len(emulator.patches()) == patches


def test_power_service_is_idempotent_and_confirms(emulator: RedfishEmulator) -> None:
    executor = BlockingExecutor(4)
    driver = _driver(emulator)

    async def scenario() -> None:
        first = await power.power(executor, driver, PowerAction.ON, FAST)
        assert (first.state, first.changed) == (PowerState.ON, True)
        again = await power.power(executor, driver, PowerAction.ON, FAST)
        assert (again.state, again.changed, again.attempts) == (PowerState.ON, False, 1)
        resets = sum(r["path"].endswith("ComputerSystem.Reset") for r in emulator.requests())
        assert resets == 1  # "already on" sent nothing
        cycled = await power.power(executor, driver, PowerAction.CYCLE, FAST)
        assert cycled.state is PowerState.ON and cycled.changed
        reset = await power.power(executor, driver, PowerAction.RESET, FAST)
        assert reset.state is PowerState.ON and reset.changed
        soft = await power.power(executor, driver, PowerAction.SOFT_OFF, FAST)
        assert soft.state is PowerState.OFF and emulator.system()["PowerState"] == "Off"
        off = await power.power(executor, driver, PowerAction.OFF, FAST)
        assert (off.state, off.changed) == (PowerState.OFF, False)
        await power.set_boot_device(
            executor, driver, BootDevice.PXE, persistent=True, uefi=True, policy=FAST
        )
        assert emulator.system()["Boot"]["BootSourceOverrideTarget"] == "Pxe"

    try:
        asyncio.run(scenario())
    finally:
        executor.shutdown()
    bodies = [r["body"] for r in emulator.requests() if r["path"].endswith("ComputerSystem.Reset")]
    # The emulator offers no PowerCycle, so a cycle is a hard restart, like a reset.
    assert [json.loads(b)["ResetType"] for b in bodies] == [
        "On",
        "ForceRestart",
        "ForceRestart",
        "GracefulShutdown",
    ]


def test_wrong_fingerprint_is_fatal_names_the_certificate_and_is_not_retried(
    emulator: RedfishEmulator,
) -> None:
    executor = BlockingExecutor(2)
    driver = _driver(emulator, cert_fingerprint="sha256:" + ":".join(["AB"] * 32))
    seen = len(emulator.requests())
    started = time.monotonic()
    try:
        with pytest.raises(BmcCertificateMismatch) as exc:
            asyncio.run(power.power(executor, driver, PowerAction.ON, SLOW_RETRY))
    finally:
        executor.shutdown()
    assert time.monotonic() - started < 2  # no backoff was slept
    assert format_fingerprint(emulator.fingerprint) in exc.value.message
    assert "openssl s_client -connect 127.0.0.1:" in exc.value.hint
    assert not exc.value.retryable
    assert len(emulator.requests()) == seen  # no request (so no credentials) was sent


@pytest.mark.filterwarnings("ignore:ssl.PROTOCOL_TLS is deprecated:DeprecationWarning")
def test_missing_fingerprint_is_refused_with_a_hint(emulator: RedfishEmulator) -> None:
    driver = _driver(emulator, tls_verify="fingerprint")
    with pytest.raises(BmcTlsError) as exc:
        driver.get_power()
    assert exc.value.code == "bmc_tls_not_configured" and not exc.value.retryable
    assert f"openssl s_client -connect 127.0.0.1:{emulator.port}" in exc.value.hint
    assert "-fingerprint -sha256" in exc.value.hint

    with pytest.raises(BmcTlsError) as exc:
        _driver(emulator, tls_verify="insecure").get_power()
    assert "cannot be switched off" in exc.value.hint
    # The system CA store is an explicit choice; a self-signed BMC then fails, fatally.
    with pytest.raises(BmcTlsError, match="self-signed") as exc:
        _driver(emulator, tls_verify="system").get_power()
    assert "cert_fingerprint" in exc.value.hint


@pytest.mark.parametrize("spelling", ["openssl", "hex"])
def test_fingerprint_spellings_work_against_the_bmc(
    emulator: RedfishEmulator, spelling: str
) -> None:
    written = {
        "openssl": "SHA256 Fingerprint=" + format_fingerprint(emulator.fingerprint)[7:],
        "hex": emulator.fingerprint.upper(),
    }[spelling]
    assert _driver(emulator, cert_fingerprint=written).get_power() is PowerState.OFF


def test_wrong_password_is_a_fatal_auth_error_with_a_hint(emulator: RedfishEmulator) -> None:
    wrong = "wrong-Pa55word"
    driver = _driver(emulator, password=wrong)
    with pytest.raises(BmcAuthError) as exc:
        driver.get_power()
    assert f"127.0.0.1:{emulator.port}" in exc.value.message and "401" in exc.value.message
    assert exc.value.hint == f"check the username and password in {SOURCE}"
    text = exc.value.message + exc.value.hint
    assert wrong not in text and PASSWORD not in text

    executor = BlockingExecutor(2)
    started = time.monotonic()
    try:
        with pytest.raises(BmcAuthError):
            asyncio.run(power.power(executor, driver, PowerAction.ON, SLOW_RETRY))
    finally:
        executor.shutdown()
    assert time.monotonic() - started < 2  # fatal: not retried


def test_system_option_picks_a_system_by_id_and_rejects_unknown_ones(
    emulator: RedfishEmulator,
) -> None:
    assert _driver(emulator, system=SYSTEM_UUID).get_power() is PowerState.OFF
    with pytest.raises(BmcUnsupported) as exc:
        _driver(emulator, system="no-such-system").get_power()
    assert SYSTEM_UUID in exc.value.message and "'system' option" in exc.value.hint


def test_stopped_bmc_is_unreachable_after_retries_then_recovers(
    emulator: RedfishEmulator,
) -> None:
    driver = _driver(emulator, timeout="2")
    assert driver.get_power() is PowerState.OFF  # a live client, then the BMC goes away
    emulator.stop()
    executor = BlockingExecutor(2)
    policy = PowerPolicy(call_timeout=5, backoff=(0.1, 0.1))
    started = time.monotonic()
    try:
        with pytest.raises(BmcUnreachable) as exc:
            asyncio.run(power.power(executor, driver, PowerAction.ON, policy))
        elapsed = time.monotonic() - started
        assert "gave up after 3 attempts" in exc.value.message
        assert exc.value.retryable and "address and HTTPS port" in exc.value.hint
        assert elapsed < 5

        emulator.start()  # same port and certificate, like a BMC after a reset
        result = asyncio.run(power.power(executor, driver, PowerAction.ON, FAST))
        assert result.state is PowerState.ON and result.changed
    finally:
        executor.shutdown()


def test_a_silent_bmc_times_out_within_the_driver_timeout() -> None:
    # pyghmi's own client would wait 60 s per request; the driver's timeout bounds it.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)  # the kernel accepts; nobody ever answers the TLS handshake
        target = BmcTarget(
            "127.0.0.1",
            silent.getsockname()[1],
            "admin",
            PASSWORD,
            options={"cert_fingerprint": "ab" * 32, "timeout": "0.5"},
        )
        started = time.monotonic()
        with pytest.raises(BmcUnreachable):
            RedfishPower(target).get_power()
        assert time.monotonic() - started < 3


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (401, BmcAuthError),
        (403, BmcAuthError),
        (404, BmcUnsupported),
        (400, BmcUnsupported),
        (409, BmcBusy),
        (500, BmcBusy),
        (503, BmcBusy),
    ],
)
def test_http_statuses_map_to_error_classes(status: int, error: type[Exception]) -> None:
    # Statuses the emulator cannot be made to send (503, 409) are checked on the mapper.
    driver = RedfishPower(BmcTarget("127.0.0.1", 1, "admin", PASSWORD, credential_source=SOURCE))
    body = '{"error": {"message": "echo ' + PASSWORD + '"}}'
    mapped = http_error(driver.target, status, body, "read power state", "/redfish/v1/Systems/1")
    assert isinstance(mapped, error)
    assert PASSWORD not in mapped.message + mapped.hint
