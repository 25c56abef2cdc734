"""RMCP+ sessions for simulated BMCs, built on pyghmi's server session.

pyghmi 1.6.19's ``ServerSession`` supplies the RAKP handshake, the AES/HMAC-SHA1
framing and the request parsing. Two defects are fixed here (DESIGN.md):

1. It answers any Open Session Request with cipher suite 3, whatever the client
   proposed. pyghmi's own client proposes suite 17 (SHA-256) first, takes the reply
   as agreement and crashes in ``_got_rakp2`` with ``struct.error``.
   :func:`open_session_status` checks the proposal, and the BMC answers anything but
   suite 3 with RMCP+ status 0x11 ("no cipher suite match"); pyghmi's client then
   retries with suite 3, and ``ipmitool -C 17`` gets a clean error.
2. It registers every session in the process-wide ``Session.bmc_handlers`` keyed by
   client address and BMC port, and reads packets through pyghmi's global socket
   thread, so BMCs sharing a process (or a client and a server) step on each other.
   :class:`SimSession` skips that registration: each BMC keeps its own table keyed by
   the session ID it handed out, and the farm feeds it packets from that BMC's socket.

It also answers protocol errors the original drops silently (unknown user: RAKP2
status 0x0D; bad RAKP3 code: RAKP4 status 0x0F), so clients fail fast, not by timeout.

A session holds at most its owner's ``privilege_limit`` (the ``privilege`` fault):
as with a name-only lookup on a real BMC, the login works and Set Session Privilege
Level above the user's limit answers 0x80 ("not available for this user").
"""

from __future__ import annotations

import collections
import hashlib
import hmac
import struct
import uuid
from collections.abc import Callable
from typing import Any, Protocol, TypedDict

import pyghmi.ipmi.private.constants as constants
import pyghmi.ipmi.private.serversession as serversession

__all__ = [
    "IpmiRequest",
    "ReplySink",
    "SessionOwner",
    "SimSession",
    "open_session_status",
    "rmcpplus_packet",
]

Address = tuple[Any, ...]

RMCP_HEADER = b"\x06\x00\xff\x07"
PAYLOAD_OPEN_RESPONSE = constants.payload_types["rmcpplusopenresponse"]
PAYLOAD_RAKP2 = constants.payload_types["rakp2"]
PAYLOAD_RAKP4 = constants.payload_types["rakp4"]

# RMCP+ status codes (IPMI 2.0 table 13-15).
STATUS_NO_RESOURCES = 0x01
STATUS_UNAUTHORIZED_NAME = 0x0D
STATUS_BAD_INTEGRITY_CHECK = 0x0F
STATUS_NO_CIPHER_MATCH = 0x11
STATUS_ILLEGAL_PARAMETER = 0x12

# Suite 3: RAKP-HMAC-SHA1, HMAC-SHA1-96, AES-CBC-128; the only suite pyghmi's server speaks.
SUITE3_ALGORITHMS = bytes([0, 0, 0, 8, 1, 0, 0, 0, 1, 0, 0, 8, 1, 0, 0, 0, 2, 0, 0, 8, 1, 0, 0, 0])


class IpmiRequest(TypedDict):
    """A decoded request as pyghmi's server code hands it over."""

    netfn: int
    command: int
    data: bytearray


class SessionOwner(Protocol):
    """What a session needs from its BMC."""

    authdata: Any
    uuid: uuid.UUID

    def handle_raw_request(self, request: IpmiRequest, session: SimSession) -> None: ...

    def drop_session(self, session: SimSession) -> None: ...

    def now(self) -> float: ...

    @property
    def privilege_limit(self) -> int: ...


class ReplySink:
    """Stands in for the socket pyghmi's server code writes to.

    pyghmi calls ``setblocking`` and ``sendto`` on it; we forward to the farm, which
    adds latency and writes to the BMC's own UDP transport.
    """

    def __init__(self, send: Callable[[bytes, Address], None]) -> None:
        self._send = send

    def setblocking(self, flag: bool) -> None:
        pass

    def sendto(self, packet: bytes | bytearray, address: Address) -> int:
        self._send(bytes(packet), address)
        return len(packet)


def rmcpplus_packet(payload_type: int, payload: bytes) -> bytes:
    """An unauthenticated IPMI 2.0 packet (session ID 0), as used for errors before login."""
    return (
        RMCP_HEADER + bytes([6, payload_type]) + struct.pack("<IIH", 0, 0, len(payload)) + payload
    )


def open_session_status(request: bytes | bytearray) -> int:
    """RMCP+ status for an Open Session Request: 0 if it asks for cipher suite 3.

    Layout (table 13-16): tag, privilege, 2 reserved, console session ID, then three
    8-byte algorithm payloads (authentication, integrity, confidentiality) with the
    algorithm number in byte 4 of each.
    """
    if len(request) < 32:
        return STATUS_ILLEGAL_PARAMETER
    wanted = ((0, 1), (1, 1), (2, 1))
    for index, (payload_type, algorithm) in enumerate(wanted):
        block = request[8 + 8 * index : 16 + 8 * index]
        if block[0] != payload_type or (block[4] & 0x3F) != algorithm:
            return STATUS_NO_CIPHER_MATCH
    return 0


class SimSession(serversession.ServerSession):  # type: ignore[misc]
    """One RMCP+ session on one simulated BMC (cipher suite 3 only)."""

    def __new__(cls, *args: Any, **kwargs: Any) -> SimSession:
        # pyghmi's Session.__new__ looks up shared client sessions; a server needs none.
        return object.__new__(cls)

    def __init__(
        self,
        owner: SessionOwner,
        sink: ReplySink,
        client: Address,
        request: bytearray,
        session_id: bytes,
    ) -> None:
        # ServerSession.__init__ registers in the process-wide Session.bmc_handlers
        # (defect 2), so the fields it sets are set here instead.
        self.bmc = owner
        self.uuid = owner.uuid
        self.authdata = owner.authdata
        self.kg: bytes | None = None
        self.socket = sink
        self.sockaddr = client
        self.currhashlib = hashlib.sha1
        self.currhashlen = 12
        self.rqaddr = constants.IPMI_BMC_ADDRESS
        self.servermode = True
        self.ipmiversion = 2.0
        self.sequencenumber = 0
        self.sessionid = 0
        self.lastpayload = None
        self.last_payload_type = None
        self.rqlun = None
        self.broken = False
        self.authtype = 6
        self.integrityalgo = 0
        self.confalgo = 0
        self.k1: bytes | None = None
        self.pendingpayloads: collections.deque[Any] = collections.deque()
        self.pktqueue: collections.deque[Any] = collections.deque()
        self.managedsessionid = bytearray(session_id)
        self.session_key = struct.unpack("<I", session_id)[0]
        self.established = False
        self.maxpriv = 4
        self.clientpriv = 4
        self.last_active = owner.now()
        response = self.create_open_session_response(request)
        self.send_payload(response, PAYLOAD_OPEN_RESPONSE, retry=False)

    def create_open_session_response(self, request: bytearray) -> bytearray:
        # Same reply as pyghmi's, but with the session ID the BMC chose (unique, non-zero).
        self.clientsessionid = request[4:8]
        self.privlevel = 4
        return (
            bytearray([request[0], 0, self.privlevel, 0])
            + self.clientsessionid
            + self.managedsessionid
            + SUITE3_ALGORITHMS
        )

    def receive(self, packet: bytearray, client: Address) -> None:
        """Handle one IPMI 2.0 packet addressed to this session."""
        self.sockaddr = client  # answer wherever the client is now, as a real BMC does
        self.last_active = self.bmc.now()
        self._handle_ipmi2_packet(packet)

    def _reply_error(self, payload_type: int, tag: int, status: int) -> None:
        payload = bytes([tag, status, 0, 0]) + bytes(self.clientsessionid)
        self.socket.sendto(rmcpplus_packet(payload_type, payload), self.sockaddr)

    def _got_rakp1(self, data: bytearray) -> None:
        if len(data) < 28 or data[27] == 0 or len(data) < 28 + data[27]:
            self._reply_error(PAYLOAD_RAKP2, data[0] if data else 0, STATUS_UNAUTHORIZED_NAME)
            return
        username = bytes(data[28 : 28 + data[27]]).decode("utf-8", "replace")
        if self.authdata.get(username) is None:
            # pyghmi ignores unknown users and the client waits for a timeout.
            self._reply_error(PAYLOAD_RAKP2, data[0], STATUS_UNAUTHORIZED_NAME)
            return
        self.kg = None  # derive Kg from this user's password, even on a repeated RAKP1
        super()._got_rakp1(data)

    def _got_rakp3(self, data: bytearray) -> None:
        if not hasattr(self, "Rc") or len(data) < 8:
            return
        if data[1] != 0:
            # The client rejected our RAKP2 (e.g. its password differs): forget the session.
            self.bmc.drop_session(self)
            return
        header = struct.pack("2B", self.rolem, len(self.username))
        kg = self.kg or self.kuid
        self.sik = hmac.new(
            kg, bytes(self.Rm + self.Rc) + header + self.username, hashlib.sha1
        ).digest()
        self.k1 = hmac.new(self.sik, b"\x01" * 20, hashlib.sha1).digest()
        self.k2 = hmac.new(self.sik, b"\x02" * 20, hashlib.sha1).digest()
        self.aeskey = self.k2[0:16]
        signed = bytes(self.Rc + self.clientsessionid) + header + self.username
        expected = hmac.new(self.kuid, signed, hashlib.sha1).digest()
        if not hmac.compare_digest(expected, bytes(data[8:])):
            self.k1 = None
            self._reply_error(PAYLOAD_RAKP4, data[0], STATUS_BAD_INTEGRITY_CHECK)
            self.bmc.drop_session(self)
            return
        self.localsid = self.session_key
        self.maxpriv = max(1, min(4, self.bmc.privilege_limit))
        self.clientpriv = self.maxpriv
        self.ipmicallback = self.handle_client_request
        self.established = True
        self._send_rakp4(data[0], 0)

    def handle_client_request(self, request: IpmiRequest) -> None:
        netfn, command = request["netfn"], request["command"]
        if netfn == 6 and command == 0x3B:  # Set Session Privilege Level
            wanted = request["data"][0] & 0x0F if request["data"] else 0
            if wanted == 0:  # 0 means "report the current level"
                self.send_ipmi_response(data=[self.clientpriv])
            elif wanted > 4:
                self.send_ipmi_response(code=0x81)  # above the channel's limit
            elif wanted > self.maxpriv:
                self.send_ipmi_response(code=0x80)  # above this user's limit
            else:
                self.clientpriv = wanted
                self.send_ipmi_response(data=[wanted])
        elif netfn == 6 and command == 0x3C:  # Close Session
            self.send_ipmi_response()
            self.bmc.drop_session(self)
        else:
            self.bmc.handle_raw_request(request, self)
