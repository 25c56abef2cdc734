"""Two fixes to pyghmi 1.6.19's session module: its lock-order inversion, and a lost wake-up.

**Lock order.** pyghmi guards two module-wide tables with two re-entrant locks (``session.py``):

- ``KEEPALIVE_SESSIONS`` (K) guards ``Session.keepalive_sessions``, the idle timers;
- ``WAITING_SESSIONS`` (W) guards ``Session.waiting_sessions``, the retry timers.

1.6.19 takes them in both orders:

- K then W: ``send_payload`` holds K while it calls ``_xmit_packet``, which takes W
  to arm the retry timer of the packet it sent.
- W then K: ``awaitresponse`` and ``wait_for_rsp`` hold W while they call
  ``_timedout`` on an expired session; its retransmit (``send_payload``, also through
  ``_relog`` and ``_open_rmcpplus_request``) takes K, and ``_mark_broken`` takes K.

A thread sending a packet and a thread retransmitting another one could each hold one
lock and wait for the other, forever, and then every thread that touched pyghmi did.

The patch: ``send_payload``'s K section ends with its call to ``_xmit_packet``, and
nothing follows that call. The patched ``send_payload`` runs pyghmi's own with
``_xmit_packet`` recorded instead of made, and makes it after pyghmi has released K:
the same packet, the same retry timer, the same exceptions, one lock later. The
retransmit path still holds W (W then K stays), but no code holds K while it waits
for any lock. Every K section of 1.6.19, once patched, only reads or writes
``keepalive_sessions``:

- ``_is_session_valid``, ``logout``, ``_req_priv_level``: one dict operation;
- ``_mark_broken``: a pop, released before it takes W for another pop;
- ``send_payload``: the idle-timer update (``_xmit_packet`` deferred past the section);
- ``wait_for_rsp``: the scan for the next deadline, and the choice of keepalives
  (``_isincommand`` only reads and clears attributes; the keepalives are sent after
  the section).

A lock that is never held while another lock is awaited cannot be part of a cycle of
waits, so K and W cannot deadlock each other. W is still held across ``_timedout``,
which may take K (a leaf now) or, through ``_mark_broken`` -> ``logout`` ->
``raw_command``, the session's ``atomicop``; that one is held only around
``_cmdwait``, which waits for the I/O thread with a deadline and takes no lock, and
the I/O thread takes none either. So the lock order is W -> K, W -> atomicop: acyclic.

**Lost wake-up.** A thread that sent a request waits in ``_io_wait`` for pyghmi's I/O
thread to see a packet from that BMC. The I/O thread wakes only the waits queued
when the packet arrives: a reply that came first (the sender was slow to get the GIL
back after ``sendto``) sits in the session's ``pktqueue`` while its owner sleeps until
the retry deadline, 0.5-1 s. A 1,000-BMC sync then lasts as long as its unluckiest
read. The patched ``_io_wait`` queues its wait first, then returns at once if the
reply is already there; a reply that comes later finds the wait queued. Only the
owner's own wait in ``awaitresponse`` (a BMC address, no ``evq``) with one session to
that BMC returns early; the caller then processes the packet. Measured on 1,000
simulated BMCs, 12 warm syncs each, interleaved: syncs with a read over 300 ms 10 of
12 without it, 1 of 12 with it; median 1.82 s -> 1.17 s (a shared, loaded machine).

Both arguments read pyghmi's ``session.py`` line by line, so :func:`install` refuses
any pyghmi other than exactly :data:`PYGHMI_VERSION` with that file's
:data:`SESSION_SHA256`: a new release must be re-read before the pin moves.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import threading
from pathlib import Path
from typing import Any

from pyghmi.ipmi.private import session as pyghmi_session

from provisiond.errors import ConfigError

#: The pyghmi release the patch was written for (pinned in pyproject).
PYGHMI_VERSION = "1.6.19"
#: sha256 of that release's ``pyghmi/ipmi/private/session.py``, the file the argument reads.
SESSION_SHA256 = "77a324e9b3cdfb6079ddd9bf010e1c564f7d9e810aaa519170625a99aad6cec4"

_Session: Any = pyghmi_session.Session
_ORIGINAL_SEND_PAYLOAD = _Session.send_payload
_ORIGINAL_XMIT_PACKET = _Session._xmit_packet
_ORIGINAL_IO_WAIT = pyghmi_session._io_wait
#: Per thread: the ``_xmit_packet`` calls recorded inside the running ``send_payload``.
_deferred = threading.local()

_XmitCall = tuple[Any, tuple[Any, ...], dict[str, Any]]


def _send_payload(self: Any, *args: Any, **kwargs: Any) -> None:
    """pyghmi's ``send_payload``, with its transmit made after it has released K."""
    outer: list[_XmitCall] | None = getattr(_deferred, "calls", None)
    calls: list[_XmitCall] = []
    _deferred.calls = calls
    try:
        _ORIGINAL_SEND_PAYLOAD(self, *args, **kwargs)
    finally:
        _deferred.calls = outer
    for session, xmit_args, xmit_kwargs in calls:  # none if the payload was queued
        _ORIGINAL_XMIT_PACKET(session, *xmit_args, **xmit_kwargs)


def _xmit_packet(self: Any, *args: Any, **kwargs: Any) -> None:
    """Inside the patched ``send_payload``: record the call. Elsewhere: pyghmi's own."""
    calls: list[_XmitCall] | None = getattr(_deferred, "calls", None)
    if calls is None:
        _ORIGINAL_XMIT_PACKET(self, *args, **kwargs)
    else:
        calls.append((self, args, kwargs))


def _io_wait(timeout: float, myaddr: Any = None, evq: Any = None) -> None:
    """pyghmi's ``_io_wait``, which does not sleep through a reply that came first."""
    evt = threading.Event()
    if evq is not None:
        evq.append(evt)
    deadline = timeout + pyghmi_session._monotonic_time()
    pyghmi_session.ioqueue.append((deadline, evt, myaddr))
    if evq is None and myaddr is not None:
        handlers = pyghmi_session.Session.bmc_handlers.get(myaddr)
        if handlers and len(handlers) == 1 and next(iter(list(handlers.values()))).pktqueue:
            return  # the I/O thread queued it before our wait: it would not wake us for it
    if deadline < pyghmi_session.selectdeadline:  # as pyghmi: break into the I/O select
        intsock = pyghmi_session.iosockets[0]
        if hasattr(intsock, "fd"):
            intsock = intsock.fd
        port = pyghmi_session.iosockets[0].getsockname()[1]
        intsock.sendto(b"\x01", (pyghmi_session.myself, port))
    evt.wait()


def mismatch() -> str:
    """Why the patch does not fit the installed pyghmi, or "" if it does."""
    installed = importlib.metadata.version("pyghmi")
    if installed != PYGHMI_VERSION:
        return f"pyghmi {installed} is installed"
    source = Path(str(pyghmi_session.__file__))
    try:
        digest = hashlib.sha256(source.read_bytes()).hexdigest()
    except OSError as exc:
        return f"pyghmi's {source} cannot be read ({exc})"
    if digest != SESSION_SHA256:
        return f"pyghmi {installed}'s {source} is not the released file (sha256 {digest})"
    return ""


def install() -> None:
    """Patch pyghmi's session module; refuse loudly unless it is exactly the pinned release."""
    problem = mismatch()
    if problem:
        raise ConfigError(
            f"{problem}, but provisiond's IPMI driver patches pyghmi {PYGHMI_VERSION}'s "
            "session module (provisiond/drivers/power/pyghmi_patch.py)",
            hint=f"install pyghmi=={PYGHMI_VERSION} (pip install 'pyghmi=={PYGHMI_VERSION}'), "
            "or re-read the new release's session.py against the patch's arguments "
            "before changing the pin",
        )
    _Session.send_payload = _send_payload
    _Session._xmit_packet = _xmit_packet
    pyghmi_session._io_wait = _io_wait


def uninstall() -> None:
    """Restore pyghmi as released: only the deadlock test's control run does this."""
    _Session.send_payload = _ORIGINAL_SEND_PAYLOAD
    _Session._xmit_packet = _ORIGINAL_XMIT_PACKET
    pyghmi_session._io_wait = _ORIGINAL_IO_WAIT


def installed() -> bool:
    return (
        _Session.send_payload is _send_payload
        and _Session._xmit_packet is _xmit_packet
        and pyghmi_session._io_wait is _io_wait
    )
