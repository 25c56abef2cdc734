"""The daemon's end of the lease hook: a unix socket that writes dnsmasq's leases.

:mod:`.lease_hook` sends each ``add``/``old``/``del`` as one JSON line; the sink
writes it to ``dhcplease`` (fenced by the holder's role, as the hook's own fallback
does) and answers ``ok``. It serves from threads of its own, never the event loop:
a daemon whose loop hangs keeps recording leases for as long as its dnsmasq runs.
The socket is in the network's state folder, mode 0600 (dnsmasq runs the script as
root, or as the daemon's user). dnsmasq runs one script at a time, so one
connection at a time is the normal load; each is bounded by a timeout.
"""

from __future__ import annotations

import contextlib
import json
import os
import socketserver
import threading
from pathlib import Path
from typing import Any

from provisiond.db import Database
from provisiond.logging import get_logger
from provisiond.netboot import lease_hook

log = get_logger(__name__)

READ_TIMEOUT_S = 5.0
MAX_LINE = 4096
_FIELDS = ("action", "mac", "ip", "hostname", "client_id", "expires")


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    sink: LeaseSink


class _Handler(socketserver.StreamRequestHandler):
    timeout = READ_TIMEOUT_S
    server: _Server

    def handle(self) -> None:
        try:
            line = self.rfile.readline(MAX_LINE)
            event = json.loads(line)
            answer = self.server.sink.answer(event)
        except Exception as exc:  # the hook falls back to the database itself
            log.warning("dhcp_lease_write_failed", error=f"{type(exc).__name__}: {exc}"[:300])
            with contextlib.suppress(OSError):
                self.wfile.write(b"error\n")
            return
        with contextlib.suppress(OSError):
            self.wfile.write(b"ok\n" + answer.encode())


class LeaseSink:
    def __init__(self, db: Database, path: Path, *, network: str, role: str, holder: str):
        self.db = db
        self.path = path
        self.params = {"network": network, "role": role, "holder": holder}
        self.written = 0
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self.path.unlink(missing_ok=True)
        # No umask change (it is process-wide): under the usual umask a fresh socket is
        # not writable, so not connectable, by others; 0600 right after the bind.
        server = _Server(str(self.path), _Handler)
        os.chmod(self.path, 0o600)
        server.sink = self
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.5}, daemon=True,
            name=f"lease-sink-{self.params['network']}",
        )  # fmt: skip
        self._thread.start()

    def close(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if self._thread is not None:
            self._thread.join(READ_TIMEOUT_S + 1)
        self.path.unlink(missing_ok=True)

    def answer(self, event: dict[str, Any]) -> str:
        """``init``: the network's leases in lease-file format; else the write ("")."""
        if event.get("action") == "init":
            with self.db.engine.connect() as conn:
                rows = conn.exec_driver_sql(lease_hook.INIT_SQL, self.params).fetchall()
            return lease_hook.init_text(rows)
        self.write(event)
        return ""

    def write(self, event: dict[str, Any]) -> None:
        params = {k: event[k] for k in _FIELDS}
        params["expires"] = int(params["expires"])
        params.update(self.params)
        with self.db.engine.begin() as conn:
            lease_hook.write(conn.exec_driver_sql, params)
        self.written += 1
