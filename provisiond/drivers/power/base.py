"""The power interface every BMC driver implements, and its error classes.

A driver is blocking and talks to one BMC; callers run it through
:class:`provisiond.executor.BlockingExecutor` with a timeout. Errors are split the
way an operator acts on them:

    BmcError                 (502) carries a hint
    ├── BmcFatalError        retrying cannot help
    │   ├── BmcAuthError     credentials rejected
    │   ├── BmcUnsupported   the BMC cannot do this
    │   └── BmcManualAction  a person must act (the ``manual`` driver)
    └── BmcRetryableError    back off and try again
        ├── BmcUnreachable   no answer (timeout, reset in progress)
        ├── BmcBusy          "insufficient resources", node busy
        └── BmcSessionError  the client library's session broke; log in afresh
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, ClassVar

from provisiond.errors import ProvisiondError


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


class BmcError(ProvisiondError):
    status_code = 502
    code = "bmc_error"
    retryable = False


class BmcFatalError(BmcError):
    pass


class BmcAuthError(BmcFatalError):
    code = "bmc_auth_failed"


class BmcUnsupported(BmcFatalError):
    code = "bmc_unsupported"


class BmcManualAction(BmcFatalError):
    code = "manual_action_required"


class BmcRetryableError(BmcError):
    retryable = True


class BmcUnreachable(BmcRetryableError):
    code = "bmc_unreachable"


class BmcBusy(BmcRetryableError):
    code = "bmc_busy"


class BmcSessionError(BmcRetryableError):
    code = "bmc_session_error"


class PowerDriver(ABC):
    """Three calls drive a machine's power; identity is optional."""

    name: ClassVar[str]
    settings: ClassVar[tuple[Setting, ...]]

    def __init__(self, target: BmcTarget) -> None:
        self.target = target

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

    def close(self) -> None:  # noqa: B027  (an optional hook with a do-nothing default)
        """Drop any session; the default driver holds none."""
