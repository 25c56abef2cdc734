"""The outlet interface every PDU driver implements, and the PDU errors.

A PDU driver talks to one PDU and is asynchronous (SNMP over UDP needs no thread);
every request is bounded by :attr:`PduTarget.timeout` and a timeout is retried a
bounded number of times (:attr:`PduTarget.retries`) before it becomes
:class:`PduUnreachable`. Small interface, after Ironic's: three requests a driver
must answer (:meth:`PduDriver.outlet_state`, :meth:`PduDriver.request_outlet`,
:meth:`PduDriver.read_power`); switching with read-back confirmation
(:meth:`PduDriver.set_outlet`, :meth:`PduDriver.cycle`) is built on them here, once.

The errors, beside the BMC family in :mod:`provisiond.errors`::

    PduError                 502, a PDU failed or refused
    ├── PduFatalError        retrying cannot help
    │   ├── PduAuthError     SNMPv3 user unknown or key wrong
    │   ├── PduUnsupported   no such outlet or object on this model
    │   ├── PduBadReply      the answer is malformed or answers something else
    │   └── PduNotConfirmed  accepted, but the read-back disagrees
    └── PduRetryableError    back off and try again
        └── PduUnreachable   no answer (address, port, community, or the PDU is down)
"""

from __future__ import annotations

import asyncio
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from enum import StrEnum
from typing import ClassVar

from provisiond.errors import ProvisiondError

__all__ = [
    "OutletAction",
    "OutletState",
    "PduAuthError",
    "PduBadReply",
    "PduDriver",
    "PduError",
    "PduFatalError",
    "PduNotConfirmed",
    "PduReading",
    "PduRetryableError",
    "PduTarget",
    "PduUnreachable",
    "PduUnsupported",
]


class PduError(ProvisiondError):
    status_code = 502
    code = "pdu_error"
    retryable = False


class PduFatalError(PduError):
    """Retrying cannot help."""


class PduAuthError(PduFatalError):
    code = "pdu_auth_failed"


class PduUnsupported(PduFatalError):
    code = "pdu_unsupported"


class PduBadReply(PduFatalError):
    code = "pdu_bad_reply"


class PduNotConfirmed(PduFatalError):
    code = "pdu_not_confirmed"


class PduRetryableError(PduError):
    retryable = True


class PduUnreachable(PduRetryableError):
    code = "pdu_unreachable"


class OutletState(StrEnum):
    ON = "on"
    OFF = "off"
    UNKNOWN = "unknown"


class OutletAction(StrEnum):
    ON = "on"
    OFF = "off"
    CYCLE = "cycle"


@dataclass(frozen=True)
class PduTarget:
    """Where a PDU is and how to talk to it. Secrets never appear in repr or logs.

    ``version`` "2c" uses ``community``; "3" uses ``username`` with ``auth_key`` and
    ``priv_key`` (authPriv) under ``auth_protocol`` / ``priv_protocol``.
    """

    name: str
    address: str
    port: int = 161
    version: str = "2c"
    community: str = field(default="", repr=False)
    username: str = ""
    auth_protocol: str = "sha"
    auth_key: str = field(default="", repr=False)
    priv_protocol: str = "aes128"
    priv_key: str = field(default="", repr=False)
    #: Seconds one request may take, and how many more times a timeout is retried.
    timeout: float = 3.0
    retries: int = 1

    @property
    def endpoint(self) -> str:
        return f"{self.address}:{self.port}"

    def secrets(self) -> tuple[str, ...]:
        return tuple(s for s in (self.community, self.auth_key, self.priv_key) if s)


@dataclass
class PduReading:
    """What a PDU draws: the whole device, and per outlet where the model meters them."""

    total_watts: int | None
    outlet_watts: dict[int, int] = field(default_factory=dict)
    outlet_states: dict[int, OutletState] = field(default_factory=dict)


class PduDriver(ABC):
    """Switch and read one PDU's outlets. Concrete drivers answer three requests."""

    name: ClassVar[str]
    #: Seconds an outlet stays off in :meth:`cycle`, and the read-back bounds.
    off_seconds: ClassVar[float] = 1.0
    confirm_timeout: ClassVar[float] = 10.0
    confirm_interval: ClassVar[float] = 0.2

    def __init__(self, target: PduTarget) -> None:
        self.target = target

    @abstractmethod
    async def outlet_state(self, outlet: int) -> OutletState: ...

    @abstractmethod
    async def request_outlet(self, outlet: int, on: bool) -> None:
        """Ask the PDU to switch; :meth:`set_outlet` confirms by reading back."""

    @abstractmethod
    async def read_power(self, outlets: list[int]) -> PduReading:
        """Device watts, and for ``outlets`` their state and (if metered) watts."""

    async def close(self) -> None:  # noqa: B027  (an optional hook with a do-nothing default)
        """Release what the driver holds (an SNMP engine's sockets)."""

    async def set_outlet(self, outlet: int, on: bool) -> bool:
        """Switch ``outlet`` and confirm by read-back; True when it changed."""
        want = OutletState.ON if on else OutletState.OFF
        if await self.outlet_state(outlet) is want:
            return False
        await self.request_outlet(outlet, on)
        await self._confirm(outlet, want)
        return True

    async def cycle(self, outlet: int) -> None:
        """Off (confirmed), ``off_seconds`` dark, on (confirmed)."""
        await self.set_outlet(outlet, False)
        await asyncio.sleep(self.off_seconds)
        await self.set_outlet(outlet, True)

    async def _confirm(self, outlet: int, want: OutletState) -> None:
        deadline = time.monotonic() + self.confirm_timeout
        state = await self.outlet_state(outlet)
        while state is not want and time.monotonic() < deadline:
            await asyncio.sleep(self.confirm_interval)
            state = await self.outlet_state(outlet)
        if state is not want:
            raise PduNotConfirmed(
                f"PDU {self.target.name} ({self.target.endpoint}) accepted 'outlet {outlet} "
                f"{want.value}' but the outlet still reads {state.value} after "
                f"{self.confirm_timeout:g}s",
                hint="the outlet may be locked (a PDU-side schedule or a manual override), "
                "or the PDU's relay failed; check the PDU's own web page or log",
            )
