"""Run the real ``provisiond`` command in a subprocess: a daemon on a free loopback port.

Everything started here is stopped by its PID, even when the test fails.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from provisiond.rack.scenario import free_port
from tests.support import procs

PROVISIOND = [sys.executable, "-m", "provisiond"]
#: Log events that mean a background job or a request failed under the flood.
FAILURE_EVENTS = (
    "reaper_failed",
    "allocation_queue_failed",
    "deploy_engine_pass_failed",
    "power_sync_failed",
    "token_use_flush_failed",
    "database_pool_exhausted",
    "database_error",
    "unhandled_error",
    "Exception in ASGI application\n",
    "event_loop_stalled",
)


def cli(
    *args: str, env: dict[str, str], timeout: float = 60, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*PROVISIOND, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        input=stdin,
        check=False,
    )


@dataclass
class Daemon:
    """A provisiond data dir; ``start()`` runs ``provisiond serve`` on it."""

    data_dir: Path
    port: int = field(default_factory=free_port)
    extra_env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[str] | None = None
    admin_token: str = ""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PROVISIOND_")}
        env.update(
            PROVISIOND_DATA_DIR=str(self.data_dir),
            PROVISIOND_LISTEN_PORT=str(self.port),
            PROVISIOND_URL=self.url,
            PROVISIOND_TOKEN=self.admin_token,
            **self.extra_env,
        )
        return env

    def prepare(self) -> None:
        """Migrate the DB and create an admin token, through the CLI as a user would."""
        for args in (["db", "upgrade"], ["token", "create", "--name", "admin", "--role", "admin"]):
            result = cli(*args, env=self.env)
            assert result.returncode == 0, result.stderr
        self.admin_token = result.stdout.strip().splitlines()[-1]

    def start(self, timeout: float = 20) -> None:
        log = (self.data_dir / "serve.log").open("a")
        self.proc = subprocess.Popen(
            [*PROVISIOND, "serve"], env=self.env, stdout=log, stderr=log, text=True
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"provisiond serve exited: {self.log_text()}")
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"provisiond serve not healthy in {timeout}s: {self.log_text()}")

    def log_text(self) -> str:
        path = self.data_dir / "serve.log"
        return path.read_text() if path.exists() else ""

    def log_events(self) -> list[str]:
        """The ``event`` of each JSON log line (a non-JSON line as it stands)."""
        events = []
        for line in self.log_text().splitlines():
            try:
                events.append(str(json.loads(line).get("event", "")))
            except ValueError:
                events.append(line)
        return events

    def failures(self) -> list[str]:
        """The daemon's log events that mean a job or a request failed or stalled."""
        return [e for e in self.log_events() if e in FAILURE_EVENTS]

    def time_to_recover(self, cap_s: float) -> float:
        """Seconds until ``/healthz`` and a normal ``GET /api/v1/machines`` both answer
        200; ``inf`` when they do not within ``cap_s``."""
        t0 = time.monotonic()
        headers = {"Authorization": f"Bearer {self.admin_token}"}
        while time.monotonic() - t0 < cap_s:
            try:
                health = httpx.get(self.url + "/healthz", timeout=min(cap_s, 5))
                machines = httpx.get(
                    self.url + "/api/v1/machines", headers=headers, timeout=min(cap_s, 5)
                )
                if health.status_code == 200 and machines.status_code == 200:
                    return time.monotonic() - t0
            except httpx.HTTPError:
                pass
            time.sleep(0.02)
        return float("inf")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15) -> int:
        code = procs.stop(self.proc, sig, timeout)
        self.proc = None
        return code
