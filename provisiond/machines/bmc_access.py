"""From a BMC row to a driver target: the one place stored BMC passwords are decrypted."""

from __future__ import annotations

from sqlmodel import Session

from provisiond.drivers.power.base import BmcTarget
from provisiond.errors import Conflict
from provisiond.models import Bmc, CredentialSet
from provisiond.secrets import SecretBox


class BmcNotConfigured(Conflict):
    """The machine has no usable BMC address or password (its record, not the BMC)."""

    code = "bmc_not_configured"


def bmc_target(session: Session, bmc: Bmc, box: SecretBox, machine_name: str) -> BmcTarget:
    """The address, port and clear credentials for ``bmc`` (its own, or its credential set's)."""
    username, secret = bmc.username, bmc.secret_encrypted
    source = f"machine {machine_name}'s BMC settings"
    if not secret and bmc.credential_set_id is not None:
        cred = session.get(CredentialSet, bmc.credential_set_id)
        if cred is not None:
            username = bmc.username or cred.username
            secret = cred.secret_encrypted
            source = f"credential set '{cred.name}'"
    if bmc.driver != "manual" and (not bmc.address or not secret):
        raise BmcNotConfigured(
            f"machine {machine_name} has no usable BMC address or password",
            hint="set bmc.address and bmc.password (or a credential set) on the machine",
        )
    options = {"tls_verify": bmc.tls_verify}
    if bmc.cert_fingerprint:
        options["cert_fingerprint"] = bmc.cert_fingerprint
    return BmcTarget(
        address=bmc.address,
        port=bmc.port,
        username=username,
        password=box.decrypt(secret) if secret else "",
        options=options,
        credential_source=source,
    )
