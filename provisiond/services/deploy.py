"""Deploy, inspect and release: the daemon side of "instance ready".

Callers (the allocation service, the machines API/CLI) only *start* work, inside
their own transaction, and then wake the deploy engine after commit:

    with services.db.transaction() as s:
        machine = ...  # already ALLOCATED (by lifecycle.claim/advance)
        deploy.start_deploy(s, machine, allocation=alloc, image_id=alloc.image_id,
                            ssh_keys=alloc.ssh_keys, user_data=alloc.user_data,
                            actor="token:ci-1", settings=services.settings,
                            secrets=services.secrets)
    services.wake_deployer()

``start_deploy`` moves the machine ``allocated -> deploying`` and writes a
:class:`~provisiond.models.Deployment` row (per-deploy SSH key pair, phases). The
engine (:mod:`provisiond.services.deploy_engine`, a scheduler loop) then does the
blocking work from the DB state alone, so a restarted daemon resumes: power-cycle
into PXE, wait for the OS callback, SSH agent install, wait for the heartbeat.

``start_release`` moves ``active | deploy_failed | allocated | release_failed ->
releasing``; the engine wipes the disks over SSH (when an OS with our key is up),
powers off, and makes the machine ``available``.

``abort_deploy`` fails a running deploy (``deploying | installing_agent ->
deploy_failed``) with a reason, e.g. when its allocation's lease ends.
"""

from __future__ import annotations

import base64
import hashlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sqlmodel import Session

    from provisiond.config import Settings
    from provisiond.models import Allocation, Deployment, Machine
    from provisiond.secrets import SecretBox


def start_deploy(
    session: Session,
    machine: Machine,
    *,
    allocation: Allocation | None,
    image_id: int | None,
    ssh_keys: list[str],
    user_data: str,
    actor: str,
    settings: Settings,
    secrets: SecretBox,
) -> Deployment:
    raise NotImplementedError


def start_release(
    session: Session, machine: Machine, *, actor: str, reason: str, settings: Settings
) -> None:
    raise NotImplementedError


def abort_deploy(
    session: Session, machine: Machine, *, actor: str, reason: str, settings: Settings
) -> None:
    raise NotImplementedError


def host_key_fingerprint(host_key: str) -> str:
    """``ssh-ed25519 AAAA...`` -> ``SHA256:...`` (as ``ssh-keygen -lf`` prints it)."""
    parts = host_key.split()
    if len(parts) < 2:
        return ""
    try:
        blob = base64.b64decode(parts[1], validate=True)
    except ValueError:
        return ""
    digest = base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")
    return f"SHA256:{digest}"
