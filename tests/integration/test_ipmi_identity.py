"""The ipmi driver's identity read: what pyghmi's own calls return, in 3-5 round trips.

``read_identity`` used to call pyghmi's ``_get_device_id``, ``get_inventory_of_component
("System")`` and ``get_net_configuration()``: 18 IPMI requests per BMC on the simulator
(Get Device ID five times, nine LAN parameters for one MAC). :func:`pyghmi_identity`
below is that read, kept as the reference: on the repo's simulated BMCs and on
OpenIPMI's ipmi_sim, healthy or refusing FRU and LAN requests, the lean read must
return the same :class:`Identity`. Requests are counted at pyghmi's
``Session.raw_command``, which every command (FRU reads included) goes through.
"""

from __future__ import annotations

import itertools
import random
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from pyghmi.ipmi import fru as pyghmi_fru
from pyghmi.ipmi.oem import generic as pyghmi_generic_oem
from pyghmi.ipmi.oem import lookup as pyghmi_oem
from pyghmi.ipmi.private import session as pyghmi_session

from provisiond.drivers.power import BmcError, BmcTarget, Identity
from provisiond.drivers.power.ipmi import IpmiPower
from provisiond.drivers.power.ipmi_identity import VENDORS as _VENDORS
from provisiond.rack import BmcFarm
from provisiond.rack.ipmi_bmc import SimBmc
from provisiond.rack.ipmi_machine import BmcIdentity
from provisiond.validators import normalize_mac
from tests.support.ipmisim import IpmiSim

# A loopback /16 of its own: pyghmi caches sessions per address and port for the life of
# the process, so no farm here reuses an endpoint another test's farm had.
_addresses = itertools.count(random.randrange(0, 60_000))

GET_DEVICE_ID, FRU_INFO, FRU_READ, SYSTEM_GUID = (6, 0x01), (0x0A, 0x10), (0x0A, 0x11), (6, 0x37)
LAN_PARAMETER, CHANNEL_INFO = (0x0C, 0x02), (6, 0x42)
Handler = Callable[[SimBmc, bytearray], tuple[int, list[int]]]


def fresh_address() -> str:
    n = next(_addresses)
    return f"127.199.{n // 250 % 250}.{n % 250 + 2}"


class Requests:
    """The (netfn, command) of every IPMI request this thread sends through pyghmi."""

    def __init__(self) -> None:
        self.sent: list[tuple[int, int]] = []
        self._thread = threading.get_ident()

    def wrap(self, raw_command: Callable[..., Any]) -> Callable[..., Any]:
        def counted(session: Any, netfn: int, command: int, *args: Any, **kwargs: Any) -> Any:
            if threading.get_ident() == self._thread:
                self.sent.append((netfn, command))
            return raw_command(session, netfn, command, *args, **kwargs)

        return counted

    def during(self, fn: Callable[[], Any]) -> tuple[Any, list[tuple[int, int]]]:
        self.sent.clear()
        result = fn()
        return result, list(self.sent)


@pytest.fixture
def requests(monkeypatch: pytest.MonkeyPatch) -> Requests:
    counter = Requests()
    wrapped = counter.wrap(pyghmi_session.Session.raw_command)
    monkeypatch.setattr(pyghmi_session.Session, "raw_command", wrapped)
    return counter


@pytest.fixture
def farm() -> Iterator[BmcFarm]:
    with BmcFarm(1, address=fresh_address()) as running:
        yield running


def pyghmi_identity(driver: IpmiPower) -> Identity:
    """The identity read as it was before it was made lean (pyghmi's inventory and LAN calls)."""
    device = driver._call("read device id", "_get_device_id")
    vendor_id = int(device.get("manufacturer_id", 0))
    identity = Identity(
        vendor=_VENDORS.get(vendor_id, f"IANA {vendor_id}"),
        firmware=str(device.get("firmware_version", "")),
    )
    try:
        fru: dict[str, Any] = driver._call("read FRU 0", "get_inventory_of_component", "System")
    except BmcError:
        fru = {}
    identity.serial = str(fru.get("Serial Number") or fru.get("Board serial number") or "")
    identity.vendor = str(fru.get("Manufacturer") or identity.vendor)
    identity.model = str(fru.get("Product name") or fru.get("Board product name") or "")
    identity.guid = str(fru.get("UUID") or "")
    try:
        net = driver._call("read LAN configuration", "get_net_configuration")
        identity.bmc_mac = normalize_mac(str(net.get("mac_address") or ""))
    except (BmcError, ValueError):
        identity.bmc_mac = ""
    return identity


def sim_driver(farm: BmcFarm) -> IpmiPower:
    host, port = farm.endpoint(0)
    driver = IpmiPower(BmcTarget(host, port, "admin", "password"))
    driver.get_power()  # logged in: the counts below are the identity read's alone
    return driver


def test_identity_of_a_simulated_bmc_in_five_requests(farm: BmcFarm, requests: Requests) -> None:
    driver = sim_driver(farm)
    identity, sent = requests.during(driver.read_identity)
    assert sent == [GET_DEVICE_ID, FRU_INFO, FRU_READ, SYSTEM_GUID, LAN_PARAMETER]

    expected: BmcIdentity = farm.bmc(0).identity
    assert identity == Identity(
        serial=expected.serial,
        vendor=expected.manufacturer,
        model=expected.product,
        bmc_mac=expected.bmc_mac,
        guid=str(expected.uuid).upper(),
        firmware="1.00",
    )
    reference, before = requests.during(lambda: pyghmi_identity(driver))
    assert reference == identity
    assert len(before) == 18 and before.count(GET_DEVICE_ID) == 5  # what the lean read saves
    assert before.count(LAN_PARAMETER) == 9
    assert requests.during(driver.read_identity)[1] == sent  # the same on every read


def test_identity_of_ipmi_sim_in_three_requests(ipmi_sim: IpmiSim, requests: Requests) -> None:
    """OpenIPMI's ipmi_sim: no FRU 0 (0xCC) and an all-zero MAC, so only the device id."""
    driver = IpmiPower(BmcTarget("127.0.0.1", ipmi_sim.port, "admin", "password"))
    driver.get_power()
    identity, sent = requests.during(driver.read_identity)
    assert sent == [GET_DEVICE_ID, FRU_INFO, LAN_PARAMETER]
    assert identity == Identity(vendor="OpenIPMI", firmware="9.08")
    reference, before = requests.during(lambda: pyghmi_identity(driver))
    assert reference == identity
    assert len(before) == 15


def _refuse(
    code: int, when: Callable[[bytearray], bool] = lambda data: True
) -> Callable[[Handler], Handler]:
    def patch(original: Handler) -> Handler:
        def handler(bmc: SimBmc, data: bytearray) -> tuple[int, list[int]]:
            return (code, []) if when(data) else original(bmc, data)

        return handler

    return patch


def _answer(
    reply: list[int], when: Callable[[bytearray], bool] = lambda data: True
) -> Callable[[Handler], Handler]:
    def patch(original: Handler) -> Handler:
        def handler(bmc: SimBmc, data: bytearray) -> tuple[int, list[int]]:
            return (0, list(reply)) if when(data) else original(bmc, data)

        return handler

    return patch


# Each case: which command the simulated BMC answers differently, how, the requests
# the lean read then sends, and which fields it leaves empty.
Patches = dict[tuple[int, int], Callable[[Handler], Handler]]
CASES: dict[str, tuple[Patches, list[tuple[int, int]], set[str]]] = {
    "channel 0x0E refused: pyghmi's channel search, then channel 1": (
        {LAN_PARAMETER: _refuse(0xCC, lambda data: data[0] & 0x0F == 0x0E)},
        [
            GET_DEVICE_ID,
            FRU_INFO,
            FRU_READ,
            SYSTEM_GUID,
            LAN_PARAMETER,
            CHANNEL_INFO,
            LAN_PARAMETER,
        ],
        set(),
    ),
    "no LAN parameters at all": (
        {LAN_PARAMETER: _refuse(0xC1)},
        [
            GET_DEVICE_ID,
            FRU_INFO,
            FRU_READ,
            SYSTEM_GUID,
            LAN_PARAMETER,
            CHANNEL_INFO,
            LAN_PARAMETER,
        ],
        {"bmc_mac"},
    ),
    "MAC parameter not supported (0x80)": (
        {LAN_PARAMETER: _refuse(0x80, lambda data: data[1] == 5)},
        [
            GET_DEVICE_ID,
            FRU_INFO,
            FRU_READ,
            SYSTEM_GUID,
            LAN_PARAMETER,
            CHANNEL_INFO,
            LAN_PARAMETER,
        ],
        {"bmc_mac"},
    ),
    "MAC parameter of another revision": (
        {LAN_PARAMETER: _answer([0x10, 2, 0, 0, 0, 0, 9], lambda data: data[1] == 5)},
        [GET_DEVICE_ID, FRU_INFO, FRU_READ, SYSTEM_GUID, LAN_PARAMETER],
        {"bmc_mac"},
    ),
    "FRU 0 not present (0xCB): the GUID is still read": (
        {FRU_INFO: _refuse(0xCB)},
        [GET_DEVICE_ID, FRU_INFO, SYSTEM_GUID, LAN_PARAMETER],
        {"serial", "model", "vendor"},
    ),
    "FRU commands unsupported (0xC1): no FRU fields, no GUID": (
        {FRU_INFO: _refuse(0xC1)},
        [GET_DEVICE_ID, FRU_INFO, LAN_PARAMETER],
        {"serial", "model", "vendor", "guid"},
    ),
    "no system GUID": (
        {SYSTEM_GUID: _refuse(0xC1)},
        [GET_DEVICE_ID, FRU_INFO, FRU_READ, SYSTEM_GUID, LAN_PARAMETER],
        {"guid"},
    ),
    "a FRU 0 that is not in FRU format": (
        {FRU_INFO: _answer([8, 0, 0]), FRU_READ: _answer([8, *[0xFF] * 8])},
        [GET_DEVICE_ID, FRU_INFO, FRU_READ, SYSTEM_GUID, LAN_PARAMETER],
        {"serial", "model", "vendor"},
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_bmc_refusing_parts_of_the_read_gets_what_pyghmi_got(
    case: str, farm: BmcFarm, requests: Requests, monkeypatch: pytest.MonkeyPatch
) -> None:
    patches, expected_requests, empty = CASES[case]
    for command, patch in patches.items():
        monkeypatch.setitem(SimBmc._handlers, command, patch(SimBmc._handlers[command]))
    driver = sim_driver(farm)
    identity, sent = requests.during(driver.read_identity)
    assert sent == expected_requests
    assert identity == pyghmi_identity(driver)  # run second: it caches pyghmi's LAN channel
    healthy = farm.bmc(0).identity
    for name in ("serial", "model", "bmc_mac", "guid"):
        assert bool(getattr(identity, name)) == (name not in empty), name
    assert identity.vendor == ("IANA 0" if "vendor" in empty else healthy.manufacturer)
    assert identity.firmware == "1.00"


def test_a_fru_0_pyghmi_cannot_parse_leaves_fru_fields_empty_without_a_traceback(
    farm: BmcFarm, monkeypatch: pytest.MonkeyPatch
) -> None:
    """pyghmi's parser raises IndexError on a truncated FRU; the old read let it propagate."""
    truncated = [8, 1, 0, 0, 0, 0x1F, 0, 0, 0xE0]  # common header naming a product area at 248
    with pytest.raises(IndexError):
        pyghmi_fru.FRU(rawdata=bytearray(truncated[1:]))
    for command, reply in ((FRU_INFO, [len(truncated) - 1, 0, 0]), (FRU_READ, truncated)):
        monkeypatch.setitem(SimBmc._handlers, command, _answer(reply)(SimBmc._handlers[command]))
    identity = sim_driver(farm).read_identity()
    healthy = farm.bmc(0).identity
    assert (identity.serial, identity.model, identity.guid) == ("", "", "")
    assert (identity.vendor, identity.bmc_mac) == ("IANA 0", healthy.bmc_mac)


@pytest.mark.parametrize(
    ("reply", "words"),
    [
        ((0xD5, []), "Command not supported in present state"),
        ((0, [0x20, 0x81, 1]), "short Get Device ID reply (3 bytes, at least 11 expected)"),
    ],
)
def test_a_failed_device_id_is_the_reads_error(
    reply: tuple[int, list[int]],
    words: str,
    farm: BmcFarm,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    driver = sim_driver(farm)
    monkeypatch.setitem(SimBmc._handlers, GET_DEVICE_ID, lambda bmc, data: reply)
    with pytest.raises(BmcError) as exc:
        driver.read_identity()
    assert exc.value.message == f"BMC {driver.target.endpoint} failed to read device id: {words}"


def test_the_mac_does_not_depend_on_the_other_lan_parameters(
    farm: BmcFarm, requests: Requests, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A BMC without parameter 4 (address source) broke pyghmi's get_net_configuration
    (KeyError: None, a traceback); the lean read asks for parameter 5 alone."""
    patch = _refuse(0x80, lambda data: data[1] == 4)
    monkeypatch.setitem(SimBmc._handlers, LAN_PARAMETER, patch(SimBmc._handlers[LAN_PARAMETER]))
    driver = sim_driver(farm)
    identity, sent = requests.during(driver.read_identity)
    assert identity.bmc_mac == farm.bmc(0).identity.bmc_mac and len(sent) == 5
    with pytest.raises(KeyError):
        pyghmi_identity(driver)


def test_a_vendor_pyghmi_has_an_oem_handler_for_gets_pyghmis_fru_0(
    farm: BmcFarm, requests: Requests, monkeypatch: pytest.MonkeyPatch
) -> None:
    """pyghmi's OEM handlers (Lenovo, IBM) rewrite FRU 0: for those vendors it still reads it.

    The simulator's manufacturer id (0) is registered here with pyghmi's generic handler.
    """
    monkeypatch.setitem(pyghmi_oem.oemmap, 0, pyghmi_generic_oem)
    driver = sim_driver(farm)
    identity, sent = requests.during(driver.read_identity)
    # Ours and pyghmi's FRU 0 read's (its OEM lookup ran once, in get_power, and is kept).
    assert sent == [GET_DEVICE_ID, GET_DEVICE_ID, FRU_INFO, FRU_READ, SYSTEM_GUID, LAN_PARAMETER]
    assert identity == pyghmi_identity(driver)
    assert identity.serial == farm.bmc(0).identity.serial
