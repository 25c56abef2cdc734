"""The body of a rack's farm process: a BMC per machine and the rack's PDU, on one loop.

:func:`run_rack_farm` serves an IPMI BMC per machine backend on consecutive
127.0.0.1 ports (:class:`~provisiond.rack.bmc_sim.BmcFarm`) and one simulated APC PDU
(:class:`~provisiond.rack.pdu_sim.PduSim`) on the farm's loop: SNMP v2c with the
rack's community on a free UDP port, outlet K feeding machine K and its BMC. So an
outlet switched off powers the machine off and silences its BMC, as in a real rack.
Once everything is bound, ``ready_file`` gets ``{"pid", "base_port", "pdu_port"}``
(atomically); it runs until ``stop`` is set, then the PDU and the BMCs stop.

:func:`provisiond.rack.qemu.serve_farm` runs it with QEMU guests; a test runs it on a
thread with in-memory machines::

    run_rack_farm([InMemoryMachine(), ...], ..., ready_file=path, stop=event)
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

from provisiond.rack.bmc_sim import DEFAULT_LATENCY_MS, BmcFarm
from provisiond.rack.ipmi_machine import BmcIdentity, MachineBackend
from provisiond.rack.pdu_sim import PduSim

__all__ = ["run_rack_farm"]


def run_rack_farm(
    backends: Sequence[MachineBackend],
    *,
    base_port: int,
    username: str,
    password: str,
    pdu_name: str,
    community: str,
    ready_file: Path,
    stop: threading.Event,
    pdu_port: int = 0,
    log: Callable[[str], None] = lambda line: print(line, flush=True),
) -> None:
    """Serve until ``stop`` is set; blocks. Machine ``i`` (0-based) has its BMC on
    ``base_port + i`` and is fed by outlet ``i + 1`` of the PDU."""
    machines = list(backends)

    def factory(index: int, _identity: BmcIdentity) -> MachineBackend:
        return machines[index]

    with (
        BmcFarm(
            len(machines), base_port, username=username, password=password,
            latency_ms=DEFAULT_LATENCY_MS, backend_factory=factory,
        ) as bmcs,
        PduSim.attached(
            bmcs, outlets=len(machines), community=community, base_port=pdu_port
        ) as pdus,
    ):  # fmt: skip
        pdus.call(lambda: setattr(pdus.pdu(0), "name", pdu_name))
        _, snmp_port = pdus.endpoint(0)
        ready = {"pid": os.getpid(), "base_port": bmcs.base_port, "pdu_port": snmp_port}
        tmp = ready_file.with_name(ready_file.name + ".tmp")
        tmp.write_text(json.dumps(ready))
        tmp.replace(ready_file)
        log(f"{len(machines)} BMCs on {bmcs.address}:{bmcs.base_port}-{bmcs.farm.last_port}")
        log(f"PDU {pdu_name} on {bmcs.address}:{snmp_port} (SNMP v2c), {len(machines)} outlets")
        while not stop.wait(0.2):
            pass
    log("PDU and BMCs stopped")
