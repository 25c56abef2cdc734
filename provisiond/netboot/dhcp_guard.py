"""A tiny guard process between the dnsmasq supervisor and a DHCP holder's dnsmasq.

Run as ``python -I -S dhcp_guard.py --lease-s N -- <dnsmasq argv...>`` (standard
library only, so ``-S`` is fine). It starts dnsmasq as its child (stderr inherited:
the supervisor still reads dnsmasq's ``--log-dhcp`` lines from the same pipe) and
then keeps dnsmasq running only while the daemon keeps renewing:

- each stdin line ``<seconds>`` moves the deadline to ``now + seconds`` (monotonic,
  relative: no clock skew between the two processes);
- stdin EOF (the daemon died: the kernel closed its end of the pipe) or the deadline
  passing (the daemon is SIGSTOPped, its loop hangs, its renewals fail) stops dnsmasq
  (SIGTERM, then SIGKILL after :data:`KILL_WAIT_S`) and exits with
  :data:`EXIT_ORPHANED` / :data:`EXIT_EXPIRED`;
- dnsmasq exiting ends the guard with dnsmasq's code (``128 + signal`` if killed);
- SIGTERM/SIGINT/SIGHUP to the guard is forwarded to dnsmasq; the guard exits when
  dnsmasq ends (SIGKILL after :data:`KILL_WAIT_S`).

Why: dnsmasq dropping to ``nobody`` loses PR_SET_PDEATHSIG (the kernel clears it on
a credential change), and a SIGSTOPped daemon stops its dead-man thread too. The guard
never drops privileges, lives in its own session (a SIGSTOP of the daemon does not
reach it) and gets SIGTERM when the daemon dies (PR_SET_PDEATHSIG set by the
supervisor), which it handles like stdin EOF.

The guard reports dnsmasq's PID on stderr as ``dhcp-guard: child <pid>`` (one short
write: atomic on a pipe), and its decisions as ``dhcp-guard: ...`` lines.

:func:`kill_stale` and :func:`die_with_parent` (used by the supervisor) live here too:
the pidfile holds the guard's PID and its dnsmasq's (so a dnsmasq that outlived a
SIGKILLed guard is still found).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import ctypes.util
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

PREFIX = "dhcp-guard: "
EXIT_EXPIRED = 124
EXIT_ORPHANED = 125
KILL_WAIT_S = 2.0
TICK_S = 0.5
_PR_SET_PDEATHSIG = 1


def command(python: str, lease_s: float, argv: Sequence[str]) -> list[str]:
    """The guard's command line around ``argv`` (dnsmasq's)."""
    return [python, "-I", "-S", __file__, "--lease-s", f"{max(lease_s, 0.0):.3f}", "--", *argv]


def _say(text: str) -> None:
    with contextlib.suppress(OSError):
        os.write(2, f"{PREFIX}{text}\n".encode())


def _code(returncode: int) -> int:
    return 128 - returncode if returncode < 0 else returncode


def _stop(child: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> int:
    """``sig``, then SIGKILL after KILL_WAIT_S: dnsmasq's exit code (bounded wait)."""
    with contextlib.suppress(ProcessLookupError):
        child.send_signal(sig)
    try:
        return _code(child.wait(KILL_WAIT_S))
    except subprocess.TimeoutExpired:
        _say(f"child {child.pid} ignored signal {sig}: SIGKILL")
        child.kill()
        return _code(child.wait(KILL_WAIT_S))


def keep_credentials(user: str | None) -> tuple[str, ...]:
    """``--group=`` (empty: no setgid) when dnsmasq stays root, so it dies with the daemon.

    The kernel clears PR_SET_PDEATHSIG when a process's effective uid or gid changes.
    Debian's dnsmasq switches to group ``dip`` by default even as ``user=root``, which
    used to leave it running, holding port 67, after the daemon was SIGKILLed
    (measured). A dnsmasq that drops to another user (``nobody``, the default) loses
    the setting anyway: the next daemon start kills it through the pidfile, and a DHCP
    holder runs it under this guard, which stops it when the daemon dies or stalls.
    """
    return ("--group=",) if user == "root" else ()


def die_with_parent(sig: int = signal.SIGKILL) -> None:
    """In the child before exec: ``sig`` to it if its parent dies (PR_SET_PDEATHSIG)."""
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, sig, 0, 0, 0)


def die_with_parent_term() -> None:
    """For a guard: SIGTERM, which it handles by stopping dnsmasq first."""
    die_with_parent(signal.SIGTERM)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dhcp_guard")
    parser.add_argument("--lease-s", type=float, required=True)
    parser.add_argument("child", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    cmd = [a for a in args.child]
    if cmd[:1] == ["--"]:
        cmd = cmd[1:]
    if not cmd:
        parser.error("no command after --")
    deadline = time.monotonic() + args.lease_s

    pending: list[int] = []
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda signum, _frame: pending.append(signum))
    signal.signal(signal.SIGCHLD, lambda _signum, _frame: None)  # wakes the select

    libc = ctypes.CDLL(None, use_errno=True)

    def die_with_guard() -> None:  # a root dnsmasq keeps it; one dropping to nobody not
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)

    try:
        child = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, preexec_fn=die_with_guard
        )
    except OSError as exc:
        _say(f"cannot start {cmd[0]}: {exc}")
        return 127
    _say(f"child {child.pid}")
    stdin = sys.stdin.fileno()
    buf = b""
    while True:  # each pass waits at most TICK_S; ends with dnsmasq
        code = child.poll()
        if code is not None:
            return _code(code)
        if pending:
            _say(f"signal {pending[0]}: forwarded to dnsmasq")
            return _stop(child, pending[0])
        left = deadline - time.monotonic()
        if left <= 0:
            _say("lease expired without renewal: stopping dnsmasq")
            _stop(child)
            return EXIT_EXPIRED
        ready, _, _ = select.select([stdin, wake_r], [], [], min(left, TICK_S))
        if wake_r in ready:
            with contextlib.suppress(OSError):
                os.read(wake_r, 512)
        if stdin not in ready:
            continue
        data = os.read(stdin, 4096)
        if not data:
            _say("daemon gone (stdin closed): stopping dnsmasq")
            _stop(child)
            return EXIT_ORPHANED
        *lines, buf = (buf + data).split(b"\n")
        for line in lines:
            try:
                deadline = time.monotonic() + float(line)
            except ValueError:
                _say(f"ignored bad line {line[:40]!r}")


def kill_stale(pidfile: Path, conf: Path) -> list[int]:
    """SIGKILL the processes in ``pidfile`` that are a dnsmasq or a guard for ``conf``.

    A PID reused by anything else is never touched. Returns the PIDs killed (after
    waiting, bounded, for them to be gone)."""
    try:
        pids = [int(x) for x in pidfile.read_text().split()]
    except (OSError, ValueError):
        return []
    mark = f"--conf-file={conf}".encode()
    killed = []
    for pid in pids:
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        ours = b"dnsmasq" in argv[0] or any(a.endswith(b"dhcp_guard.py") for a in argv[:4])
        if ours and mark in argv and not gone(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            killed.append(pid)
    for pid in killed:
        for _ in range(40):  # bounded: 2 s
            if gone(pid):
                break
            time.sleep(0.05)
    return killed


def gone(pid: int) -> bool:
    """No such process, or a zombie (exited, not yet reaped)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1].startswith(("Z", "X"))
    except (OSError, IndexError):
        return True


if __name__ == "__main__":
    sys.exit(main())
