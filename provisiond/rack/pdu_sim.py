"""Simulated APC rack PDUs: SNMP agents on loopback whose outlets feed simulated machines.

One pysnmp command responder (one engine) serves ``count`` PDUs on consecutive UDP
ports of ``address``; each answers the PowerNet-MIB objects that
:mod:`provisiond.drivers.pdu.apc_snmp` uses: outlet command/state, device watts and
per-outlet watts. SNMPv2c with a community, SNMPv3 authPriv (SHA or SHA-256, AES-128)
with a user; an unknown community gets no answer, like a real agent.

An outlet may feed a machine backend (:class:`MachineBackend`, QEMU or in memory)
and its BMC (:class:`SimBmc`). Switching the outlet off kills the machine's power
(``power_off``: a QEMU guest dies) and darkens its BMC: it answers nothing until the
outlet is on again and it has booted (``bmc_boot_s``). When power returns the
machine does what its power-restore policy says: ``last`` (on if it was on when the
power went), ``on`` or ``off``. Watts follow: ``idle_watts + load_watts`` for a
running machine, ``standby_watts`` (its BMC) for a stopped one on a live outlet, 0
on a dark one; the PDU's total is the sum.

Everything runs on one asyncio loop; to drive BMCs the PDUs must run on the BMC
farm's loop (:func:`attach` does that for a :class:`BmcFarm`). For tests::

    with BmcFarm(3) as bmcs, PduSim.attached(bmcs, outlets=4) as pdus:
        host, port = pdus.endpoint(0)          # outlet k+1 feeds bmcs.bmc(k)
        pdus.pause(0, True)                    # the agent stops answering
        pdus.refuse_on(0, 2)                   # outlet 2 refuses to switch on

From a shell, standalone (no machines): ``provisiond sim pdu --count 50 --outlets 48``.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, TypeVar

from pysnmp import error as snmp_error  # type: ignore[import-untyped]
from pysnmp.carrier.asyncio.dgram import udp  # type: ignore[import-untyped]
from pysnmp.entity import config, engine  # type: ignore[import-untyped]
from pysnmp.entity.rfc3413 import cmdrsp, context  # type: ignore[import-untyped]
from pysnmp.proto.api import v2c  # type: ignore[import-untyped]
from pysnmp.smi import error as smi_error  # type: ignore[import-untyped]
from pysnmp.smi import instrum

from provisiond.rack.ipmi_bmc import SimBmc
from provisiond.rack.ipmi_machine import BootDevice, MachineBackend
from provisiond.rack.ipmi_transport import (
    bind_range,
    call_on_loop,
    check_loopback,
    raise_fd_limit,
)

__all__ = ["DEFAULT_COMMUNITY", "PduSim", "SimOutlet", "SimPdu", "SnmpAgent", "serve_pdus"]

T = TypeVar("T")
DEFAULT_COMMUNITY = "private"
DEFAULT_V3_USER = "pduadmin"
#: A dark BMC is "down" until the outlet comes back (SimBmc.reset with a long time).
_DARK_S = 10.0**9
_OUTLET = (1, 3, 6, 1, 4, 1, 318, 1, 1, 12, 3, 3, 1, 1, 4)
_DEVICE_WATTS = (1, 3, 6, 1, 4, 1, 318, 1, 1, 12, 1, 16, 0)
_OUTLET_WATTS = (1, 3, 6, 1, 4, 1, 318, 1, 1, 26, 9, 4, 3, 1, 7)
_AUTH = {"sha": config.USM_AUTH_HMAC96_SHA, "sha256": config.USM_AUTH_HMAC192_SHA256}


@dataclass
class SimOutlet:
    """One outlet, and what it feeds (nothing, a machine, a machine and its BMC)."""

    number: int
    on: bool = True
    machine: MachineBackend | None = None
    bmc: SimBmc | None = None
    restore: str = "last"  # the machine's power-restore policy: last | on | off
    idle_watts: int = 80
    load_watts: int = 40
    standby_watts: int = 8
    bmc_boot_s: float = 0.5
    switches: int = 0
    _was_on: bool = False

    def watts(self) -> int:
        if not self.on or self.machine is None:
            return 0
        if self.machine.is_on():
            return self.idle_watts + self.load_watts
        return self.standby_watts

    def power(self, on: bool) -> None:
        if on == self.on:
            return
        self.switches += 1
        self.on = on
        if not on:
            self._was_on = self.machine is not None and self.machine.is_on()
            if self.machine is not None and self.machine.is_on():
                self.machine.power_off()
            if self.bmc is not None:
                self.bmc.reset(_DARK_S)  # no answers, sessions lost
            return
        if self.bmc is not None:
            self.bmc.reset(self.bmc_boot_s)
        if self.machine is not None and (
            self.restore == "on" or (self.restore == "last" and self._was_on)
        ):
            self.machine.power_on(BootDevice())


@dataclass
class SimPdu:
    name: str
    port: int
    outlets: dict[int, SimOutlet] = field(default_factory=dict)
    #: Paused: requests are read and dropped, like a PDU whose agent hangs.
    paused: bool = False
    #: Seconds an immediateReboot keeps the outlet off.
    reboot_s: float = 1.0
    #: Outlets that refuse to switch on (resourceUnavailable), like a failed relay.
    refuse_on: set[int] = field(default_factory=set)
    requests: int = 0

    def total_watts(self) -> int:
        return sum(o.watts() for o in self.outlets.values())


class _Instrum(instrum.AbstractMibInstrumController):  # type: ignore[misc]
    """GET and SET of the APC objects; the transport domain says which PDU was asked."""

    def __init__(self, pdus: list[SimPdu], loop: asyncio.AbstractEventLoop) -> None:
        self.pdus = pdus
        self.loop = loop

    def _pdu(self, ctx: dict[str, Any]) -> SimPdu:
        request = ctx["snmpEngine"].observer.get_execution_context("rfc3412.receiveMessage:request")
        pdu: SimPdu = self.pdus[int(request["transportDomain"][-1]) - 1]
        pdu.requests += 1
        if pdu.paused:
            raise snmp_error.PySnmpError("paused")  # cmdrsp drops it: no answer
        return pdu

    def _value(self, pdu: SimPdu, oid: tuple[int, ...]) -> Any:
        if oid == _DEVICE_WATTS:
            return v2c.Integer(pdu.total_watts())
        outlet = pdu.outlets.get(oid[-1]) if len(oid) == len(_OUTLET) + 1 else None
        if outlet is not None and oid[:-1] == _OUTLET:
            return v2c.Integer(1 if outlet.on else 2)
        if outlet is not None and oid[:-1] == _OUTLET_WATTS:
            return v2c.Integer(outlet.watts())
        return v2c.NoSuchInstance()

    def read_variables(self, *binds: Any, **ctx: Any) -> list[tuple[Any, Any]]:
        pdu = self._pdu(ctx)
        return [(name, self._value(pdu, tuple(name))) for name, _ in binds]

    def write_variables(self, *binds: Any, **ctx: Any) -> list[tuple[Any, Any]]:
        pdu = self._pdu(ctx)
        changes: list[tuple[SimOutlet, int]] = []
        for idx, (name, value) in enumerate(binds):
            oid = tuple(name)
            outlet = pdu.outlets.get(oid[-1]) if oid[:-1] == _OUTLET else None
            if outlet is None:
                raise smi_error.NotWritableError(name=name, idx=idx)
            if int(value) not in (1, 2, 3):
                raise smi_error.WrongValueError(name=name, idx=idx)
            if int(value) != 2 and outlet.number in pdu.refuse_on:
                raise smi_error.ResourceUnavailableError(name=name, idx=idx)
            changes.append((outlet, int(value)))
        for outlet, command in changes:  # all or nothing, as SNMP SET demands
            outlet.power(command == 1)
            if command == 3:
                self.loop.call_later(pdu.reboot_s, outlet.power, True)
        return list(binds)


class SnmpAgent:
    """``count`` simulated PDUs behind one pysnmp engine, on the running loop."""

    def __init__(self, address: str, pdus: list[SimPdu], snmp: Any) -> None:
        self.address = address
        self.pdus = pdus
        self._engine = snmp

    @classmethod
    def start(
        cls,
        count: int,
        outlets: int,
        *,
        address: str = "127.0.0.1",
        base_port: int = 0,
        community: str = DEFAULT_COMMUNITY,
        v3_user: str = DEFAULT_V3_USER,
        v3_auth_key: str = "",
        v3_priv_key: str = "",
        v3_auth: str = "sha",
    ) -> SnmpAgent:
        """Bind the ports and answer; call on the loop that is to serve (it returns at once).

        SNMPv3 is served when both keys are given (at least 8 characters each).
        """
        check_loopback(address)
        raise_fd_limit(count + 256)
        loop = asyncio.get_running_loop()
        base, sockets = bind_range(address, base_port, count)
        snmp = engine.SnmpEngine()
        pdus = [
            SimPdu(
                f"pdu{i + 1}",
                base + i,
                {n: SimOutlet(n) for n in range(1, outlets + 1)},
            )
            for i in range(count)
        ]
        for i, sock in enumerate(sockets):
            transport = udp.UdpAsyncioTransport(loop=loop).open_server_mode(sock=sock)
            config.add_transport(snmp, (*udp.DOMAIN_NAME, i + 1), transport)
        config.add_v1_system(snmp, "pdu-agent", community)
        config.add_vacm_user(snmp, 2, "pdu-agent", "noAuthNoPriv", (1, 3, 6), (1, 3, 6))
        if v3_auth_key and v3_priv_key:
            config.add_v3_user(
                snmp, v3_user, _AUTH[v3_auth], v3_auth_key,
                config.USM_PRIV_CFB128_AES, v3_priv_key,
            )  # fmt: skip
            config.add_vacm_user(snmp, 3, v3_user, "authPriv", (1, 3, 6), (1, 3, 6))
        snmp_context = context.SnmpContext(snmp)
        snmp_context.context_names[b""] = _Instrum(pdus, loop)
        cmdrsp.GetCommandResponder(snmp, snmp_context)
        cmdrsp.SetCommandResponder(snmp, snmp_context)
        return cls(address, pdus, snmp)

    def close(self) -> None:
        self._engine.close_dispatcher()


def serve_pdus(
    agent_args: dict[str, Any],
    stop_event: threading.Event,
    on_ready: Callable[[SnmpAgent], None] | None = None,
) -> None:
    """Serve PDUs on a fresh loop until ``stop_event`` is set (``provisiond sim pdu``)."""

    async def main() -> None:
        agent = SnmpAgent.start(**agent_args)
        try:
            if on_ready is not None:
                on_ready(agent)
            while not stop_event.is_set():  # noqa: ASYNC110  (as bmc_sim.run_farm)
                await asyncio.sleep(0.05)
        finally:
            agent.close()

    asyncio.run(main())


class PduSim:
    """PDUs on another thread's loop, for a ``with`` block: their own, or a BMC farm's.

    ``wiring`` maps outlet ``(pdu index, outlet number)`` to a BMC farm index:
    that outlet feeds that BMC and its machine. By default outlet k+1 of PDU 0
    feeds BMC k.
    """

    def __init__(
        self,
        count: int = 1,
        outlets: int = 8,
        *,
        loop: asyncio.AbstractEventLoop | None = None,
        bmcs: Sequence[SimBmc] = (),
        wiring: dict[tuple[int, int], int] | None = None,
        **agent_args: Any,
    ) -> None:
        self._args = {"count": count, "outlets": outlets, **agent_args}
        self._bmcs = list(bmcs)
        self._wiring = (
            wiring if wiring is not None else {(0, k + 1): k for k in range(len(self._bmcs))}
        )
        self._loop = loop
        self._own: threading.Thread | None = None
        self._stop = threading.Event()
        self.agent: SnmpAgent | None = None

    @classmethod
    def attached(cls, farm: Any, **kwargs: Any) -> PduSim:
        """PDUs on a running :class:`~provisiond.rack.bmc_sim.BmcFarm`'s loop, fed BMCs."""
        bmcs = [farm.bmc(i) for i in range(len(farm))]
        return cls(loop=farm.loop, bmcs=bmcs, **kwargs)

    def __enter__(self) -> PduSim:
        if self._loop is None:
            ready = threading.Event()

            def run() -> None:
                async def main() -> None:
                    self._loop = asyncio.get_running_loop()
                    ready.set()
                    while not self._stop.is_set():  # noqa: ASYNC110
                        await asyncio.sleep(0.05)
                    if self.agent is not None:
                        self.agent.close()

                asyncio.run(main())

            self._own = threading.Thread(target=run, name="pdu-sim", daemon=True)
            self._own.start()
            ready.wait(10)
        self.agent = self.call(lambda: SnmpAgent.start(**self._args))
        self.call(self._wire)
        return self

    def _wire(self) -> None:
        for (pdu, number), index in self._wiring.items():
            outlet = self.pdu(pdu).outlets[number]
            bmc = self._bmcs[index]
            outlet.bmc, outlet.machine = bmc, bmc.machine

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._own is not None:
            self._stop.set()
            self._own.join(10)
        elif self.agent is not None:
            self.call(self.agent.close)

    def call(self, fn: Callable[[], T], timeout: float = 10.0) -> T:
        """Run ``fn`` on the PDUs' loop and return its result."""
        return call_on_loop(self._loop, fn, "the PDU simulator", timeout)

    def pdu(self, index: int) -> SimPdu:
        if self.agent is None:
            raise RuntimeError("the PDU simulator is not running")
        return self.agent.pdus[index]

    def endpoint(self, index: int) -> tuple[str, int]:
        assert self.agent is not None
        return self.agent.address, self.pdu(index).port

    def pause(self, index: int, paused: bool) -> None:
        self.call(lambda: setattr(self.pdu(index), "paused", paused))

    def refuse_on(self, index: int, number: int, refuse: bool = True) -> None:
        """Make outlet ``number`` of PDU ``index`` refuse (or accept again) to switch on."""

        def change() -> None:
            refused = self.pdu(index).refuse_on
            if refuse:
                refused.add(number)
            else:
                refused.discard(number)

        self.call(change)

    def outlet_on(self, index: int, number: int) -> bool:
        return self.call(lambda: self.pdu(index).outlets[number].on)

    def set_restore(self, policy: str) -> None:
        """Every outlet's machine power-restore policy: last | on | off."""

        def apply() -> None:
            for pdu in self.agent.pdus if self.agent else []:
                for outlet in pdu.outlets.values():
                    outlet.restore = policy

        self.call(apply)
