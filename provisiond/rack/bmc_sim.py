"""A farm of simulated IPMI 2.0 BMCs on loopback UDP ports, for tests, demos and CI.

One process, one asyncio loop, one UDP socket per BMC on ``address:base_port + i``.
Both ``ipmitool -I lanplus`` and pyghmi's client log in (cipher suite 3; user
``admin``, password ``password`` by default). Each BMC has a power state, boot flags
(device, persistent, UEFI) and a FRU identity; see :mod:`provisiond.rack.ipmi_bmc`
for the commands and :mod:`provisiond.rack.ipmi_faults` for fault injection.

Replies are delayed by ``latency_ms`` (2 ms by default): pyghmi's client stalls for
0.5-1.9 s against sub-millisecond responders (DESIGN.md), and real BMCs are slower.

In tests::

    with BmcFarm(count=3) as farm:
        host, port = farm.endpoint(0)
        ...  # ipmitool -H host -p port ... chassis power on
        assert farm.state(0).power == "on"

From a shell: ``provisiond sim bmc --count 1000 --base-port 16000``.
"""

from __future__ import annotations

import asyncio
import functools
import random
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, TypeVar

from provisiond.rack.ipmi_bmc import DEFAULT_PASSWORD, DEFAULT_USERNAME, SimBmc
from provisiond.rack.ipmi_faults import FaultRule, Faults, faults_for
from provisiond.rack.ipmi_machine import (
    BmcIdentity,
    BootDevice,
    InMemoryMachine,
    MachineBackend,
    PowerMeter,
)
from provisiond.rack.ipmi_transport import (
    Endpoint,
    bind_range,
    call_on_loop,
    check_loopback,
    raise_fd_limit,
    sender,
)

__all__ = [
    "BackendFactory",
    "BmcFarm",
    "Farm",
    "MachineState",
    "check_loopback",
    "run_farm",
]

T = TypeVar("T")
BackendFactory = Callable[[int, BmcIdentity], MachineBackend]

DEFAULT_LATENCY_MS = 2.0


@dataclass(frozen=True)
class MachineState:
    """A snapshot of one simulated machine, for assertions."""

    power: str
    bootdev: str
    persistent: bool
    uefi: bool
    boots: tuple[BootDevice, ...]


class Farm:
    """The BMCs of one farm, living on one event loop. Build it with :meth:`start`."""

    def __init__(self, address: str, base_port: int, bmcs: list[SimBmc]) -> None:
        self.address = address
        self.base_port = base_port
        self.bmcs = bmcs
        self._transports: list[asyncio.DatagramTransport] = []

    @classmethod
    async def start(
        cls,
        count: int,
        address: str = "127.0.0.1",
        base_port: int = 0,
        *,
        username: str = DEFAULT_USERNAME,
        password: str = DEFAULT_PASSWORD,
        latency_ms: float = DEFAULT_LATENCY_MS,
        faults: Sequence[FaultRule] = (),
        seed: int = 0,
        backend_factory: BackendFactory | None = None,
    ) -> Farm:
        if count < 1:
            raise ValueError("count must be at least 1")
        check_loopback(address)
        raise_fd_limit(count + 256)
        base, sockets = bind_range(address, base_port, count)
        loop = asyncio.get_running_loop()
        farm = cls(address, base, [])
        try:
            for index, sock in enumerate(sockets):
                identity = BmcIdentity.default(address, base + index)
                bmc_ref: list[SimBmc] = []
                transport, _ = await loop.create_datagram_endpoint(
                    functools.partial(Endpoint, bmc_ref), sock=sock
                )
                farm._transports.append(transport)
                machine = (backend_factory or _in_memory)(index, identity)
                bmc = SimBmc(
                    identity,
                    machine,
                    sender(loop, transport, bmc_ref, latency_ms),
                    username=username,
                    password=password,
                    faults=faults_for(index, faults),
                    rng=random.Random(seed * 1_000_003 + index),  # noqa: S311 - fault dice
                )
                bmc_ref.append(bmc)
                farm.bmcs.append(bmc)
        except BaseException:
            farm.close()
            for sock in sockets[len(farm._transports) :]:
                sock.close()
            raise
        return farm

    @property
    def last_port(self) -> int:
        return self.base_port + len(self.bmcs) - 1

    def close(self) -> None:
        for transport in self._transports:
            transport.close()
        self._transports.clear()


def _in_memory(index: int, identity: BmcIdentity) -> MachineBackend:
    return InMemoryMachine()


def run_farm(
    count: int,
    address: str,
    base_port: int,
    username: str,
    password: str,
    latency_ms: float,
    faults: Sequence[FaultRule],
    stop_event: threading.Event,
    *,
    seed: int = 0,
    backend_factory: BackendFactory | None = None,
    on_ready: Callable[[Farm, asyncio.AbstractEventLoop], None] | None = None,
) -> None:
    """Serve ``count`` BMCs until ``stop_event`` is set; blocks the calling thread.

    ``on_ready`` runs on the loop once every port is bound. ``base_port`` 0 picks a
    free range; ``farm.base_port`` tells which.
    """

    async def main() -> None:
        farm = await Farm.start(
            count,
            address,
            base_port,
            username=username,
            password=password,
            latency_ms=latency_ms,
            faults=faults,
            seed=seed,
            backend_factory=backend_factory,
        )
        try:
            if on_ready is not None:
                on_ready(farm, asyncio.get_running_loop())
            # A threading.Event cannot wake a loop, and a thread blocked in wait() would
            # outlive the loop if the farm failed; polling is cheap and always ends.
            while not stop_event.is_set():  # noqa: ASYNC110
                await asyncio.sleep(0.05)
        finally:
            farm.close()

    asyncio.run(main())


class BmcFarm:
    """Run a farm on a background thread for the length of a ``with`` block.

    ``base_port=0`` (the default) binds a free range of ports. Read state with
    :meth:`state`; change it, or a BMC's faults, with :meth:`call`, which runs a
    function on the farm's loop so the BMCs never see a half-made change.
    """

    def __init__(
        self,
        count: int = 1,
        base_port: int = 0,
        *,
        address: str = "127.0.0.1",
        username: str = DEFAULT_USERNAME,
        password: str = DEFAULT_PASSWORD,
        latency_ms: float = DEFAULT_LATENCY_MS,
        faults: Sequence[FaultRule] = (),
        seed: int = 0,
        backend_factory: BackendFactory | None = None,
        start_timeout: float = 60.0,
    ) -> None:
        self._args: dict[str, Any] = {
            "count": count,
            "address": check_loopback(address),
            "base_port": base_port,
            "username": username,
            "password": password,
            "latency_ms": latency_ms,
            "faults": tuple(faults),
        }
        self._seed = seed
        self._backend_factory = backend_factory
        self._start_timeout = start_timeout
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None
        self._farm: Farm | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def __enter__(self) -> BmcFarm:
        self._thread = threading.Thread(target=self._run, name="bmc-farm", daemon=True)
        self._thread.start()
        if not self._ready.wait(self._start_timeout):
            self.stop()
            raise TimeoutError(f"BMC farm did not start within {self._start_timeout:g} s")
        if self._error is not None:
            self.stop()
            raise self._error
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _run(self) -> None:
        def ready(farm: Farm, loop: asyncio.AbstractEventLoop) -> None:
            self._farm, self._loop = farm, loop
            self._ready.set()

        try:
            run_farm(
                **self._args,
                stop_event=self._stop,
                seed=self._seed,
                backend_factory=self._backend_factory,
                on_ready=ready,
            )
        except BaseException as exc:  # handed to the thread that called __enter__
            self._error = exc
        finally:
            self._ready.set()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def farm(self) -> Farm:
        if self._farm is None:
            raise RuntimeError("the farm is not running; use it in a with block")
        return self._farm

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The farm's loop: other simulators (PDUs) run on it to drive the same machines."""
        if self._loop is None:
            raise RuntimeError("the farm is not running; use it in a with block")
        return self._loop

    @property
    def address(self) -> str:
        return self.farm.address

    @property
    def base_port(self) -> int:
        return self.farm.base_port

    def __len__(self) -> int:
        return len(self.farm.bmcs)

    def endpoint(self, index: int) -> tuple[str, int]:
        return self.farm.address, self.farm.bmcs[index].port

    def bmc(self, index: int) -> SimBmc:
        return self.farm.bmcs[index]

    def call(self, fn: Callable[[], T], timeout: float = 10.0) -> T:
        """Run ``fn`` on the farm's loop and return its result."""
        return call_on_loop(self._loop, fn, "the farm", timeout)

    def state(self, index: int) -> MachineState:
        def snapshot() -> MachineState:
            bmc = self.farm.bmcs[index]
            boot, persistent = bmc.boot_device()
            machine = bmc.machine
            boots = tuple(machine.boots) if isinstance(machine, InMemoryMachine) else ()
            return MachineState(
                power="on" if machine.is_on() else "off",
                bootdev=boot.device,
                persistent=persistent,
                uefi=boot.uefi,
                boots=boots,
            )

        return self.call(snapshot)

    def set_faults(self, index: int | None, faults: Faults) -> None:
        """Replace the faults of one BMC, or of all of them with ``index=None``."""

        def apply() -> None:
            targets = self.farm.bmcs if index is None else [self.farm.bmcs[index]]
            for bmc in targets:
                bmc.faults = faults

        self.call(apply)

    def reset(self, index: int, seconds: float) -> None:
        """Reboot one BMC: no answers for ``seconds``, sessions lost, power kept."""
        self.call(lambda: self.farm.bmcs[index].reset(seconds))

    def set_meter(self, index: int | None, meter: PowerMeter) -> None:
        """What one machine (or, with ``index=None``, every one) draws while on."""

        def apply() -> None:
            for bmc in self.farm.bmcs if index is None else [self.farm.bmcs[index]]:
                bmc.meter = meter

        self.call(apply)

    def set_power(self, index: int, on: bool) -> None:
        """Change power behind the BMC's back (a person at the power button)."""

        def press() -> None:
            machine = self.farm.bmcs[index].machine
            if on and not machine.is_on():
                machine.power_on(BootDevice())
            elif not on:
                machine.power_off()

        self.call(press)
