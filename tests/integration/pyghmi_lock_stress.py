"""The child of test_pyghmi_lock_order: IPMI calls from many threads while packets are lost.

    python -m tests.integration.pyghmi_lock_stress HOST FIRST_PORT COUNT [--unpatched]

Runs in its own process because a deadlock in pyghmi cannot be undone: its threads
stay parked on pyghmi's module-wide locks for good. THREADS threads read the power
state of COUNT simulated BMCs through the real ``ipmi`` driver for SECONDS. The BMCs
drop packets, so replies go missing and pyghmi retransmits from inside its
WAITING_SESSIONS section (W then KEEPALIVE_SESSIONS) while other threads send (in
1.6.19, KEEPALIVE_SESSIONS then W). A short GIL switch interval interleaves the
threads at many more points than the default 5 ms.

A watcher rebuilds the wait-for graph every 50 ms: each thread parked in pyghmi's
``util.protect`` waits for the lock's owner (read from the RLock's repr). The same
cycle seen twice, 200 ms apart, is a deadlock: it prints DEADLOCK with the cycle's
stacks and exits 3. Otherwise, once every thread has stopped, it prints one JSON
line (calls, errors, retransmits) and exits 0; threads still busy 15 s after the end
of the run: HUNG, exit 4. ``--unpatched`` removes provisiond's patch first: the
control run, pyghmi 1.6.19 as released, with its two locks apart.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import sys
import threading
import time
import traceback
from collections import Counter
from types import FrameType
from typing import Any

from pyghmi.ipmi.private import session as pyghmi_session
from pyghmi.ipmi.private import util as pyghmi_util

from provisiond.drivers.power import BmcError, BmcTarget, pyghmi_patch
from provisiond.drivers.power.ipmi import IpmiPower

SECONDS = 1.6
TAIL_S = 0.3
SWITCH_INTERVAL_S = 0.0001
WATCH_INTERVAL_S = 0.05
CONFIRM_S = 0.2
STUCK_S = 5.0
_OWNER = re.compile(r"owner=(\d+)")


def _owner(lock: Any) -> int:
    match = _OWNER.search(repr(lock))  # the C RLock's repr names its owning thread
    return int(match[1]) if match else 0


def _awaited(frame: FrameType | None) -> Any:
    """The lock a thread waits for inside pyghmi's util.protect, if it does."""
    while frame is not None:
        code = frame.f_code
        if code.co_name == "__enter__" and code.co_filename == pyghmi_util.__file__:
            return frame.f_locals["self"].lock
        frame = frame.f_back
    return None


def _cycle() -> tuple[tuple[int, int], ...]:
    """A cycle of threads each waiting for a lock the next one holds, or ()."""
    waits: dict[int, tuple[int, int]] = {}  # thread -> (lock id, owner)
    for ident, frame in sys._current_frames().items():
        lock = _awaited(frame)
        owner = _owner(lock) if lock is not None else 0
        if owner and owner != ident:
            waits[ident] = (id(lock), owner)
    for start in waits:
        path: list[int] = []
        ident = start
        while ident in waits and ident not in path:
            path.append(ident)
            ident = waits[ident][1]
        if ident == start:
            return tuple(sorted((thread, waits[thread][0]) for thread in path))
    return ()


def _report_deadlock(cycle: tuple[tuple[int, int], ...], after: float) -> None:
    frames = sys._current_frames()
    names = {thread.ident: thread.name for thread in threading.enumerate()}
    print(
        f"DEADLOCK: {len(cycle)} threads wait for each other's pyghmi locks "
        f"({after:.1f} s into the run)",
        flush=True,
    )
    for ident, _lock in cycle:
        print(f"--- {names.get(ident, ident)}", flush=True)
        print("".join(traceback.format_stack(frames[ident])[-8:]), flush=True)


def _report_stuck(ident: int, waited: float) -> None:
    frames = sys._current_frames()
    print(f"STUCK: a thread has waited {waited:.1f} s for one pyghmi lock", flush=True)
    print("".join(traceback.format_stack(frames[ident])[-8:]), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("host")
    parser.add_argument("first_port", type=int)
    parser.add_argument("count", type=int)
    parser.add_argument("--unpatched", action="store_true")
    args = parser.parse_args()
    if args.unpatched:
        pyghmi_patch.uninstall()
    assert pyghmi_session.WAITING_SESSIONS is not pyghmi_session.KEEPALIVE_SESSIONS
    assert pyghmi_patch.installed() is not args.unpatched

    # Counts pyghmi's retry timers firing, to show that the run took the W-then-K path.
    retransmits = itertools.count()
    timedout = pyghmi_session.Session._timedout

    def counting_timedout(self: Any) -> Any:
        next(retransmits)
        return timedout(self)

    pyghmi_session.Session._timedout = counting_timedout

    outcomes = Counter[str]()
    outcomes_lock = threading.Lock()
    started = time.monotonic()
    stop_at = started + SECONDS

    def work(port: int) -> None:
        driver = IpmiPower(BmcTarget(args.host, port, "admin", "password"))
        while time.monotonic() < stop_at:
            try:
                driver.get_power()
                outcome = "ok"
            except BmcError as exc:
                outcome = type(exc).__name__
            with outcomes_lock:
                outcomes[outcome] += 1

    sys.setswitchinterval(SWITCH_INTERVAL_S)
    threads = [
        threading.Thread(target=work, args=(args.first_port + i,), name=f"stress-{i}", daemon=True)
        for i in range(args.count)
    ]
    for thread in threads:
        thread.start()
    last: tuple[tuple[int, int], ...] = ()
    since = 0.0
    waiting: dict[int, tuple[int, float]] = {}  # thread -> (lock id, waiting since)
    longest = 0.0
    while time.monotonic() < stop_at + TAIL_S and any(t.is_alive() for t in threads):
        cycle = _cycle()
        now = time.monotonic()
        if cycle != last:  # a new cycle, or none: a real deadlock stays put
            last, since = cycle, now
        elif cycle and now - since >= CONFIRM_S:
            _report_deadlock(cycle, since - started)
            os._exit(3)
        for ident, frame in sys._current_frames().items():
            lock = _awaited(frame)
            if lock is None:
                waiting.pop(ident, None)
                continue
            if waiting.get(ident, (0, 0.0))[0] != id(lock):
                waiting[ident] = (id(lock), now)
            longest = max(longest, now - waiting[ident][1])
            if now - waiting[ident][1] > STUCK_S:
                _report_stuck(ident, now - waiting[ident][1])
                os._exit(4)
        time.sleep(WATCH_INTERVAL_S)
    summary = {
        "outcomes": dict(outcomes),
        "retransmits": next(retransmits),
        "longest_lock_wait_s": round(longest, 3),
        "threads_in_a_call_at_exit": sum(thread.is_alive() for thread in threads),
    }
    print(json.dumps(summary), flush=True)
    os._exit(0)  # threads may still be in pyghmi's retry waits; a deadlock would be seen


if __name__ == "__main__":
    main()
