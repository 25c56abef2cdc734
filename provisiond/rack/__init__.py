"""The virtual rack: simulated BMCs (and later QEMU machines and network namespaces).

Used by ``make demo``, the integration tests and users' own CI.
"""

from provisiond.rack.bmc_sim import BmcFarm, Farm, MachineState, check_loopback, run_farm
from provisiond.rack.ipmi_faults import FaultRule, Faults, FaultSpecError, parse_fault
from provisiond.rack.ipmi_machine import BmcIdentity, BootDevice, InMemoryMachine, MachineBackend

__all__ = [
    "BmcFarm",
    "BmcIdentity",
    "BootDevice",
    "Farm",
    "FaultRule",
    "FaultSpecError",
    "Faults",
    "InMemoryMachine",
    "MachineBackend",
    "MachineState",
    "check_loopback",
    "parse_fault",
    "run_farm",
]
