"""The composition root: builds every part from the settings and passes it down."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
from typing import Any

import uvicorn

from provisiond.api import create_app
from provisiond.config import Settings
from provisiond.db import Database
from provisiond.errors import ConfigError
from provisiond.executor import BlockingExecutor
from provisiond.logging import get_logger
from provisiond.scheduler import build_scheduler
from provisiond.secrets import SecretBox
from provisiond.services.container import Services

log = get_logger(__name__)


def build_services(settings: Settings, *, check_schema: bool = True) -> Services:
    db = Database(settings.db_url, busy_timeout_s=settings.sqlite_busy_timeout_s)
    if check_schema:
        db.check_schema()
    return Services(
        settings=settings,
        db=db,
        secrets=SecretBox.from_key_file(settings.key_file),
        instance=f"{socket.gethostname()}:{os.getpid()}",
        executor=BlockingExecutor(settings.executor_workers),
    )


def bind(host: str, port: int, *, backlog: int = 2048) -> socket.socket:
    """Bind the listening socket ourselves: a clear error, and a backlog for PXE storms."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigError(
            f"cannot listen on {host}:{port}: {exc.strerror}",
            hint="another process holds the port; stop it or set listen_port "
            "(PROVISIOND_LISTEN_PORT)",
        ) from None
    sock.listen(backlog)
    sock.setblocking(False)
    return sock


class _Server(uvicorn.Server):
    # Signals are ours (see serve); uvicorn must not install its own handlers.
    def install_signal_handlers(self) -> None:
        pass


async def serve(services: Services, *, stop: asyncio.Event | None = None) -> None:
    """Run the API and the scheduler until SIGTERM/SIGINT (or ``stop`` is set)."""
    settings = services.settings
    stop = stop or asyncio.Event()
    sock = bind(settings.listen_host, settings.listen_port)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    app = create_app(services)
    config = uvicorn.Config(
        app,
        log_config=None,
        access_log=False,
        lifespan="off",
    )
    server = _Server(config)
    scheduler = build_scheduler(services)
    scheduler.start()
    task = asyncio.create_task(server.serve(sockets=[sock]))
    log.info(
        "provisiond_started",
        listen=f"http://{settings.listen_host}:{settings.listen_port}",
        database=services.db.safe_url,
        instance=services.instance,
    )
    stopper = asyncio.create_task(stop.wait())
    await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
    log.info("provisiond_stopping")
    server.should_exit = True
    scheduler.shutdown(wait=False)
    await task
    stopper.cancel()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.remove_signal_handler(sig)
    sock.close()
    services.close()
    log.info("provisiond_stopped")


def run(services: Services, **kwargs: Any) -> None:
    asyncio.run(serve(services, **kwargs))
