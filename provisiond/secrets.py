"""Secrets at rest: BMC and credential-set passwords are Fernet tokens in the DB.

The key lives in ``<data_dir>/secret.key``, created 0600 on first start. A clear
password exists only in memory, on its way to a BMC; it is never returned by the
API and never logged (see provisiond.logging's redaction).
"""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken

from provisiond.errors import ConfigError, ProvisiondError


class SecretBox:
    def __init__(self, key: bytes) -> None:
        self._fernet = Fernet(key)
        #: A key for HMACs (callback tokens), derived so it never equals the Fernet key.
        self.mac_key = hashlib.sha256(b"provisiond-mac:" + key).digest()

    @classmethod
    def from_key_file(cls, path: Path, *, create: bool = True) -> SecretBox:
        if not path.exists():
            if not create:
                raise ConfigError(
                    f"secret key file {path} does not exist",
                    hint="start 'provisiond serve' once to create it, or restore it from backup",
                )
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:
                pass  # another process created it first; read theirs
            else:
                with os.fdopen(fd, "wb") as fh:
                    fh.write(Fernet.generate_key())
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            raise ConfigError(
                f"secret key file {path} is readable by others (mode {mode:o})",
                hint=f"run: chmod 600 {path}",
            )
        try:
            return cls(path.read_bytes().strip())
        except ValueError:
            raise ConfigError(
                f"secret key file {path} does not hold a valid key",
                hint="restore the original key file; without it stored BMC passwords are lost",
            ) from None

    def encrypt(self, clear: str) -> str:
        return self._fernet.encrypt(clear.encode()).decode()

    def decrypt(self, token: str) -> str:
        try:
            return self._fernet.decrypt(token.encode()).decode()
        except InvalidToken:
            raise ProvisiondError(
                "a stored secret cannot be decrypted with the current key file",
                hint="the key file was replaced; restore it or set the BMC password again",
                code="secret_undecryptable",
            ) from None
