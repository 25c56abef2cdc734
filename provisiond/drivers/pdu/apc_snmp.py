"""APC switched rack PDUs (AP79xx, AP86xx) over SNMP, with the PowerNet-MIB objects.

Which objects, and what their values mean:

- ``rPDUOutletControlOutletCommand`` (1.3.6.1.4.1.318.1.1.12.3.3.1.1.4.<n>): written
  1 immediateOn, 2 immediateOff, 3 immediateReboot; read back 1 when the outlet is
  on, 2 when off (other values are pending states: ``unknown``). The read-back is
  what confirms a switch (:meth:`PduDriver.set_outlet`).
- ``rPDUIdentDevicePowerWatts`` (1.3.6.1.4.1.318.1.1.12.1.16.0): the whole PDU's
  load, in watts.
- ``rPDU2OutletMeteredStatusPower`` (1.3.6.1.4.1.318.1.1.26.9.4.3.1.7.<i>): one
  outlet's load in watts (not tenths: the tenths are the current, column 6), only
  on metered-by-outlet models. Its index ``i`` is a table row; on a single-unit PDU
  row ``i`` is outlet ``i``, which is what this driver assumes. A model without the
  table answers noSuchObject and per-outlet watts are simply left out.

A cycle is off, confirmed, a pause, on, confirmed; not immediateReboot, whose
off time is the PDU's own setting and whose end cannot be told from "on" by a read.
"""

from __future__ import annotations

from typing import ClassVar

from provisiond.drivers.pdu.base import (
    OutletState,
    PduDriver,
    PduReading,
    PduTarget,
    PduUnsupported,
)
from provisiond.drivers.pdu.snmp import SnmpClient

OUTLET_COMMAND = "1.3.6.1.4.1.318.1.1.12.3.3.1.1.4"
DEVICE_WATTS = "1.3.6.1.4.1.318.1.1.12.1.16.0"
OUTLET_WATTS = "1.3.6.1.4.1.318.1.1.26.9.4.3.1.7"
IMMEDIATE_ON, IMMEDIATE_OFF, IMMEDIATE_REBOOT = 1, 2, 3
_STATES = {IMMEDIATE_ON: OutletState.ON, IMMEDIATE_OFF: OutletState.OFF}


class ApcSnmpPdu(PduDriver):
    name: ClassVar[str] = "apc_snmp"

    def __init__(self, target: PduTarget, client: SnmpClient) -> None:
        super().__init__(target)
        self.client = client

    async def outlet_state(self, outlet: int) -> OutletState:
        (value,) = await self.client.get(self.target, f"{OUTLET_COMMAND}.{outlet}")
        if value is None:
            raise PduUnsupported(
                f"PDU {self.target.name} ({self.target.endpoint}) has no outlet {outlet}",
                hint="check the outlet number against the PDU's outlet count",
            )
        return _STATES.get(value, OutletState.UNKNOWN)

    async def request_outlet(self, outlet: int, on: bool) -> None:
        command = IMMEDIATE_ON if on else IMMEDIATE_OFF
        await self.client.set(self.target, f"{OUTLET_COMMAND}.{outlet}", command)

    async def read_power(self, outlets: list[int]) -> PduReading:
        # All objects in one call: the client packs them into as few requests as fit.
        oids = [DEVICE_WATTS]
        for n in outlets:
            oids += [f"{OUTLET_COMMAND}.{n}", f"{OUTLET_WATTS}.{n}"]
        values = await self.client.get(self.target, *oids)
        reading = PduReading(total_watts=values[0])
        for i, n in enumerate(outlets):
            state, watts = values[1 + 2 * i], values[2 + 2 * i]
            reading.outlet_states[n] = (
                _STATES.get(state, OutletState.UNKNOWN)
                if state is not None
                else OutletState.UNKNOWN
            )
            if watts is not None and watts >= 0:
                reading.outlet_watts[n] = watts
        return reading
