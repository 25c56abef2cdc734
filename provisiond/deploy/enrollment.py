"""Who may enroll by PXE: limits on unknown-MAC enrollment, per provisioning network.

``GET /boot/{mac}.ipxe`` needs no token, and an unknown MAC used to become a machine
on every request: a script, or a switch flooding frames with made-up MACs, could
fill the database. An unknown MAC is now enrolled only when, on the network the
request came from (:func:`network_for`),

- ``auto_enroll`` is on (off: nothing is enrolled, the machine gets ``exit``);
- fewer than ``enroll_max_per_minute`` machines were enrolled via PXE in the last
  60 s (their ``enroll`` transition events, which carry the network);
- fewer than ``enroll_max_pending`` machines enrolled via PXE have not been through
  an inspection yet (``enrolled``, ``inspecting`` or ``inspect_failed``): a flood
  stops there until an operator inspects or deletes them.

Past a limit the machine gets the ``retry`` script, which says why, waits
:data:`RETRY_S` and asks again; ``provisiond_enroll_refused_total{network,reason}``
counts every refused request, and one ``enroll_refused`` event per network and
minute says so (one: the event log must not fill instead).

The counts are read from the database, so every daemon on it sees the same ones. A
limit is checked in a read session first, so a refused flood never queues for
SQLite's write slot, and again in the enrolling transaction. On SQLite that
transaction holds the write slot, so a limit is exact; on PostgreSQL requests
enrolling at the same instant may each pass, overshooting by at most their number.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import cast

from sqlalchemy import ColumnElement
from sqlmodel import Session, col, func, select

from provisiond import events
from provisiond.config import Settings
from provisiond.deploy.image_fetch import canonical_address
from provisiond.events import EventKind
from provisiond.lifecycle import Ev, State
from provisiond.models import Event, Machine
from provisiond.models.base import utcnow
from provisiond.networks import ProvisioningNetwork

#: The actor of everything the boot routes do on a machine's behalf.
ACTOR = "boot:pxe"
#: The network of a boot request that no configured network claims.
UNMATCHED = "-"
WINDOW = timedelta(seconds=60)
#: Seconds a refused machine waits before it asks again.
RETRY_S = 60
#: PXE-enrolled machines in these states have not been through an inspection yet.
PENDING = (State.ENROLLED, State.INSPECTING, State.INSPECT_FAILED)


@dataclass(frozen=True)
class Limits:
    auto_enroll: bool = True
    max_per_minute: int = 30
    max_pending: int = 200


def limits(settings: Settings) -> Limits:
    """The enrollment limits the settings give (the same for every network)."""
    return Limits(settings.auto_enroll, settings.enroll_max_per_minute, settings.enroll_max_pending)


@dataclass(frozen=True)
class Refusal:
    """Why an unknown MAC is not enrolled now."""

    reason: str  # auto_enroll | rate | pending
    limit: int
    message: str

    @property
    def retry(self) -> bool:
        """Whether asking again later can help (a limit, not enrollment turned off)."""
        return self.reason != "auto_enroll" and self.limit > 0


def network_for(
    networks: Sequence[ProvisioningNetwork], listener: tuple[str, int] | None, client: str
) -> str:
    """The network a boot request came from: the one whose boot listener took it, else
    the one whose subnet holds the client; :data:`UNMATCHED` when neither says."""
    if listener is not None:
        for net in networks:
            if (str(net.boot_address), net.http_port) == (listener[0], listener[1]):
                return net.name
    try:
        ip = ipaddress.ip_address(canonical_address(client))
    except ValueError:
        return UNMATCHED
    for net in networks:
        if ip in net.subnet:
            return net.name
    return UNMATCHED


def _on(network: str) -> ColumnElement[bool]:
    """The event is about ``network`` (a JSON field: SQLite and PostgreSQL alike)."""
    field = cast("ColumnElement[str]", col(Event.details)["network"].as_string())
    return field == network


def _place(network: str) -> str:
    return f"network {network}" if network != UNMATCHED else "requests of no configured network"


def refusal(session: Session, network: str, limits: Limits) -> Refusal | None:
    """Why an unknown MAC on ``network`` may not be enrolled now, or None when it may."""
    if not limits.auto_enroll:
        return Refusal(
            "auto_enroll",
            0,
            "auto_enroll is off: unknown machines are not enrolled; "
            "add this MAC to the inventory to manage the machine",
        )
    recent = session.exec(
        select(func.count())
        .select_from(Event)
        .where(
            col(Event.at) >= utcnow() - WINDOW,
            Event.kind == "transition",
            Event.event == Ev.ENROLL.value,
            Event.actor == ACTOR,
            _on(network),
        )
    ).one()
    if recent >= limits.max_per_minute:
        return Refusal(
            "rate",
            limits.max_per_minute,
            f"enrollment paused on {_place(network)}: {recent} machines enrolled via PXE "
            f"in the last minute (enroll_max_per_minute = {limits.max_per_minute})",
        )
    pending = session.exec(
        select(func.count(col(Machine.id).distinct()))
        .select_from(Machine)
        .join(Event, col(Event.machine_id) == col(Machine.id))
        .where(
            col(Machine.state).in_([s.value for s in PENDING]),
            Event.kind == "transition",
            Event.event == Ev.ENROLL.value,
            Event.actor == ACTOR,
            _on(network),
        )
    ).one()
    if pending >= limits.max_pending:
        return Refusal(
            "pending",
            limits.max_pending,
            f"enrollment paused on {_place(network)}: {pending} machines enrolled via PXE "
            f"are not inspected yet (enroll_max_pending = {limits.max_pending}); "
            "inspect or delete them",
        )
    return None


def event_due(session: Session, network: str) -> bool:
    """Whether no ``enroll_refused`` event was written for ``network`` this minute."""
    last = session.exec(
        select(Event.id)
        .where(
            col(Event.at) >= utcnow() - WINDOW,
            Event.kind == "boot",
            Event.event == "enroll_refused",
            _on(network),
        )
        .limit(1)
    ).first()
    return last is None


def record(session: Session, refused: Refusal, network: str, mac: str) -> None:
    """The ``enroll_refused`` event: at most one per network and minute (see event_due)."""
    events.record(
        session,
        EventKind.BOOT,
        "enroll_refused",
        actor=ACTOR,
        message=refused.message,
        details={"network": network, "reason": refused.reason, "mac": mac, "limit": refused.limit},
    )
