"""What the virtual-rack E2E modules share: keys, SSH with a pinned host key, the CLI
allocation a CI job runs, events and diagnostics.

Each module brings up its own :class:`~provisiond.rack.scenario.Scenario`; these helpers
only talk to it (its API, its namespace, its guests' serial logs).
"""

from __future__ import annotations

import base64
import io
import json
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import paramiko

from provisiond.deploy.records import new_ssh_keypair
from provisiond.rack.scenario import PROVISIOND, Scenario, netns_socket


def keypair(comment: str = "e2e@test") -> tuple[str, str]:
    """(OpenSSH private key PEM, public key line) of a fresh Ed25519 key."""
    return new_ssh_keypair(comment)


@contextmanager
def brought_up(sc: Scenario) -> Iterator[Scenario]:
    """The rack up for a module's tests, and torn down (namespace gone) even on failure."""
    try:
        sc.up()
        yield sc
    finally:
        sc.down()
        assert not Path(f"/run/netns/pvd-{sc.name}").exists()


def ssh(sc: Scenario, address: str, pem: str, host_key: str, command: str) -> str:
    """``command``'s stdout as root over SSH: only ``host_key`` is trusted (RejectPolicy)."""
    assert sc.rack is not None
    with netns_socket(sc.rack.netns, (address, 22)) as sock:
        client = paramiko.SSHClient()
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
        kind, blob = host_key.split()[:2]
        pinned = paramiko.PKey.from_type_string(kind, base64.b64decode(blob))
        client.get_host_keys().add(address, kind, pinned)
        client.connect(
            address,
            sock=sock,
            username="root",
            pkey=paramiko.Ed25519Key.from_private_key(io.StringIO(pem)),
            allow_agent=False,
            look_for_keys=False,
            timeout=20,
        )
        try:
            _, out, _ = client.exec_command(command, timeout=60)
            return str(out.read().decode())
        finally:
            client.close()


def diagnose(sc: Scenario, tail: int = 1500) -> str:
    """The daemon's log tail and each guest's serial log tail, for assertion messages."""
    parts = [sc.serve_log()[-4000:]]
    for guest in sc.rack.guests if sc.rack else []:
        log = Path(guest.serial_log)
        text = log.read_text(errors="replace")[-tail:] if log.exists() else ""
        parts.append(f"--- {guest.name} serial\n{text}")
    return "\n".join(parts)


def allocate_with_cli(
    sc: Scenario, names: list[str], image: str, pub: str, *extra: str, timeout: float = 300
) -> list[dict[str, Any]]:
    """What a CI job runs, one per machine and all at once:
    ``provisiond allocate --name N --image I --ssh-key K --wait --json``."""
    argv = ["allocate", "--image", image, "--ssh-key", pub, "--lease", "2h", "--wait",
            "--timeout", str(int(timeout)), "--json", *extra]  # fmt: skip
    jobs = [
        subprocess.Popen(
            [*PROVISIOND, *argv, "--name", name],
            env=sc.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name in names
    ]
    allocations = []
    for job in jobs:
        out, err = job.communicate(timeout=timeout + 60)
        assert job.returncode == 0, f"{err}\n{diagnose(sc)}"
        allocations.append(json.loads(out))
    return allocations


def last_event(sc: Scenario, machine: str) -> int:
    with sc.api() as api:
        rows = api.get("/events", params={"machine": machine, "limit": 1}).json()
    return int(rows[0]["id"]) if rows else 0


def wait_event(
    sc: Scenario, machine: str, event: str, *, after: int, timeout: float
) -> dict[str, Any]:
    """The first ``event`` for ``machine`` with an id above ``after``."""
    deadline = time.monotonic() + timeout
    with sc.api() as api:
        while time.monotonic() < deadline:
            rows = api.get("/events", params={"machine": machine, "limit": 50}).json()
            for row in reversed(rows):
                if row["id"] > after and row["event"] == event:
                    return dict(row)
            time.sleep(1)
    raise AssertionError(f"no {event} event for {machine} in {timeout:.0f}s\n{diagnose(sc)}")


def wait_unlocked(sc: Scenario, name: str, timeout: float = 60) -> None:
    """The engine's step ends (and drops its DB lock) shortly after the state changes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if sc.machine(name)["lock_owner"] is None:
            return
        time.sleep(0.5)
    raise AssertionError(f"{name} still locked after {timeout:.0f}s: {sc.machine(name)}")


def watch_timeline(page: Any, *, timeout: float) -> list[tuple[str, list[str]]]:
    """What a console machine page's deploy timeline showed, each distinct state once
    (outcome, phases in order), until the deploy ends or ``timeout``; the page is never
    reloaded, so every change came from the live stream."""
    script = """() => { const svg = document.querySelector('svg.timeline');
        if (!svg) return null;
        return [svg.getAttribute('data-outcome'),
                Array.from(svg.querySelectorAll('g.phase')).map(g => g.dataset.phase)]; }"""
    seen: list[tuple[str, list[str]]] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = page.evaluate(script)
        if state is not None:
            snapshot = (str(state[0]), [str(p) for p in state[1]])
            if not seen or seen[-1] != snapshot:
                seen.append(snapshot)
            was_running = any(outcome == "running" for outcome, _ in seen)
            if was_running and snapshot[0] != "running":
                return seen
        time.sleep(0.3)
    return seen
