"""Why a machine's deadline passed: the state's wait and the last boot phase reached."""

from __future__ import annotations

from typing import Any

from sqlmodel import Session, col, select

from provisiond.lifecycle import State
from provisiond.models import Deployment, Machine

#: What a machine waits for in each transitional state, for deadline reasons.
WAITING_FOR = {
    State.DEPLOYING: "no OS callback",
    State.INSPECTING: "no inspection report",
    State.INSTALLING_AGENT: "no agent heartbeat",
    State.RELEASING: "release not finished",
    State.ALLOCATED: "deploy not started",
}


#: What a disk-image deploy was doing after a phase, for deadline reasons
#: (:mod:`provisiond.deploy.disk_deploy`).
AFTER_PHASE = {
    "ramdisk_callback": "writing the image",
    "disk_selected": "writing the image",
    "image_download": "writing the image",
    "image_written": "configuring the disk",
    "disk_configured": "booting from disk",
    "disk_boot": "booting from disk",
    "os_seed": "booting from disk",
}


def deadline_reason(
    session: Session, machine: Machine, limit_s: float
) -> tuple[str, dict[str, Any]]:
    """Why a machine's deadline passed, naming the last boot phase it reached."""
    waiting = WAITING_FOR.get(State(machine.state), f"still {machine.state}")
    record = session.exec(
        select(Deployment)
        .where(Deployment.machine_id == machine.id, Deployment.outcome == "")
        .order_by(col(Deployment.id).desc())
    ).first()
    details: dict[str, Any] = {}
    last = ""
    if record is not None:
        reached = sorted(
            (v, k) for k, v in record.phases.items() if isinstance(v, str) and "T" in v
        )
        last = reached[-1][1] if reached else ""
        details = {"deployment": record.uuid, "last_phase": last}
    doing = f", {AFTER_PHASE[last]}" if last in AFTER_PHASE else ""
    reason = f"{machine.state}: {waiting} within {limit_s:.0f}s" + (
        f" (last phase: {last}{doing})" if last else ""
    )
    return reason, details
