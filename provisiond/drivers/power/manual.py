"""The ``manual`` driver: machines without a BMC. A person powers them."""

from __future__ import annotations

from typing import ClassVar

from provisiond.drivers.power.base import (
    BmcManualAction,
    BootDevice,
    PowerAction,
    PowerDriver,
    PowerState,
    Setting,
)


class ManualPower(PowerDriver):
    name = "manual"
    settings: ClassVar[tuple[Setting, ...]] = ()

    def get_power(self) -> PowerState:
        return PowerState.UNKNOWN

    def set_power(self, action: PowerAction) -> None:
        raise BmcManualAction(
            f"power {action.value} must be done by hand: this machine has no BMC",
            hint="do it at the machine, then carry on; or give it an ipmi or redfish BMC",
        )

    def set_boot_device(
        self, device: BootDevice, *, persistent: bool = False, uefi: bool = False
    ) -> None:
        raise BmcManualAction(
            f"set the boot device to {device.value} by hand (firmware setup or boot menu)",
            hint="this machine has no BMC",
        )
