"""The power interface every BMC driver implements; the BMC errors, re-exported.

A driver is blocking and talks to one BMC; callers run it through
:class:`provisiond.executor.BlockingExecutor` with a timeout. One driver object is
shared by every thread that talks to its BMC (see :mod:`.pool`), so a driver that
holds a session wraps each conversation in :meth:`PowerDriver.in_call`: then
:meth:`PowerDriver.close` from another thread, when the BMC's settings change,
waits for the calls in flight instead of pulling their session from under them.

The error classes (``BmcError`` and its family: fatal ones such as ``BmcAuthError``,
retryable ones such as ``BmcUnreachable``) are part of the one tree drawn in
:mod:`provisiond.errors`; they are imported from here by the drivers and their callers.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, ClassVar

from provisiond.errors import (
    BmcAuthError,
    BmcBusy,
    BmcCertificateMismatch,
    BmcError,
    BmcFatalError,
    BmcManualAction,
    BmcPrivilegeError,
    BmcRetryableError,
    BmcSessionError,
    BmcTlsError,
    BmcUnreachable,
    BmcUnsupported,
)

__all__ = [
    "BmcAuthError",
    "BmcBusy",
    "BmcCertificateMismatch",
    "BmcError",
    "BmcFatalError",
    "BmcManualAction",
    "BmcPrivilegeError",
    "BmcRetryableError",
    "BmcSessionError",
    "BmcTarget",
    "BmcTlsError",
    "BmcUnreachable",
    "BmcUnsupported",
    "BootDevice",
    "Identity",
    "PowerAction",
    "PowerDriver",
    "PowerState",
    "Setting",
]


class PowerState(StrEnum):
    ON = "on"
    OFF = "off"
    UNKNOWN = "unknown"


class PowerAction(StrEnum):
    ON = "on"
    OFF = "off"
    SOFT_OFF = "soft_off"
    CYCLE = "cycle"
    RESET = "reset"

    @property
    def expected(self) -> PowerState:
        """The state a successful action leaves the machine in."""
        return PowerState.OFF if self in (PowerAction.OFF, PowerAction.SOFT_OFF) else PowerState.ON


class BootDevice(StrEnum):
    PXE = "pxe"
    DISK = "disk"
    CDROM = "cdrom"
    BIOS = "bios"


@dataclass(frozen=True)
class Setting:
    """One setting a driver needs; ``secret`` ones are encrypted at rest and never shown."""

    name: str
    label: str
    required: bool = False
    secret: bool = False
    default: Any = None


@dataclass(frozen=True)
class BmcTarget:
    """Where a BMC is and how to log in. The password never appears in repr or logs."""

    address: str
    port: int
    username: str = ""
    password: str = field(default="", repr=False)
    options: dict[str, str] = field(default_factory=dict)
    #: Where the credentials came from, for hints ("credential set 'dc1'").
    credential_source: str = "the machine's BMC settings"

    @property
    def endpoint(self) -> str:
        return f"{self.address}:{self.port}"


@dataclass
class Identity:
    """What a BMC says about its machine."""

    serial: str = ""
    vendor: str = ""
    model: str = ""
    bmc_mac: str = ""
    guid: str = ""
    firmware: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


class PowerDriver(ABC):
    """Three calls drive a machine's power; identity and the power reading are optional."""

    name: ClassVar[str]
    settings: ClassVar[tuple[Setting, ...]]
    #: Whether :meth:`read_watts` may answer; the power sync asks only drivers that say so.
    reads_watts: ClassVar[bool] = False

    def __init__(self, target: BmcTarget) -> None:
        self.target = target
        self._calls = 0
        self._retired = False
        # Also held while the session is dropped: no call starts on a half-dropped one.
        self._calls_lock = threading.Lock()

    @abstractmethod
    def get_power(self) -> PowerState: ...

    @abstractmethod
    def set_power(self, action: PowerAction) -> None:
        """Request the action; callers confirm by reading the state back."""

    @abstractmethod
    def set_boot_device(
        self, device: BootDevice, *, persistent: bool = False, uefi: bool = False
    ) -> None: ...

    def read_identity(self) -> Identity:
        raise BmcUnsupported(
            f"the {self.name} driver cannot read machine identity",
            hint="enter serial, vendor and model in the inventory instead",
        )

    def read_watts(self) -> int | None:
        """The machine's power draw as its BMC measures it now, in watts.

        None when this BMC has no power meter (or it is not measuring); a driver that
        knows its BMC lacks one remembers that and stops asking it.
        """
        raise BmcUnsupported(
            f"the {self.name} driver cannot read the power draw",
            hint="declare the machine's power_watts in the inventory, or meter its PDU outlet",
        )

    @contextmanager
    def in_call(self) -> Iterator[None]:
        """Hold while talking to the BMC: :meth:`close` then waits for this call to end."""
        with self._calls_lock:
            self._calls += 1
        try:
            yield
        finally:
            with self._calls_lock:
                self._calls -= 1
                if self._retired and self._calls == 0:
                    self._drop_session()

    def close(self) -> None:
        """Retire the driver: drop its session now, or when the last call in flight ends.

        A call made on a retired driver still works; it drops the session it opened
        when it returns, so a thread holding an old driver leaks nothing.
        """
        with self._calls_lock:
            self._retired = True
            if self._calls == 0:
                self._drop_session()

    def _drop_session(self) -> None:  # noqa: B027  (an optional hook with a do-nothing default)
        """Drop any session, with no call in flight; the default driver holds none."""
