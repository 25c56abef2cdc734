"""Power drivers: ipmi, redfish, manual. See base.py for the interface and error classes."""

from provisiond.drivers.power.base import (
    BmcAuthError,
    BmcBusy,
    BmcError,
    BmcFatalError,
    BmcManualAction,
    BmcRetryableError,
    BmcSessionError,
    BmcTarget,
    BmcUnreachable,
    BmcUnsupported,
    BootDevice,
    Identity,
    PowerAction,
    PowerDriver,
    PowerState,
    Setting,
)

__all__ = [
    "BmcAuthError",
    "BmcBusy",
    "BmcError",
    "BmcFatalError",
    "BmcManualAction",
    "BmcRetryableError",
    "BmcSessionError",
    "BmcTarget",
    "BmcUnreachable",
    "BmcUnsupported",
    "BootDevice",
    "Identity",
    "PowerAction",
    "PowerDriver",
    "PowerState",
    "Setting",
]
