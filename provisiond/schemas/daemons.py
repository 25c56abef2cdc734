"""What ``GET /api/v1/daemons`` answers: the daemons on this database and their work."""

from __future__ import annotations

from datetime import datetime

from provisiond.schemas.base import Out


class DaemonOut(Out):
    id: str
    host: str
    pid: int
    version: str
    schema_revision: str
    #: live, draining, stopped or dead
    state: str
    epoch: int
    started_at: datetime
    heartbeat_at: datetime
    #: Seconds since its last heartbeat, by the database's clock.
    heartbeat_age_s: float
    api_url: str
    boot_urls: dict[str, str]
    networks: dict[str, str]
    #: Roles it holds now: reaper, allocation_queue, dhcp:<network>.
    roles: list[str]
    #: Machines whose lock it holds (a step running there now).
    machines: list[str]
    reason: str
