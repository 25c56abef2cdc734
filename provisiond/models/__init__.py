"""Table models. Importing this package registers every table on SQLModel.metadata."""

from provisiond.models.allocation import Allocation
from provisiond.models.base import utcnow
from provisiond.models.cluster import Daemon, DhcpLease, Leadership
from provisiond.models.console import ConsoleSession
from provisiond.models.deployment import Deployment
from provisiond.models.event import Event
from provisiond.models.image import Image
from provisiond.models.inventory import Outlet, Pdu, Rack, Switch, SwitchPort
from provisiond.models.machine import Bmc, CredentialSet, Machine, Nic
from provisiond.models.token import ApiToken

__all__ = [
    "Allocation",
    "ApiToken",
    "Bmc",
    "ConsoleSession",
    "CredentialSet",
    "Daemon",
    "Deployment",
    "DhcpLease",
    "Event",
    "Image",
    "Leadership",
    "Machine",
    "Nic",
    "Outlet",
    "Pdu",
    "Rack",
    "Switch",
    "SwitchPort",
    "utcnow",
]
