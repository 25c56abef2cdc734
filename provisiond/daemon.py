"""The composition root: builds every part from the settings and passes it down."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
from collections.abc import Iterator
from typing import Any

import anyio.to_thread
import uvicorn
from starlette.types import ASGIApp

from provisiond import __version__
from provisiond.allocations.queue import AllocationQueue
from provisiond.api import create_app
from provisiond.api.admission import Limits
from provisiond.api.app import BootOnly
from provisiond.cluster.members import Me
from provisiond.cluster.node import ClusterNode
from provisiond.cluster.notify import start_listener
from provisiond.cluster.sqlite_lock import SqliteServeLock
from provisiond.config import Settings
from provisiond.container import Services, daemon_id
from provisiond.db import SCHEMA_HEAD, Database
from provisiond.deploy.engine import DeployEngine
from provisiond.deploy.netboot_runtime import Netboot
from provisiond.drivers.power.ipmi import check_pyghmi
from provisiond.errors import ConfigError
from provisiond.executor import BlockingExecutor
from provisiond.lanes import Lane, LaneExecutor
from provisiond.logging import get_logger
from provisiond.netboot.file_senders import FileSenders
from provisiond.netboot.netns_socket import bind_in_netns
from provisiond.netboot.zerocopy import zero_copy_protocol
from provisiond.scheduler import build_scheduler
from provisiond.secrets import SecretBox
from provisiond.watchdog import LoopWatchdog

log = get_logger(__name__)

#: Threads per lane behind the loop's default executor (asyncio.to_thread: database
#: work of async routes, the deploy engine and the scheduler), see provisiond.lanes.
LANE_THREADS = {Lane.API: 32, Lane.BOOT: 32, Lane.SYSTEM: 32}


def build_services(settings: Settings, *, check_schema: bool = True) -> Services:
    db = Database(settings.db_url, busy_timeout_s=settings.sqlite_busy_timeout_s)
    if check_schema:
        db.check_schema()
    return Services(
        settings=settings,
        db=db,
        secrets=SecretBox.from_key_file(settings.key_file),
        instance=daemon_id(socket.gethostname(), os.getpid()),
        executor=BlockingExecutor(settings.executor_workers),
    )


def cluster_node(services: Services) -> ClusterNode:
    """This daemon's row and roles (provisiond.cluster); on SQLite, its row only."""
    settings = services.settings
    me = Me(
        id=services.instance,
        host=socket.gethostname(),
        pid=os.getpid(),
        version=__version__,
        schema_revision=SCHEMA_HEAD,
        api_url=settings.public_url or f"http://{settings.listen_host}:{settings.listen_port}",
        boot_urls={n.name: f"http://{n.boot_address}:{n.http_port}" for n in settings.networks},
        networks={n.name: n.netns or "" for n in settings.networks},
    )
    return ClusterNode(
        services.db,
        me,
        heartbeat_s=settings.daemon_heartbeat_s,
        dead_after_s=settings.daemon_dead_after_s,
        leader_ttl_s=settings.leader_ttl_s,
        drain_timeout_s=settings.drain_timeout_s,
    )


def bind(host: str, port: int, *, backlog: int = 2048) -> socket.socket:
    """Bind the listening socket ourselves: a clear error, and a backlog for PXE storms."""
    return bind_in_netns(None, host, port, backlog=backlog)


def boot_sockets(settings: Settings) -> list[socket.socket]:
    """One listener per provisioning network at its boot address (inside its netns).

    They serve only the boot routes (provisiond.api.app.BootOnly). A network whose
    boot address and port are the main listener's gets none: the main listener serves
    it, admin API included, which is logged as a warning.
    """
    out: list[socket.socket] = []
    for net in settings.networks:
        host = str(net.boot_address)
        if net.netns is None and (host, net.http_port) == (
            settings.listen_host,
            settings.listen_port,
        ):
            log.warning(
                "boot_listener_is_main_listener",
                network=net.name,
                listen=f"{host}:{net.http_port}",
                hint="give the network another http_port (or the API another listen_host) "
                "so machines being booted cannot reach the admin API",
            )
            continue
        try:
            out.append(bind_in_netns(net.netns, host, net.http_port))
        except ConfigError:
            for sock in out:
                sock.close()
            raise
    return out


class _Server(uvicorn.Server):
    # Signals are ours (see serve): uvicorn must not install its own handlers, which
    # would replace the loop's, and each other's when the boot listeners have a server.
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _config(app: ASGIApp, senders: FileSenders) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        # h11, with image file bodies sent by os.sendfile (provisiond.netboot.zerocopy)
        http=zero_copy_protocol(senders),
        log_config=None,
        access_log=False,
        lifespan="off",
        backlog=2048,
        timeout_keep_alive=30,
        # Long-polls and event streams may be open for minutes: a stop waits this
        # long for them, well inside the systemd unit's TimeoutStopSec.
        timeout_graceful_shutdown=10,
    )


async def serve(services: Services, *, stop: asyncio.Event | None = None) -> None:
    """Run the API and the scheduler until SIGTERM/SIGINT (or ``stop`` is set)."""
    settings = services.settings
    check_pyghmi()  # the IPMI workarounds use its private names: refuse another version
    stop = stop or asyncio.Event()
    single = SqliteServeLock(settings.db_url)
    single.acquire()  # SQLite: one daemon per database file
    try:
        sock = bind(settings.listen_host, settings.listen_port)
    except BaseException:
        single.release()
        raise
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    # asyncio.to_thread runs the engine's, the scheduler's and the async routes'
    # database work on the caller's lane's threads: requests never take the threads
    # the deploy engine and the scheduler need. asyncio's own default is sized for
    # CPU work (cores + 4: 6 threads on 2 cores), which a few writers queued on
    # SQLite's write slot fill.
    executor = LaneExecutor(LANE_THREADS)
    loop.set_default_executor(executor)
    # Sync routes and dependencies run on anyio's threads, one limiter for every lane:
    # it is the sum of the bounds of every class that runs sync code, so no class can
    # take another's threads, and an admitted request never waits for a thread while
    # it holds a database connection. Threads are made only when needed. (Image file
    # reads have their own limiter: provisiond.netboot.sendfile.)
    limiter = anyio.to_thread.current_default_thread_limiter()
    limiter.total_tokens = (
        settings.api_max_in_flight
        + settings.watch_max_in_flight
        + settings.boot_max_in_flight
        + Limits().health
    )
    watchdog = LoopWatchdog(loop, pool=executor.pool(Lane.SYSTEM), metrics=services.metrics)
    watchdog.start()
    try:
        await _serve(services, settings, sock, stop)
    finally:
        single.release()
        watchdog.stop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
    log.info(
        "provisiond_stopped", loop_stalls=watchdog.stalls, pool_saturations=watchdog.saturations
    )


async def _serve(
    services: Services, settings: Settings, sock: socket.socket, stop: asyncio.Event
) -> None:
    extra = boot_sockets(settings)
    app = create_app(services)
    senders = FileSenders()
    server = _Server(_config(app, senders))
    # The provisioning networks' listeners have a server of their own, which serves
    # only the boot routes of the same app (one admission, one set of bounds).
    boot_server = _Server(_config(BootOnly(app), senders)) if extra else None
    node = cluster_node(services)
    await node.start()
    services.cluster = node
    node_task = asyncio.create_task(node.run(stop))
    listener = start_listener(services)  # PostgreSQL: wake-ups from the other daemons
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGUSR2, node.drain, "SIGUSR2")
    netboot = Netboot(services)
    services.netboot = netboot
    try:
        await netboot.start()
    except BaseException:  # a half-started daemon hands its row and roles back at once
        await node.close("failed to start")
        raise
    scheduler = build_scheduler(services)
    scheduler.start()
    engine = DeployEngine(services)
    node.on_lost.append(engine.abandon)
    node.busy = engine.busy
    engine_task = asyncio.create_task(engine.run(stop))
    queue_task = asyncio.create_task(AllocationQueue(services).run(stop))
    tasks = {asyncio.create_task(server.serve(sockets=[sock]))}
    if boot_server is not None:
        tasks.add(asyncio.create_task(boot_server.serve(sockets=extra)))
    log.info(
        "provisiond_started",
        listen=f"http://{settings.listen_host}:{settings.listen_port}",
        boot=[
            f"{n.name}: http://{n.boot_address}:{n.http_port} ({n.dhcp_mode})"
            for n in settings.networks
        ],
        database=services.db.safe_url,
        instance=services.instance,
    )
    stopper = asyncio.create_task(stop.wait())
    await asyncio.wait({*tasks, stopper}, return_when=asyncio.FIRST_COMPLETED)
    log.info("provisiond_stopping")
    stop.set()
    server.should_exit = True
    if boot_server is not None:
        boot_server.should_exit = True
    scheduler.shutdown(wait=False)
    await asyncio.gather(*tasks)
    senders.close()
    stopper.cancel()
    services.wake_deployer()
    await asyncio.wait({engine_task, queue_task}, timeout=10)
    await node.close(keep=engine.unfinished)
    await asyncio.wait({node_task}, timeout=5)
    if listener is not None:
        await asyncio.to_thread(listener.stop)
    loop.remove_signal_handler(signal.SIGUSR2)
    await netboot.stop()
    services.netboot = None
    await asyncio.to_thread(services.token_use.flush, services.db)
    sock.close()
    for s in extra:
        s.close()
    services.close()


def run(services: Services, **kwargs: Any) -> None:
    asyncio.run(serve(services, **kwargs))
