"""`provisiond allocate --wait --json`, `release` and `allocations list` against a real daemon.

The daemon runs with its scheduler and deploy engine. The machines have no BMC, so
the engine waits for a callback after asking for a manual power-cycle; the test
plays the booted OS and agent by moving the machine to ``active`` in the database
(``booted`` and ``ready`` in one transaction, with a host key and an address), as
the callback and the first heartbeat would. Release then runs through the real
engine and the machine comes back ``available``.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlmodel import select

from provisiond import lifecycle
from provisiond.client import ApiError, Client
from provisiond.db import Database
from provisiond.lifecycle import Ev
from provisiond.models import Allocation, Deployment, Machine
from tests.support.allocations import KEY, add_image, add_machines, machine_state
from tests.support.daemon import PROVISIOND, Daemon, cli
from tests.support.procs import stop

HOST_KEY = KEY.rsplit(" ", 1)[0]


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[tuple[Daemon, Database, dict[str, str]]]:
    daemon = Daemon(tmp_path / "data")
    daemon.prepare()
    db = Database(f"sqlite:///{tmp_path / 'data' / 'provisiond.db'}")
    add_image(db)
    add_machines(db, [{"name": "node1", "cpus": 2}, {"name": "node2", "cpus": 4}])
    result = cli("token", "create", "--name", "ci-job", "--role", "ci", env=daemon.env)
    assert result.returncode == 0, result.stderr
    env = {**daemon.env, "PROVISIOND_TOKEN": result.stdout.strip().splitlines()[-1]}
    daemon.start()
    try:
        yield daemon, db, env
    finally:
        daemon.stop()
        db.dispose()


def _play_os_and_agent(db: Database, name: str, deadline_s: float = 20) -> None:
    """Once ``name`` is deploying: the OS calls back and the agent heartbeats."""
    deadline = time.monotonic() + deadline_s
    while machine_state(db, name) != "deploying":
        assert time.monotonic() < deadline, f"{name} never started deploying"
        time.sleep(0.1)
    with db.transaction() as session:
        machine = session.exec(select(Machine).where(Machine.name == name)).one()
        record = session.exec(
            select(Deployment).where(Deployment.machine_id == machine.id, Deployment.outcome == "")
        ).one()
        record.address = "127.0.0.1"
        machine.ssh_host_key = HOST_KEY
        session.add_all([record, machine])
        lifecycle.advance(session, machine, Ev.BOOTED, actor="test-os")
        lifecycle.advance(session, machine, Ev.READY, actor="test-agent")


def test_allocate_wait_json_then_release(
    daemon: tuple[Daemon, Database, dict[str, str]], tmp_path: Path
) -> None:
    _, db, env = daemon
    key_file = tmp_path / "id.pub"
    key_file.write_text(KEY + "\n")
    args = ["allocate", "--image", "debian-12", "--arch", "x86_64", "--min-cpus", "2",
            "--ssh-key", str(key_file), "--lease", "2h", "--wait", "--timeout", "60",
            "--json"]  # fmt: skip
    proc = subprocess.Popen(
        [*PROVISIOND, *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        _play_os_and_agent(db, "node1")  # best fit: the 2-CPU machine
        out, err = proc.communicate(timeout=60)
    finally:
        stop(proc)
    assert proc.returncode == 0, err
    ready = json.loads(out)
    assert ready["state"] == "ready"
    assert ready["machine"] == "node1"
    assert ready["address"] == "127.0.0.1"
    assert ready["ssh_user"] == "root"
    assert ready["host_key_fingerprint"].startswith("SHA256:")
    assert "deploying" in err  # progress went to stderr

    listed = cli("allocations", "list", "--json", env=env)
    assert listed.returncode == 0, listed.stderr
    assert [a["id"] for a in json.loads(listed.stdout)] == [ready["id"]]
    table = cli("allocations", "list", env={**env, "COLUMNS": "250"})
    assert ready["id"] in table.stdout and "ready" in table.stdout

    released = cli("release", ready["id"], env=env)
    assert released.returncode == 0, released.stderr
    assert "released" in released.stdout
    deadline = time.monotonic() + 20
    while machine_state(db, "node1") != "available":  # the engine's release pass
        assert time.monotonic() < deadline, machine_state(db, "node1")
        time.sleep(0.2)


def test_allocate_errors_are_clear(
    daemon: tuple[Daemon, Database, dict[str, str]], tmp_path: Path
) -> None:
    _, db, env = daemon
    key_file = tmp_path / "id.pub"
    key_file.write_text(KEY)
    base = ["allocate", "--image", "debian-12", "--ssh-key", str(key_file)]
    impossible = cli(*base, "--min-cpus", "64", env=env)
    assert impossible.returncode == 1
    assert "at least 64 CPUs" in impossible.stderr
    assert "hint:" in impossible.stderr
    assert "Traceback" not in impossible.stderr

    bad_key = cli("allocate", "--image", "debian-12", "--ssh-key", "/nonexistent.pub", env=env)
    assert bad_key.returncode == 1
    assert "cannot read SSH public key" in bad_key.stderr

    not_pair = cli(*base, "--root-device", "ssd", env=env)
    assert not_pair.returncode == 1 and "KEY=VALUE" in not_pair.stderr
    unknown = cli(*base, "--root-device", "colour=blue", env=env)
    assert unknown.returncode == 1 and "colour" in unknown.stderr
    assert "Traceback" not in unknown.stderr

    # Both machines taken: a third request waits, and --timeout gives it back.
    hints = ["--root-device", "size=>= 1", "--root-device", "rotational=false"]
    for name in ("node1", "node2"):
        held = cli(*base, "--name", name, "--json", *hints, env=env)
        assert json.loads(held.stdout)["state"] == "deploying", held.stderr
    with db.read_session() as session:
        stored = {a.root_device["size"] for a in session.exec(select(Allocation)).all()}
        assert stored == {">= 1"}
    waited = cli(*base, "--wait", "--timeout", "1", "--json", env=env)
    assert waited.returncode == 1
    assert "not ready after 1s" in waited.stderr
    assert json.loads(waited.stdout)["state"] == "released"
    missing = cli("release", "no-such-id", env=env)
    assert missing.returncode == 1
    assert "no allocation" in missing.stderr


def test_python_client_context_manager_releases(
    daemon: tuple[Daemon, Database, dict[str, str]],
) -> None:
    server, db, env = daemon
    player = threading.Thread(target=_play_os_and_agent, args=(db, "node2"))
    player.start()
    seen: list[str] = []
    try:
        with Client(server.url, env["PROVISIOND_TOKEN"]) as client:
            with client.allocate(
                image="debian-12",
                min_cpus=4,
                ssh_keys=[KEY],
                lease="30m",
                idempotency_key="job-1",
                timeout=60,
                on_change=lambda a: seen.append(a.state),
            ) as machine:
                assert machine.state == "ready"
                assert machine.machine == "node2"
                assert machine.address == "127.0.0.1"
                assert machine.host_key == HOST_KEY
                # A retried CI step with the same key gets the same allocation back.
                again = client.allocate(
                    image="debian-12", min_cpus=4, ssh_keys=[KEY], lease="30m",
                    idempotency_key="job-1", wait=False,
                )  # fmt: skip
                assert again.id == machine.id
            assert machine.state == "released"
            assert client.get_allocation(machine.id).state == "released"
            with pytest.raises(ApiError) as conflict:
                client.allocate(image="debian-12", ssh_keys=[KEY], idempotency_key="job-1")
            assert conflict.value.status == 409
    finally:
        player.join(timeout=30)
    assert seen[0] == "deploying" and seen[-1] == "ready"
