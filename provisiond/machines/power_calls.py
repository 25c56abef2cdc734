"""Robust power actions: idempotent, bounded, retried with backoff, confirmed by read-back.

MAAS's and Ironic's most reported pain is a power action that "succeeded" but did
nothing, or failed on a BMC that was merely busy. Here an action:

1. reads the state first, and treats "already on" (or off) as success;
2. runs in the blocking executor with a timeout, one session per BMC at a time;
3. retries retryable errors (timeouts, busy BMCs) with backoff, never fatal ones;
4. reads the state back until it matches, within ``confirm_timeout``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from provisiond.drivers.power.base import (
    BmcError,
    BmcRetryableError,
    BmcUnreachable,
    BootDevice,
    PowerAction,
    PowerDriver,
    PowerState,
)
from provisiond.executor import BlockingExecutor, CallTimeout

T = TypeVar("T")

#: Seconds to wait before each retry of a retryable error (MAAS-like, shortened).
DEFAULT_BACKOFF: tuple[float, ...] = (1, 2, 4, 8)


@dataclass
class PowerPolicy:
    call_timeout: float = 15.0
    backoff: Sequence[float] = DEFAULT_BACKOFF
    confirm_timeout: float = 30.0
    confirm_interval: float = 0.5
    #: The draw reading's own time limit (0: ``call_timeout``); see read_power_and_watts.
    watts_timeout: float = 0.0


@dataclass
class PowerResult:
    state: PowerState
    changed: bool
    attempts: int
    seconds: float
    errors: list[str] = field(default_factory=list)


def _key(driver: PowerDriver) -> str:
    return f"bmc:{driver.target.endpoint}"


async def _with_retries(
    executor: BlockingExecutor,
    driver: PowerDriver,
    fn: Callable[[], T],
    what: str,
    policy: PowerPolicy,
    errors: list[str],
) -> tuple[T, int]:
    delays = [0.0, *policy.backoff]
    last: BmcError | None = None
    for attempts, delay in enumerate(delays, start=1):
        if delay:
            await asyncio.sleep(delay)
        try:
            result = await executor.run(
                fn, timeout=policy.call_timeout, key=_key(driver), what=what
            )
            return result, attempts
        except CallTimeout as exc:
            last = BmcUnreachable(
                f"BMC {driver.target.endpoint} did not answer '{what}' within "
                f"{policy.call_timeout:g}s",
                hint=f"check the address and port and that the BMC is reachable; {exc.hint}",
            )
        except BmcRetryableError as exc:
            last = exc
        errors.append(last.message)
    assert last is not None
    last.message = f"{last.message} (gave up after {len(delays)} attempts)"
    raise last


async def get_power(
    executor: BlockingExecutor, driver: PowerDriver, policy: PowerPolicy | None = None
) -> PowerState:
    policy = policy or PowerPolicy()
    state, _ = await _with_retries(executor, driver, driver.get_power, "read power", policy, [])
    return state


@dataclass(frozen=True)
class PowerReading:
    """A power state and, where the driver reads it, the draw in watts."""

    state: PowerState
    watts: int | None = None
    #: Why the draw could not be read although the state could (None if it was).
    watts_error: BmcError | None = None


async def read_power_and_watts(
    executor: BlockingExecutor, driver: PowerDriver, policy: PowerPolicy | None = None
) -> PowerReading:
    """The state, then the draw right after it, on the driver's one BMC session.

    They are two executor calls, each with its own time limit: a slow or broken meter
    never turns the state read into a failure (BmcUnreachable, and in the end a BMC
    marked unreachable). Whatever goes wrong with the draw (a timeout, a BMC error, a
    reply in a shape no parser expected) is reported in ``watts_error``, never raised.
    """
    policy = policy or PowerPolicy()
    state, _ = await _with_retries(executor, driver, driver.get_power, "read power", policy, [])
    if not driver.reads_watts or state is PowerState.OFF:
        # an off machine counts 0 W and keeps its last draw while on (power_budget):
        # its standby draw is of no use, so it costs no second request
        return PowerReading(state)
    timeout = policy.watts_timeout or policy.call_timeout
    try:
        watts = await executor.run(
            driver.read_watts, timeout=timeout, key=_key(driver), what="read power draw"
        )
    except CallTimeout as exc:
        late = BmcUnreachable(
            f"BMC {driver.target.endpoint} did not read its power draw within {timeout:g}s",
            hint=f"its power meter is slow; the state read is unaffected; {exc.hint}",
        )
        return PowerReading(state, None, late)
    except BmcError as exc:
        return PowerReading(state, None, exc)
    except Exception as exc:  # a driver bug or a reply no parser expected: not a power failure
        error = BmcError(
            f"BMC {driver.target.endpoint} sent a power reading that could not be read "
            f"({type(exc).__name__}: {exc})"[:400],
            hint="the BMC's power meter answers in an unexpected shape; the machine counts "
            "at its declared power_watts until it reads again",
            code="bmc_meter_unreadable",
        )
        return PowerReading(state, None, error)
    return PowerReading(state, watts)


async def set_boot_device(
    executor: BlockingExecutor,
    driver: PowerDriver,
    device: BootDevice,
    *,
    persistent: bool = False,
    uefi: bool = False,
    policy: PowerPolicy | None = None,
) -> None:
    policy = policy or PowerPolicy()

    def call() -> None:
        driver.set_boot_device(device, persistent=persistent, uefi=uefi)

    await _with_retries(executor, driver, call, f"set boot device {device.value}", policy, [])


async def power(
    executor: BlockingExecutor,
    driver: PowerDriver,
    action: PowerAction,
    policy: PowerPolicy | None = None,
) -> PowerResult:
    """Do ``action`` and confirm it; raise a BmcError with a hint when it cannot be done."""
    policy = policy or PowerPolicy()
    started = time.monotonic()
    errors: list[str] = []
    before, attempts = await _with_retries(
        executor, driver, driver.get_power, "read power", policy, errors
    )
    expected = action.expected
    if action in (PowerAction.ON, PowerAction.OFF, PowerAction.SOFT_OFF) and before is expected:
        return PowerResult(before, False, attempts, time.monotonic() - started, errors)

    def request() -> None:
        driver.set_power(action)

    _, more = await _with_retries(
        executor, driver, request, f"power {action.value}", policy, errors
    )
    attempts += more
    deadline = time.monotonic() + policy.confirm_timeout
    state = PowerState.UNKNOWN
    while True:
        state, more = await _with_retries(
            executor, driver, driver.get_power, "read power", policy, errors
        )
        attempts += more
        if state is expected or time.monotonic() >= deadline:
            break
        await asyncio.sleep(policy.confirm_interval)
    if state is not expected:
        raise BmcError(
            f"BMC {driver.target.endpoint} accepted 'power {action.value}' but the machine "
            f"is still {state.value} after {policy.confirm_timeout:g}s",
            hint="the BMC may ignore chassis commands (check its power restore policy and "
            "event log), or the power supply failed",
            code="power_not_confirmed",
        )
    return PowerResult(state, True, attempts, time.monotonic() - started, errors)
