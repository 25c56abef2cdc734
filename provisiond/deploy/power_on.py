"""The deploy engine's power step, on the BMC: a one-time PXE boot, then power on or cycle.

Only powering a machine on from off (or from a state the BMC cannot tell) draws more
from its rack, so only that move goes through the rack's budget
(:func:`provisiond.machines.power.admit_power_on`, with the state just read, not the
one last recorded); a cycle of a machine that is on never waits for it. A failure is
worded by what failed: the budget ("power-on refused: rack ... would draw ...") or
the BMC ("BMC power-cycle failed: ...").
"""

from __future__ import annotations

from provisiond.container import Services
from provisiond.drivers.power.base import BmcError, BootDevice, PowerAction, PowerDriver
from provisiond.drivers.power.base import PowerState as PS
from provisiond.errors import ProvisiondError
from provisiond.machines import power as machine_power
from provisiond.machines import power_calls as power
from provisiond.machines.power_calls import PowerPolicy
from provisiond.power_budget import OverBudget


async def network_boot(
    services: Services, name: str, driver: PowerDriver, policy: PowerPolicy, *, actor: str
) -> PowerAction:
    """PXE once, then power ``name`` on (admitted by its rack's budget) or cycle it."""
    executor = services.executor
    await power.set_boot_device(executor, driver, BootDevice.PXE, persistent=False, policy=policy)
    state = await power.get_power(executor, driver, policy)
    action = PowerAction.CYCLE if state is PS.ON else PowerAction.ON
    if action is PowerAction.ON:
        await machine_power.admit_power_on(services, name, action, actor=actor, state=state)
    await power.power(executor, driver, action, policy)
    return action


def failure(exc: ProvisiondError) -> str:
    """The deploy's failure reason for ``exc`` raised by :func:`network_boot`."""
    hint = f" ({exc.hint})" if exc.hint else ""
    if isinstance(exc, OverBudget):
        return f"{exc.message}{hint}"
    if isinstance(exc, BmcError):
        return f"BMC power-cycle failed: {exc.message}{hint}"
    return f"power step failed: {exc.message}{hint}"
