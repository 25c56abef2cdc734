"""SNMP GET/SET for PDU drivers, bounded and classified: v2c on a lean path, v3 on pysnmp.

SNMPv2c goes through :class:`~provisiond.drivers.pdu.snmp_v2c.V2cClient` (a strict
BER codec over one UDP socket: a poll of 50 PDUs x 97 objects costs ~0.1 s of CPU
where pysnmp's hlapi took ~1.5 s). SNMPv3 (authPriv) goes through pysnmp 7's
asyncio hlapi, whose engine is built on first use only.

Each request has its own timeout (``PduTarget.timeout``) and a bounded number of
retries on a timeout (``PduTarget.retries``); pysnmp's own retransmission is off so
that the bound is ours and exact. What an operator sees, for either version:

- no answer at all: ``PduUnreachable`` (retryable). For SNMPv2c a wrong community
  looks exactly like this (an agent silently drops it), so the hint says so;
- ``usmStatsWrongDigests`` / ``usmStatsUnknownUserNames`` / decryption errors
  reported by an SNMPv3 agent: ``PduAuthError`` naming the user (not retried);
- noSuchObject / noSuchInstance read as None; a SET or GET the agent refuses
  (error-status): ``PduUnsupported``; a malformed v2c answer: ``PduBadReply``.

Secrets (community, keys) go into the request only; no message built here holds
one. One :class:`SnmpClient` serves any number of PDUs: share it between the PDUs
of one poll, and close it when done.
"""

from __future__ import annotations

import asyncio
from typing import Any

from pysnmp.error import PySnmpError  # type: ignore[import-untyped]
from pysnmp.hlapi.v3arch.asyncio import (  # type: ignore[import-untyped]
    ContextData,
    ObjectIdentity,
    ObjectType,
    SnmpEngine,
    UdpTransportTarget,
    UsmUserData,
    get_cmd,
    set_cmd,
    usmAesCfb128Protocol,
    usmAesCfb256Protocol,
    usmHMAC192SHA256AuthProtocol,
    usmHMACSHAAuthProtocol,
)
from pysnmp.proto import errind  # type: ignore[import-untyped]
from pysnmp.proto.rfc1902 import Integer32  # type: ignore[import-untyped]

from provisiond.drivers.pdu.base import (
    PduAuthError,
    PduError,
    PduTarget,
    PduUnreachable,
    PduUnsupported,
)
from provisiond.drivers.pdu.snmp_v2c import NO_ANSWER_HINT, V2cClient

AUTH_PROTOCOLS: dict[str, Any] = {
    "sha": usmHMACSHAAuthProtocol,
    "sha256": usmHMAC192SHA256AuthProtocol,
}
PRIV_PROTOCOLS: dict[str, Any] = {
    "aes128": usmAesCfb128Protocol,
    "aes256": usmAesCfb256Protocol,
}

_AUTH_FAILURES = (
    errind.WrongDigest,
    errind.UnknownUserName,
    errind.DecryptionError,
    errind.UnsupportedSecurityLevel,
    errind.AuthenticationFailure,
)
#: Objects per SNMPv3 GET: well under a 1,472-byte datagram with v3's overhead.
V3_BATCH = 24
_NO_ANSWER_HINT = {
    "2c": NO_ANSWER_HINT,
    "3": "no answer: check the address, snmp_port, that SNMPv3 is enabled on the PDU, "
    "and that nothing filters UDP to it",
}


def _oid(text: str) -> ObjectType:
    return ObjectType(ObjectIdentity(text))


class SnmpClient:
    """Requests to any number of PDUs: v2c on one socket, v3 on one pysnmp engine."""

    def __init__(self) -> None:
        self.v2c = V2cClient()
        self.engine: Any = None
        self._engine_lock = asyncio.Lock()

    @classmethod
    async def open(cls) -> SnmpClient:
        return cls()

    def close(self) -> None:
        self.v2c.close()
        if self.engine is not None:
            self.engine.close_dispatcher()

    async def _engine(self) -> Any:
        async with self._engine_lock:
            if self.engine is None:
                # Building an engine is ~70 ms of CPU (MIB modules): not on the event loop.
                self.engine = await asyncio.to_thread(SnmpEngine)
            return self.engine

    def _auth(self, target: PduTarget) -> Any:
        return UsmUserData(
            target.username,
            target.auth_key,
            target.priv_key,
            authProtocol=AUTH_PROTOCOLS[target.auth_protocol],
            privProtocol=PRIV_PROTOCOLS[target.priv_protocol],
        )

    async def get(self, target: PduTarget, *oids: str) -> list[int | None]:
        """Integer values of ``oids``, in as few requests as the version allows; None
        for an object the PDU does not have (or whose value is not an integer)."""
        if target.version != "3":
            return await self.v2c.get(target, oids)
        values: list[int | None] = []
        for start in range(0, len(oids), V3_BATCH):
            chunk = [_oid(o) for o in oids[start : start + V3_BATCH]]
            for _, value in await self._request(target, get_cmd, chunk, "read"):
                try:
                    values.append(int(value))
                except (TypeError, ValueError):
                    values.append(None)  # noSuchObject / noSuchInstance / endOfMibView
        return values

    async def set(self, target: PduTarget, oid: str, value: int) -> None:
        if target.version != "3":
            await self.v2c.set(target, oid, value)
            return
        bind = ObjectType(ObjectIdentity(oid), Integer32(value))
        await self._request(target, set_cmd, [bind], "switch")

    async def _send(
        self, target: PduTarget, engine: Any, command: Any, binds: list[Any]
    ) -> tuple[Any, Any, Any, Any]:
        try:
            transport = await UdpTransportTarget.create(
                (target.address, target.port), timeout=target.timeout, retries=0
            )
        except PySnmpError as exc:  # the name does not resolve
            raise PduUnreachable(
                f"PDU {target.name}: cannot resolve {target.address!r}: {exc}",
                hint="check the PDU's mgmt_address (or use an IP address)",
            ) from None
        result: tuple[Any, Any, Any, Any] = await command(
            engine, self._auth(target), transport, ContextData(), *binds, lookupMib=False
        )
        return result

    async def _request(
        self, target: PduTarget, command: Any, binds: list[Any], doing: str
    ) -> list[tuple[Any, Any]]:
        where = f"PDU {target.name} ({target.endpoint})"
        engine = await self._engine()
        tries = 1 + max(0, target.retries)
        for _ in range(tries):
            try:
                # pysnmp's own timer fires first; this bound also covers resolving the
                # address (UdpTransportTarget.create), which a stuck resolver can hang.
                indication, status, index, answer = await asyncio.wait_for(
                    self._send(target, engine, command, binds), timeout=target.timeout + 2
                )
            except TimeoutError:
                indication, status, index, answer = errind.requestTimedOut, 0, 0, ()
            if isinstance(indication, errind.RequestTimedOut):
                continue
            if indication:
                raise _classify(target, indication, where, doing)
            if status:
                raise PduUnsupported(
                    f"{where} refused to {doing}: {status.prettyPrint()} "
                    f"at {binds[int(index) - 1][0] if index else 'the request'}",
                    hint="the PDU does not have that outlet or object, or the SNMP user "
                    "or community has read-only access (give it write access)",
                )
            return list(answer)
        raise PduUnreachable(
            f"{where} did not answer an SNMP {doing} request within "
            f"{target.timeout:g}s ({tries} tries, SNMPv{target.version})",
            hint=_NO_ANSWER_HINT.get(target.version, _NO_ANSWER_HINT["2c"]),
        )


def _classify(target: PduTarget, indication: Any, where: str, doing: str) -> PduError:
    text = str(indication)
    if isinstance(indication, _AUTH_FAILURES):
        return PduAuthError(
            f"{where} rejected SNMPv3 user {target.username!r} while trying to {doing}: {text}",
            hint="check snmp_username, snmp_auth_key, snmp_priv_key and the auth/priv "
            f"protocols ({target.auth_protocol}/{target.priv_protocol}) against the "
            "PDU's SNMPv3 user settings",
        )
    return PduUnreachable(
        f"{where} failed to {doing}: {text}",
        hint="check the address and snmp_port, and that SNMP is enabled on the PDU",
    )
