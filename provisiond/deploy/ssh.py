"""SSH to a freshly booted machine: the host key pinned, never learnt, and bounded.

The booted OS reports its host key in its callback; that key is the only one
accepted (paramiko's ``RejectPolicy`` plus the key added up front), so a machine
that answers with another key fails with :class:`HostKeyMismatch` instead of being
trusted on first use. Every connect, command and upload has a timeout. These are
blocking calls: run them in the executor.

    with Remote.connect("10.213.0.11", host_key, private_key_pem) as remote:
        remote.put(b"...", "/opt/provisiond-agent/agent.py", mode=0o755)
        out = remote.run("uname -r", timeout=30)
"""

from __future__ import annotations

import base64
import io
import random
import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING

# Re-exported: the SSH errors live in the one tree (provisiond.errors).
from provisiond.errors import CommandFailed as CommandFailed
from provisiond.errors import HostKeyMismatch as HostKeyMismatch
from provisiond.errors import SshError as SshError
from provisiond.netboot.netns_socket import connect_in_netns

if TYPE_CHECKING:  # paramiko (8.6 MB) is imported by the first SSH call, not at start-up
    import paramiko


@dataclass(frozen=True)
class Result:
    status: int
    stdout: str
    stderr: str


def parse_host_key(line: str) -> paramiko.PKey:
    import paramiko

    parts = line.split()
    if len(parts) < 2:
        raise SshError(f"not an SSH public key: {line[:40]!r}", hint="expected 'TYPE BASE64'")
    try:
        return paramiko.PKey.from_type_string(parts[0], base64.b64decode(parts[1]))
    except (ValueError, paramiko.SSHException) as exc:
        raise SshError(
            f"cannot read the host key ({parts[0]}): {exc}", hint="ed25519, ecdsa or rsa"
        ) from None


class Remote:
    def __init__(self, client: paramiko.SSHClient, address: str) -> None:
        self._client = client
        self.address = address

    @classmethod
    def connect(
        cls,
        address: str,
        host_key: str,
        private_key_pem: str,
        *,
        user: str = "root",
        port: int = 22,
        attempts: int = 10,
        timeout: float = 10.0,
        deadline_s: float = 120.0,
        sleep: Callable[[float], None] = time.sleep,
        netns: str | None = None,
    ) -> Remote:
        """Connect with retries (jittered backoff) until ``attempts`` or ``deadline_s``.

        ``netns``: the provisioning network's namespace the address lives in.
        """
        import paramiko

        pinned = parse_host_key(host_key)
        pkey = paramiko.Ed25519Key.from_private_key(io.StringIO(private_key_pem))
        started = time.monotonic()
        last = ""
        for attempt in range(1, attempts + 1):
            client = paramiko.SSHClient()
            client.set_missing_host_key_policy(paramiko.RejectPolicy())
            name = address if port == 22 else f"[{address}]:{port}"
            client.get_host_keys().add(name, pinned.get_name(), pinned)
            try:
                sock = connect_in_netns(netns, (address, port), timeout)
                client.connect(
                    address,
                    sock=sock,
                    port=port,
                    username=user,
                    pkey=pkey,
                    timeout=timeout,
                    banner_timeout=timeout,
                    auth_timeout=timeout,
                    allow_agent=False,
                    look_for_keys=False,
                )
                return cls(client, address)
            except paramiko.BadHostKeyException as exc:
                client.close()
                raise HostKeyMismatch(
                    f"SSH host key mismatch at {address}: it offered "
                    f"{exc.key.get_name()} {exc.key.get_base64()[:16]}..., the booted OS "
                    f"reported {pinned.get_name()} {pinned.get_base64()[:16]}...",
                    hint="another machine answers on that address, or the host was "
                    "tampered with; the deploy is not trusted",
                ) from None
            except paramiko.AuthenticationException as exc:
                client.close()
                last = f"authentication failed: {exc}"
            except (OSError, paramiko.SSHException, EOFError) as exc:
                client.close()
                last = f"{type(exc).__name__}: {exc}"
            if attempt == attempts or time.monotonic() - started > deadline_s:
                break
            sleep(min(8.0, 0.5 * 2 ** (attempt - 1)) * random.uniform(0.5, 1.5))  # noqa: S311
        raise SshError(
            f"cannot SSH to root@{address}:{port} after {attempt} attempt(s): {last}",
            hint="the OS may not run sshd, or does not accept the per-deploy key",
        )

    def run(
        self,
        command: str,
        *,
        timeout: float = 60.0,
        stdin: bytes = b"",
        on_line: Callable[[str], None] | None = None,
    ) -> Result:
        """Run ``command``; ``on_line`` sees each complete stdout line as it arrives."""
        chan = self._client.get_transport()
        if chan is None or not chan.is_active():
            raise SshError(f"SSH session to {self.address} is closed", hint="reconnect")
        session = chan.open_session(timeout=timeout)
        session.settimeout(timeout)
        try:
            session.exec_command(command)
            if stdin:
                session.sendall(stdin)
            session.shutdown_write()
            out, err = bytearray(), bytearray()
            end = time.monotonic() + timeout
            while not session.exit_status_ready() or session.recv_ready():
                if time.monotonic() > end:
                    raise SshError(
                        f"{command.split()[0]!r} on {self.address} did not finish in {timeout:g}s",
                        hint="the machine is slow or stuck",
                    )
                if not chan.is_active():
                    raise SshError(
                        f"SSH connection to {self.address} was lost during {command.split()[0]!r}",
                        hint="the machine rebooted or powered off",
                    )
                if session.recv_ready():
                    chunk = session.recv(65536)
                    if on_line is not None:
                        start = out.rfind(b"\n") + 1
                        out += chunk
                        for line in out[start:].split(b"\n")[:-1]:
                            on_line(line.decode(errors="replace"))
                    else:
                        out += chunk
                elif session.recv_stderr_ready():
                    err += session.recv_stderr(65536)
                else:
                    time.sleep(0.02)
            while session.recv_stderr_ready():
                err += session.recv_stderr(65536)
            status = session.recv_exit_status()
        except TimeoutError:
            raise SshError(
                f"SSH command on {self.address} timed out after {timeout:g}s", hint="retry"
            ) from None
        finally:
            session.close()
        return Result(status, out.decode(errors="replace"), err.decode(errors="replace"))

    def check(self, command: str, *, timeout: float = 60.0, stdin: bytes = b"") -> str:
        result = self.run(command, timeout=timeout, stdin=stdin)
        if result.status != 0:
            raise CommandFailed(
                f"{command.split()[0]!r} on {self.address} exited {result.status}: "
                f"{(result.stderr or result.stdout).strip()[:300]}",
                hint="see the machine's console log",
            )
        return result.stdout

    def put(self, data: bytes, path: str, *, mode: int = 0o644, timeout: float = 60.0) -> None:
        """Write ``data`` to ``path`` atomically (no SFTP needed: dropbear has none)."""
        quoted = shlex.quote(path)
        tmp = shlex.quote(path + ".tmp")
        self.check(
            f"mkdir -p $(dirname {quoted}) && cat > {tmp} && chmod {mode:o} {tmp} "
            f"&& mv -f {tmp} {quoted}",
            timeout=timeout,
            stdin=data,
        )

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> Remote:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
