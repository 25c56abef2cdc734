"""Threads that push file bodies into sockets with ``os.sendfile``, off the event loop.

Why not ``loop.sendfile`` (``os.sendfile`` on the event loop's thread): every byte's
kernel work then runs on that one thread, and the whole daemon stops while the
kernel reads a file page that is not cached (a 100 MiB initrd after a reboot).
Measured, 50 clients x 100 MiB on 2 shared cores, the median of rounds paired with
nginx's: loop.sendfile 0.68x nginx, these threads 0.8x, and about 0.9x with the
socket corked (see :mod:`provisiond.netboot.zerocopy`). Why not a thread per
download: a client that stops reading would hold its thread, and a boot storm of
500 machines would need 500 threads.

So a few sender threads (one per core, as nginx runs one worker per core) each
watch their sockets with an ``epoll`` of their own. When a socket has room, its
sender calls ``os.sendfile`` until the socket is full (at most :data:`TURN` bytes a
turn, so one fast client cannot starve the others), then serves the next one. A
job owns duplicates of the socket's and the file's descriptors and closes them when
it ends, so a descriptor the event loop closes meanwhile cannot be reused under
it. A job ends when its bytes are sent, when the peer goes away (the ``sendfile``
error), when the socket takes nothing for ``idle_timeout_s`` (a client that stopped
reading), when the file ends early, or when its caller is cancelled; the caller's
future then gets the outcome on the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import select
import threading
import time
from collections import deque
from dataclasses import dataclass, field

from provisiond.logging import get_logger

log = get_logger(__name__)

MiB = 1 << 20
#: Bytes one socket may take in a turn before its sender serves the others.
TURN = 4 * MiB
SEND_IDLE_TIMEOUT_S = 60.0
#: How often a sender looks for jobs that made no headway.
SWEEP_S = 1.0


class FileEnded(OSError):
    """The file ended before the promised bytes were sent (it shrank)."""


class SenderStopped(ConnectionAbortedError):
    """The senders were closed (the daemon is stopping) with the job unfinished."""


class SendfileUnsupported(OSError):
    """``sendfile`` refused this file before sending a byte (a file system without it)."""


#: What ``sendfile(2)`` answers for a file it cannot splice from.
_UNSUPPORTED = (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP)


@dataclass(eq=False)
class _Job:
    sock_fd: int
    file_fd: int
    offset: int
    remaining: int
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[None]
    last_progress: float = field(default_factory=time.monotonic)
    sent: int = 0


class _Sender(threading.Thread):
    """One thread, one epoll, its jobs keyed by their (duplicated) socket descriptor.

    The event loop talks to it through two deques and an eventfd only.
    """

    def __init__(self, name: str, idle_timeout_s: float) -> None:
        super().__init__(name=name, daemon=True)
        self.lock = threading.Lock()  # inbox and stopping, against the thread's last drain
        self.idle_timeout_s = idle_timeout_s
        self.epoll = select.epoll()
        self.wake = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self.epoll.register(self.wake, select.EPOLLIN)
        self.inbox: deque[_Job] = deque()
        self.cancels: deque[_Job] = deque()
        self.jobs: dict[int, _Job] = {}
        self.stopping = False
        self.swept = time.monotonic()

    def load(self) -> int:
        return len(self.jobs) + len(self.inbox)

    def submit(self, job: _Job) -> None:
        with self.lock:
            if self.stopping:  # a job put in after the last drain would wait forever
                raise SenderStopped(f"{self.name} has stopped")
            self.inbox.append(job)
        os.eventfd_write(self.wake, 1)

    def cancel(self, job: _Job) -> None:
        with self.lock:
            if self.stopping:  # the thread fails every job itself
                return
            self.cancels.append(job)
        os.eventfd_write(self.wake, 1)

    def stop(self) -> None:
        with self.lock:
            self.stopping = True
        os.eventfd_write(self.wake, 1)

    def close_fds(self) -> None:
        """After the thread has ended (only then: it polls them)."""
        self.epoll.close()
        os.close(self.wake)

    def run(self) -> None:
        try:
            while not self.stopping:
                for fd, _events in self.epoll.poll(SWEEP_S):
                    if fd == self.wake:
                        self._take_messages()
                    elif (job := self.jobs.get(fd)) is not None:
                        self._pump(job)
                if time.monotonic() - self.swept >= SWEEP_S:
                    self._sweep()
        except Exception:  # a bug: fail this thread's jobs rather than leave them hanging
            log.exception("file_sender_failed", thread=self.name)
        finally:
            with self.lock:
                self.stopping = True
                left = [*self.jobs.values(), *self.inbox]
                self.inbox.clear()
            for job in left:
                self._finish(job, SenderStopped(f"{self.name} stopped"))

    def _take_messages(self) -> None:
        with contextlib.suppress(BlockingIOError):
            os.eventfd_read(self.wake)
        while self.inbox:
            job = self.inbox.popleft()
            self.jobs[job.sock_fd] = job
            try:
                self.epoll.register(job.sock_fd, select.EPOLLOUT)
            except OSError as exc:
                del self.jobs[job.sock_fd]
                self._finish(job, exc)
                continue
            self._pump(job)
        while self.cancels:
            job = self.cancels.popleft()
            if self.jobs.get(job.sock_fd) is job:
                self._finish(job, asyncio.CancelledError())

    def _sweep(self) -> None:
        now = self.swept = time.monotonic()
        for job in list(self.jobs.values()):
            if now - job.last_progress > self.idle_timeout_s:
                self._finish(job, TimeoutError(f"no headway in {self.idle_timeout_s:g} s"))

    def _pump(self, job: _Job) -> None:
        turn = 0
        while turn < TURN:
            try:
                sent = os.sendfile(
                    job.sock_fd, job.file_fd, job.offset, min(job.remaining, TURN - turn)
                )
            except BlockingIOError:  # the socket is full: epoll says when it has room
                break
            except OSError as exc:  # EPIPE, ECONNRESET: the peer has gone
                if not job.sent and exc.errno in _UNSUPPORTED:
                    exc = SendfileUnsupported(exc.errno, f"sendfile: {exc.strerror}")
                self._finish(job, exc)
                return
            if sent == 0:
                self._finish(job, FileEnded(f"the file ended {job.remaining} bytes early"))
                return
            job.offset += sent
            job.remaining -= sent
            job.sent += sent
            turn += sent
            if job.remaining == 0:
                self._finish(job, None)
                return
        if turn:
            job.last_progress = time.monotonic()

    def _finish(self, job: _Job, error: BaseException | None) -> None:
        if self.jobs.pop(job.sock_fd, None) is not None:
            self.epoll.unregister(job.sock_fd)
        os.close(job.sock_fd)
        os.close(job.file_fd)
        with contextlib.suppress(RuntimeError):  # a closed loop: nobody is waiting
            job.loop.call_soon_threadsafe(_settle, job.future, error)


def _settle(future: asyncio.Future[None], error: BaseException | None) -> None:
    if future.done():
        return
    if error is None:
        future.set_result(None)
    elif isinstance(error, asyncio.CancelledError):
        future.cancel()
    else:
        future.set_exception(error)


class FileSenders:
    """``threads`` sender threads (default: one per core, at most 4), started on first use.

    The composition root makes one and closes it at shutdown::

        senders = FileSenders()
        await senders.send(sock.fileno(), file.fileno(), offset, count)
        senders.close()
    """

    def __init__(
        self, threads: int | None = None, idle_timeout_s: float = SEND_IDLE_TIMEOUT_S
    ) -> None:
        self.threads = threads or min(4, os.cpu_count() or 1)
        self.idle_timeout_s = idle_timeout_s
        self._senders: list[_Sender] = []
        self._lock = threading.Lock()
        self._closed = False

    def _least_loaded(self) -> _Sender:
        with self._lock:
            if self._closed:
                raise SenderStopped("the file senders are closed")
            if not self._senders:
                self._senders = [self._start(i) for i in range(self.threads)]
            for i, sender in enumerate(self._senders):
                if sender.stopping and not sender.is_alive():  # it failed: replace it
                    sender.close_fds()
                    self._senders[i] = self._start(i)
            running = [s for s in self._senders if not s.stopping]
            if not running:  # all failed and still finishing: one more
                running = [self._start(len(self._senders))]
                self._senders += running
            return min(running, key=_Sender.load)

    def _start(self, number: int) -> _Sender:
        sender = _Sender(f"file-sender-{number}", self.idle_timeout_s)
        sender.start()
        return sender

    def jobs(self) -> int:
        """Bodies being sent now."""
        return sum(sender.load() for sender in self._senders)

    async def send(self, sock_fd: int, file_fd: int, offset: int, count: int) -> None:
        """Send ``count`` bytes of ``file_fd`` from ``offset`` into the socket ``sock_fd``.

        The socket must be non-blocking with nothing else writing to it meanwhile.
        Raises the ``sendfile`` error when the peer leaves, TimeoutError when the
        socket takes nothing for ``idle_timeout_s``, :class:`FileEnded`,
        :class:`SenderStopped`, or :class:`SendfileUnsupported` (nothing was sent:
        the caller may write the bytes itself). Cancelling the caller cancels the job.
        """
        if count <= 0:
            return
        sender = self._least_loaded()
        loop = asyncio.get_running_loop()
        sock_dup = os.dup(sock_fd)
        try:
            file_dup = os.dup(file_fd)
        except OSError:
            os.close(sock_dup)
            raise
        job = _Job(sock_dup, file_dup, offset, count, loop, loop.create_future())
        try:
            sender.submit(job)
        except SenderStopped:  # it failed just now: the job never reached it
            os.close(sock_dup)
            os.close(file_dup)
            raise
        try:
            await job.future
        except asyncio.CancelledError:
            sender.cancel(job)
            raise

    def close(self) -> None:
        """Stop the threads; unfinished jobs fail with :class:`SenderStopped`."""
        with self._lock:
            senders, self._senders, self._closed = self._senders, [], True
        for sender in senders:
            sender.stop()
        for sender in senders:
            sender.join(timeout=5)
            if not sender.is_alive():  # else leak its two descriptors rather than race
                sender.close_fds()
