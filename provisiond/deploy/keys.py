"""Per-deploy credentials: the SSH key pair, the phone-home token, host-key fingerprints.

The key pair of a claimed machine's deploy is made by the engine's first step
(:func:`ensure_keys`), not in the allocation request's write transaction: Ed25519
generation and Fernet encryption are the slowest part of a request otherwise.
"""

from __future__ import annotations

import base64
import hashlib
import hmac

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlmodel import Session

from provisiond.models import Deployment
from provisiond.secrets import SecretBox


def new_ssh_keypair(comment: str) -> tuple[str, str]:
    """A fresh Ed25519 key pair: (OpenSSH private key PEM, ``ssh-ed25519 AAAA... comment``)."""
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    ).decode()
    public = (
        key.public_key()
        .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        .decode()
    )
    return private, f"{public} {comment}"


def key_pair(record: Deployment, secrets: SecretBox) -> None:
    private, public = new_ssh_keypair(f"provisiond-{record.kind}-{record.uuid[:8]}")
    record.ssh_public_key = public
    record.ssh_private_key_encrypted = secrets.encrypt(private)


def ensure_keys(session: Session, record: Deployment, secrets: SecretBox) -> bool:
    """Give ``record`` its per-deploy key pair if the claim left it without; True if made.

    The engine calls this before it powers the machine on, so the seed the booted OS
    reads always carries the public half.
    """
    if record.ssh_public_key:
        return False
    key_pair(record, secrets)
    session.add(record)
    return True


def callback_token(secrets: SecretBox, deployment_uuid: str) -> str:
    """The token a booted OS presents in its phone-home call (served only in its seed)."""
    return hmac.new(secrets.mac_key, f"callback:{deployment_uuid}".encode(), "sha256").hexdigest()


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
