"""pyghmi 1.6.19's two session locks cannot deadlock provisiond's IPMI threads (issue 13).

pyghmi takes KEEPALIVE_SESSIONS then WAITING_SESSIONS to send, and the reverse to
retransmit; provisiond's patch (drivers/power/pyghmi_patch.py) makes the send outside
KEEPALIVE_SESSIONS (it also fixes a lost wake-up, tested here too). The stress
(``pyghmi_lock_stress``, in a child process: a deadlocked pyghmi cannot be undone)
runs 32 threads against 32 simulated BMCs that lose 10% of their packets, with a
wait-for-graph watcher that reports any cycle.

Control run first: without the patch, the same stress deadlocks, within about a
second in every run measured (8 of 8), so the watcher does catch the inversion.
"""

from __future__ import annotations

import importlib.metadata
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from pyghmi.ipmi.private import session as pyghmi_session

from provisiond.drivers.power import BmcTarget, PowerState, pyghmi_patch
from provisiond.drivers.power.ipmi import IpmiPower
from provisiond.errors import ConfigError
from provisiond.rack import BmcFarm, parse_fault

ROOT = Path(__file__).resolve().parents[2]
COUNT = 32
FAULTS = [parse_fault("drop=0.1")]
CHILD_TIMEOUT_S = 30.0  # the child's own bound is ~3 s; this is the backstop
RUNS_IN_A_ROW = 20


def _stress(*, unpatched: bool = False) -> subprocess.CompletedProcess[str]:
    # A fresh farm per run: each run leaves one session per BMC open (32 at most).
    with BmcFarm(count=COUNT, faults=FAULTS) as farm:
        host, port = farm.endpoint(0)
        return subprocess.run(
            [sys.executable, "-m", "tests.integration.pyghmi_lock_stress", host, str(port),
             str(COUNT), *(["--unpatched"] if unpatched else [])],
            cwd=ROOT, capture_output=True, text=True, timeout=CHILD_TIMEOUT_S, check=False,
        )  # fmt: skip


def _passed(result: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert result.returncode == 0, result.stdout + result.stderr
    summary: dict[str, Any] = json.loads(result.stdout.splitlines()[-1])
    # The run took both lock orders many times: retransmits (W then K) among the sends.
    assert summary["retransmits"] >= 10, summary
    assert summary["outcomes"].get("ok", 0) >= 20, summary
    return summary


def test_control_without_the_patch_the_stress_deadlocks() -> None:
    results = []
    for _attempt in range(3):  # measured: 8 of 8 runs deadlocked; three tries are plenty
        results.append(_stress(unpatched=True))
        if results[-1].returncode == 3:
            break
    last = results[-1]
    assert last.returncode == 3, [r.stdout[-2000:] for r in results]
    assert "DEADLOCK: 2 threads" in last.stdout
    # The two orders of the inversion, one per thread.
    assert "in _xmit_packet" in last.stdout and "in _timedout" in last.stdout


def test_with_the_patch_the_stress_does_not_deadlock() -> None:
    _passed(_stress())


@pytest.mark.slow
@pytest.mark.timeout(RUNS_IN_A_ROW * CHILD_TIMEOUT_S)
def test_with_the_patch_the_stress_passes_20_runs_in_a_row() -> None:
    started = time.monotonic()
    for run in range(RUNS_IN_A_ROW):
        summary = _passed(_stress())
        print(f"run {run + 1}: {json.dumps(summary)}")
    print(f"{RUNS_IN_A_ROW} runs in {time.monotonic() - started:.1f} s")


def test_the_patch_sends_outside_the_keepalive_lock(monkeypatch: pytest.MonkeyPatch) -> None:
    """The invariant the argument rests on, checked on every transmit of a real call."""
    held: list[bool] = []
    original = pyghmi_patch._ORIGINAL_XMIT_PACKET

    def checking_xmit(self: Any, *args: Any, **kwargs: Any) -> None:
        held.append(pyghmi_session.KEEPALIVE_SESSIONS._is_owned())
        original(self, *args, **kwargs)

    monkeypatch.setattr(pyghmi_patch, "_ORIGINAL_XMIT_PACKET", checking_xmit)
    assert pyghmi_patch.installed()
    with BmcFarm(count=1) as farm:
        host, port = farm.endpoint(0)
        driver = IpmiPower(BmcTarget(host, port, "admin", "password"))
        try:
            assert driver.get_power() in (PowerState.ON, PowerState.OFF)
        finally:
            driver.close()
    assert len(held) >= 5  # the login's packets and the read's
    assert not any(held)


def test_a_reply_that_came_before_the_wait_does_not_sleep_until_the_deadline() -> None:
    """The lost wake-up: pyghmi's own _io_wait sleeps through a reply already queued."""
    with BmcFarm(count=1) as farm:
        host, port = farm.endpoint(0)
        driver = IpmiPower(BmcTarget(host, port, "admin", "password"))
        try:
            driver.get_power()
            session = driver._command.ipmi_session
            # As the I/O thread leaves a reply that arrived before its owner waited.
            session.pktqueue.append((b"", session.sockaddr, None))
            try:
                # The control: pyghmi's own wait sleeps through the queued reply. Its I/O
                # thread is process-wide, so other sessions' traffic (earlier tests'
                # keepalives) may end one wait early: the longest of a few counts.
                slept = 0.0
                for _ in range(5):
                    started = time.monotonic()
                    pyghmi_patch._ORIGINAL_IO_WAIT(0.3, session.sockaddr)
                    slept = max(slept, time.monotonic() - started)
                    if slept >= 0.3:
                        break
                started = time.monotonic()
                pyghmi_session._io_wait(5.0, session.sockaddr)
                woke = time.monotonic() - started
            finally:
                session.pktqueue.clear()
            assert driver.get_power() in (PowerState.ON, PowerState.OFF)
        finally:
            driver.close()
    assert slept >= 0.3
    assert woke < 0.1


def test_the_patch_refuses_another_pyghmi(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(importlib.metadata, "version", lambda _name: "1.6.20")
    with pytest.raises(ConfigError, match=r"pyghmi 1\.6\.20 is installed") as raised:
        pyghmi_patch.install()
    assert f"pyghmi=={pyghmi_patch.PYGHMI_VERSION}" in raised.value.hint


def test_the_patch_refuses_an_edited_session_module(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pyghmi_patch, "SESSION_SHA256", "0" * 64)
    with pytest.raises(ConfigError, match="is not the released file"):
        pyghmi_patch.install()
    assert pyghmi_patch.installed()  # a refusal leaves the patch as it was
