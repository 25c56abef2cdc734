"""One simulated BMC: packet routing, faults, and the IPMI commands ipmitool and pyghmi use.

:class:`SimBmc` has no socket. The farm hands it datagrams with
:meth:`SimBmc.datagram_received` and it replies through the ``send`` callable it
was built with, so one process can host a thousand of them on one event loop.

Commands served (netfn, command): Get Device ID (6,1), Cold/Warm Reset (6,2/3),
Get Self Test (6,4), Get System GUID (6,0x37), Get Channel Auth Capabilities (6,0x38),
Get Channel Access/Info (6,0x41/0x42), Get Channel Cipher Suites (6,0x54), Get Chassis Status
(0,1), Chassis Control (0,2), Set/Get System Boot Options (0,8/9), Get FRU Inventory
Area Info (0xA,0x10), Read FRU Data (0xA,0x11), Get LAN Configuration Parameters
(0xC,2), DCMI Get Power Reading (0x2C,2; :attr:`SimBmc.meter`). Anything else answers 0xC1.
"""

from __future__ import annotations

import logging
import os
import random
import struct
import time
import uuid
from collections.abc import Callable

import pyghmi.ipmi.bmc as pyghmi_bmc

from provisiond.rack import ipmi_machine, ipmi_records
from provisiond.rack.ipmi_faults import Faults
from provisiond.rack.ipmi_machine import BOOT_DEVICES, BmcIdentity, BootDevice, MachineBackend
from provisiond.rack.ipmi_session import (
    STATUS_NO_RESOURCES,
    Address,
    IpmiRequest,
    ReplySink,
    SimSession,
    open_session_status,
    rmcpplus_packet,
)

__all__ = ["DEFAULT_PASSWORD", "DEFAULT_USERNAME", "SimBmc"]

log = logging.getLogger(__name__)

DEFAULT_USERNAME = "admin"
DEFAULT_PASSWORD = "password"  # noqa: S105 - the well-known default of a test simulator
MAX_SESSIONS = 32  # per BMC; real BMCs allow 4 to 32
SESSION_IDLE_S = 60.0  # IPMI's default session inactivity timeout
HANDSHAKE_IDLE_S = 10.0  # a session that never finished RAKP
COLD_RESET_S = 2.0  # how long ``mc reset cold`` takes when no reset fault says otherwise

CC_OK = 0x00
CC_NODE_BUSY = 0xC0
CC_INVALID_COMMAND = 0xC1
CC_BAD_LENGTH = 0xC7
CC_NOT_PRESENT = 0xCB
CC_INVALID_FIELD = 0xCC
CC_INSUFFICIENT_PRIVILEGE = 0xD4
CC_WRONG_STATE = 0xD5
CC_PARAM_UNSUPPORTED = 0x80
CC_UNSPECIFIED = 0xFF

# Commands that need more than the user level (IPMI 2.0 appendix G): 3 operator, 4 admin.
_PRIVILEGE_NEEDED = {(0, 0x02): 3, (0, 0x08): 3, (6, 0x02): 4, (6, 0x03): 4}
_AUTH_CAPS = bytes([0, 1, 0x80, 0x04, 0x02, 0, 0, 0, 0])  # completion, channel 1, RMCP+ only
_CIPHER_SUITES = [1, 0xC0, 3, 0x01, 0x41, 0x81]  # channel 1: suite 3 (SHA1, SHA1-96, AES)


class _Credentials:
    """pyghmi's server looks passwords up with ``authdata.get(username)``."""

    def __init__(self, bmc: SimBmc, username: str, password: str) -> None:
        self._bmc = bmc
        self._username = username
        self._password = password

    def get(self, username: str) -> str | None:
        if username != self._username:
            return None
        if self._bmc.faults.wrong_password:
            # The client then sees a RAKP2 code that its password does not match.
            return "not-" + self._password
        return self._password


class SimBmc(pyghmi_bmc.Bmc):  # type: ignore[misc]
    """A BMC for one machine, speaking IPMI 2.0 over RMCP+ with cipher suite 3."""

    def __init__(
        self,
        identity: BmcIdentity,
        machine: MachineBackend,
        send: Callable[[bytes, Address], None],
        *,
        username: str = DEFAULT_USERNAME,
        password: str = DEFAULT_PASSWORD,
        faults: Faults | None = None,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        # IpmiServer.__init__ opens a socket on pyghmi's global I/O thread; we set the
        # fields its methods read and give it a sink that writes to our transport.
        self.identity = identity
        self.machine = machine
        self.faults = faults or Faults()
        self.uuid: uuid.UUID = identity.uuid
        self.port = identity.port
        self.authdata = _Credentials(self, username, password)
        self.authcap = _AUTH_CAPS
        self.kg = None
        self.serversocket = ReplySink(send)
        self.sessions: dict[int, SimSession] = {}
        self.boot_params: dict[int, bytearray] = {
            0: bytearray(1),
            1: bytearray(1),
            2: bytearray(1),
            3: bytearray(1),
            4: bytearray(2),
            5: bytearray(5),
        }
        self._fru = ipmi_records.fru_image(identity)
        self.meter = ipmi_machine.PowerMeter()  # what DCMI Get Power Reading reports
        self._rng = rng or random.Random()  # noqa: S311 - drop decisions, not secrets
        self._clock = clock
        self._started = clock()
        self._down_until = 0.0
        self._reset_cycle = 0
        self.received = 0
        self.dropped = 0

    # -- time, faults, sessions -------------------------------------------------

    def now(self) -> float:
        return self._clock()

    def reset(self, seconds: float) -> None:
        """Behave like a BMC reboot: unreachable for ``seconds``, sessions lost, power kept."""
        self._down_until = self.now() + seconds
        self.sessions.clear()

    def is_down(self) -> bool:
        now = self.now()
        if now < self._down_until:
            return True
        faults = self.faults
        if faults.reset_s <= 0:
            return False
        elapsed = now - self._started
        if faults.reset_period_s <= 0:
            return elapsed < faults.reset_s
        cycle = int(elapsed // faults.reset_period_s)
        if cycle != self._reset_cycle:  # a new period began: that reboot lost the sessions
            self._reset_cycle = cycle
            self.sessions.clear()
        return elapsed % faults.reset_period_s < faults.reset_s

    def reply_delay_s(self, base_latency_ms: float) -> float:
        return (base_latency_ms + self.faults.latency_ms) / 1000.0

    @property
    def privilege_limit(self) -> int:
        return self.faults.privilege

    def drop_session(self, session: SimSession) -> None:
        self.sessions.pop(session.session_key, None)

    def _new_session_id(self) -> bytes | None:
        if len(self.sessions) >= MAX_SESSIONS:
            now = self.now()
            for key, session in list(self.sessions.items()):
                idle = now - session.last_active
                if idle > SESSION_IDLE_S or (not session.established and idle > HANDSHAKE_IDLE_S):
                    del self.sessions[key]
            if len(self.sessions) >= MAX_SESSIONS:
                return None
        while True:
            raw = os.urandom(4)
            key = struct.unpack("<I", raw)[0]
            if key and key not in self.sessions:
                return raw

    # -- packets ------------------------------------------------------------------

    def datagram_received(self, data: bytes, client: Address) -> None:
        self.received += 1
        if self.is_down() or (self.faults.drop and self._rng.random() < self.faults.drop):
            self.dropped += 1
            return
        if len(data) < 5 or data[0] != 6:
            return
        if data[3] == 0x06:
            self._asf_pong(data, client)
        elif data[2:4] != b"\xff\x07":
            return
        elif data[4] == 6 and len(data) >= 16:
            self._ipmi2(bytearray(data), client)
        elif data[4] == 0:
            self.sessionless_data(data, client)  # pyghmi: auth caps and cipher suites

    def _asf_pong(self, data: bytes, client: Address) -> None:
        # ASF presence ping (IANA 4542, type 0x80) -> pong, so sweeps can find us.
        if len(data) < 12 or data[4:8] != b"\x00\x00\x11\xbe" or data[8] != 0x80:
            return
        pong = b"\x06\x00" + data[2:4] + b"\x00\x00\x11\xbe\x40" + data[9:10] + b"\x00\x10"
        pong += b"\x00\x00\x11\xbe" + b"\x00" * 4 + b"\x81\x00" + b"\x00" * 6
        self.serversocket.sendto(pong, client)

    def _ipmi2(self, packet: bytearray, client: Address) -> None:
        payload_type = packet[5] & 0x3F
        session_key = struct.unpack("<I", packet[6:10])[0]
        if payload_type == 0x10:
            self._open_session(packet[16:], client)
            return
        if payload_type in (0x12, 0x14) and len(packet) >= 24:  # RAKP 1 and 3
            session_key = struct.unpack("<I", packet[20:24])[0]
        elif payload_type == 0 and session_key == 0:
            self.sessionless_data(packet, client)
            return
        session = self.sessions.get(session_key)
        if session is not None:
            session.receive(packet, client)

    def _open_session(self, request: bytearray, client: Address) -> None:
        if len(request) < 8:
            return
        status = STATUS_NO_RESOURCES if self.faults.no_resources else 0
        status = status or open_session_status(request)
        session_id = None if status else self._new_session_id()
        if session_id is None:
            status = status or STATUS_NO_RESOURCES
            reply = bytes([request[0], status, 0, 0]) + bytes(request[4:8])
            self.serversocket.sendto(rmcpplus_packet(0x11, reply), client)
            return
        session = SimSession(self, self.serversocket, client, request, session_id)
        self.sessions[session.session_key] = session

    # -- commands -----------------------------------------------------------------

    def handle_raw_request(self, request: IpmiRequest, session: SimSession) -> None:
        if self.faults.busy:
            session.send_ipmi_response(code=CC_NODE_BUSY)
            return
        handler = self._handlers.get((request["netfn"], request["command"]))
        if handler is None:
            session.send_ipmi_response(code=CC_INVALID_COMMAND)
            return
        if session.clientpriv < _PRIVILEGE_NEEDED.get((request["netfn"], request["command"]), 1):
            session.send_ipmi_response(code=CC_INSUFFICIENT_PRIVILEGE)
            return
        try:
            code, data = handler(self, request["data"])
        except Exception:  # one bad request must not take down a thousand BMCs' loop
            log.exception("BMC %s:%d failed a request", self.identity.address, self.port)
            code, data = CC_UNSPECIFIED, []
        session.send_ipmi_response(data=data, code=code)
        if request["netfn"] == 6 and request["command"] in (2, 3) and code == CC_OK:
            self.reset(self.faults.reset_s or COLD_RESET_S)

    def _device_id(self, data: bytearray) -> tuple[int, list[int]]:
        return CC_OK, ipmi_records.device_id()

    def _bmc_reset(self, data: bytearray) -> tuple[int, list[int]]:
        return CC_OK, []  # the reset itself happens after the reply is sent

    def _self_test(self, data: bytearray) -> tuple[int, list[int]]:
        return CC_OK, [0x55, 0x00]

    def _system_guid(self, data: bytearray) -> tuple[int, list[int]]:
        return CC_OK, list(self.uuid.bytes_le)

    def _auth_caps(self, data: bytearray) -> tuple[int, list[int]]:
        return CC_OK, list(self.authcap[1:])

    def _channel_info(self, data: bytearray) -> tuple[int, list[int]]:
        info = ipmi_records.channel_info(data[0] & 0x0F if data else -1)
        return (CC_OK, info) if info else (CC_INVALID_FIELD, [])

    def _channel_access(self, data: bytearray) -> tuple[int, list[int]]:
        if not data or data[0] & 0x0F not in (1, 0x0E):
            return CC_INVALID_FIELD, []
        return CC_OK, [0x22, 0x04]  # always available, alerting off; administrator limit

    def _cipher_suites(self, data: bytearray) -> tuple[int, list[int]]:
        if len(data) >= 3 and data[2] & 0x3F:  # list index past our one short record
            return CC_OK, [1]
        return CC_OK, list(_CIPHER_SUITES)

    def _chassis_status(self, data: bytearray) -> tuple[int, list[int]]:
        # Restore policy "always off" (bits 6:5 = 00), no faults, no front panel lockout.
        return CC_OK, [1 if self.machine.is_on() else 0, 0, 0]

    def boot_device(self) -> tuple[BootDevice, bool]:
        """The boot device the next boot would use, and whether it is persistent."""
        flags = self.boot_params[5]
        if not flags[0] & 0x80:
            return BootDevice(), False
        device = BOOT_DEVICES.get((flags[1] >> 2) & 0x0F, "none")
        return BootDevice(device, uefi=bool(flags[0] & 0x20)), bool(flags[0] & 0x40)

    def _consume_boot_device(self) -> BootDevice:
        boot, persistent = self.boot_device()
        if not persistent:
            self.boot_params[5][0] &= 0x7F  # firmware clears one-time flags when it boots
        return boot

    def _chassis_control(self, data: bytearray) -> tuple[int, list[int]]:
        if not data:
            return CC_BAD_LENGTH, []
        action, machine, on = data[0] & 0x0F, self.machine, self.machine.is_on()
        if action == 0:
            machine.power_off()
        elif action == 1:
            if not on:  # already on is success, as on real BMCs
                machine.power_on(self._consume_boot_device())
        elif action in (2, 3):
            if not on:
                return CC_WRONG_STATE, []  # cycle and reset need a running machine
            if action == 2:
                machine.power_off()
                machine.power_on(self._consume_boot_device())
            else:
                machine.reset(self._consume_boot_device())
        elif action == 5:
            if on:
                machine.soft_off()
        elif action != 4:  # 4 is a diagnostic interrupt: accepted, nothing to simulate
            return CC_INVALID_FIELD, []
        return CC_OK, []

    def _set_boot_options(self, data: bytearray) -> tuple[int, list[int]]:
        if not data:
            return CC_BAD_LENGTH, []
        parameter, value = data[0] & 0x7F, data[1:]
        current = self.boot_params.get(parameter)
        if current is None:
            return CC_PARAM_UNSUPPORTED, []
        if len(value) != len(current):
            return CC_BAD_LENGTH, []
        if parameter == 4:  # boot info acknowledge: byte 0 is a write mask for byte 1
            current[1] = (current[1] & ~value[0]) | (value[1] & value[0])
        else:
            current[:] = value
        return CC_OK, []

    def _get_boot_options(self, data: bytearray) -> tuple[int, list[int]]:
        if not data:
            return CC_BAD_LENGTH, []
        parameter = data[0] & 0x7F
        current = self.boot_params.get(parameter)
        if current is None:
            return CC_PARAM_UNSUPPORTED, []
        return CC_OK, [1, parameter, *current]

    def _fru_info(self, data: bytearray) -> tuple[int, list[int]]:
        if not data or data[0] != 0:
            return CC_NOT_PRESENT, []
        return CC_OK, [*len(self._fru).to_bytes(2, "little"), 0]

    def _fru_read(self, data: bytearray) -> tuple[int, list[int]]:
        if len(data) < 4:
            return CC_BAD_LENGTH, []
        if data[0] != 0:
            return CC_NOT_PRESENT, []
        offset = data[1] | (data[2] << 8)
        chunk = self._fru[offset : offset + min(data[3], 224)]
        return CC_OK, [len(chunk), *chunk]

    def _lan_parameter(self, data: bytearray) -> tuple[int, list[int]]:
        if len(data) < 4:
            return CC_BAD_LENGTH, []
        if data[0] & 0x0F not in (1, 0x0E):
            return CC_INVALID_FIELD, []
        if data[0] & 0x80:  # "revision only"
            return CC_OK, [0x11]
        value = ipmi_records.lan_parameter(self.identity, data[1])
        return (CC_OK, [0x11, *value]) if value is not None else (CC_PARAM_UNSUPPORTED, [])

    def _dcmi_power(self, data: bytearray) -> tuple[int, list[int]]:
        if self.faults.no_dcmi:
            return CC_INVALID_COMMAND, []
        return ipmi_records.dcmi_get_power_reading(data, self.meter.watts(self.machine.is_on()))

    _handlers: dict[tuple[int, int], Callable[[SimBmc, bytearray], tuple[int, list[int]]]] = {
        (6, 0x01): _device_id,
        (6, 0x02): _bmc_reset,
        (6, 0x03): _bmc_reset,
        (6, 0x04): _self_test,
        (6, 0x37): _system_guid,
        (6, 0x38): _auth_caps,
        (6, 0x41): _channel_access,
        (6, 0x42): _channel_info,
        (6, 0x54): _cipher_suites,
        (0, 0x01): _chassis_status,
        (0, 0x02): _chassis_control,
        (0, 0x08): _set_boot_options,
        (0, 0x09): _get_boot_options,
        (0x0A, 0x10): _fru_info,
        (0x0A, 0x11): _fru_read,
        (0x0C, 0x02): _lan_parameter,
        (0x2C, 0x02): _dcmi_power,
    }
