"""Every CLI table and detail view prints API data as written: no markup, no emoji codes.

The data is stored straight into the daemon's database (names the API would refuse
can still arrive through discovery, agents or older versions), then each view runs as
a real ``provisiond`` process against a real daemon, its output piped as in a script.
Each hostile value must appear whole and literal; control characters (an ANSI colour
escape here) must show escaped as ``\\x1b``, never reach the terminal raw.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TypeVar

import pytest
import typer
from sqlmodel import select

from provisiond.auth import create_token
from provisiond.cli.common import handled
from provisiond.client import ApiError
from provisiond.db import Database
from provisiond.lifecycle import Ev
from provisiond.models import (
    Allocation,
    Bmc,
    CredentialSet,
    Deployment,
    Event,
    Image,
    Machine,
    Nic,
    Pdu,
    Rack,
    Switch,
    utcnow,
)
from tests.support.allocations import KEY, add_machines, fire
from tests.support.daemon import Daemon, cli

pytestmark = pytest.mark.slow  # a daemon and some twenty CLI processes

ESC = "\x1b"
#: Markup tags (one unbalanced, which made rich raise MarkupError), emoji codes,
#: an ANSI colour escape and non-ASCII text, all in one value.
HOSTILE = f"[/x] [bold]b[/bold] :ab: :cd: :smile: {ESC}[31mred{ESC}[0m Müller 東京"
MACHINE = f"m-[bold]:ab:cd: Müller 東京 {ESC}[31m"  # no "/": it is used in URL paths
LONG = "long" + "-very-long" * 20 + "-end"  # wider than any terminal
MAC = "52:54:00:ab:cd:01"  # printed as 52:54:00🆎cd:01 when emoji codes were on
TOKEN = f"ci [/x] :smile: {ESC}[1m東京"
#: Emoji that rich substituted for :ab:, :cd: and :smile:.
EMOJI = ("\U0001f18e", "\U0001f4bf", "\U0001f604")
T = TypeVar("T")


def shown(value: str) -> str:
    """How a value must look on screen: itself, with control characters escaped."""
    return value.replace(ESC, "\\x1b")


@dataclass
class Ids:
    failed: str
    ready: str


@contextmanager
def _daemon_with(tmp_path: Path, store: Callable[[Database], T]) -> Iterator[tuple[Daemon, T]]:
    d = Daemon(tmp_path / "data")
    d.prepare()
    db = Database(f"sqlite:///{tmp_path / 'data' / 'provisiond.db'}")
    try:
        stored = store(db)
    finally:
        db.dispose()
    d.start()
    try:
        yield d, stored
    finally:
        d.stop()


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[tuple[Daemon, Ids]]:
    with _daemon_with(tmp_path, _store_hostile_data) as started:
        yield started


def _store_hostile_data(db: Database) -> Ids:
    add_machines(
        db,
        [
            {
                "name": MACHINE,
                "vendor": "[/x] Acme",
                "model": HOSTILE,
                "serial": f":smile:{ESC}]0;title{ESC}\\",
                "tags": [":ab:", "[bold]tag"],
                "ssh_host_key": KEY,
            }
        ],
    )
    add_machines(db, [{"name": LONG}], state="enrolled")
    fire(db, LONG, Ev.INSPECT, Ev.FAIL, reason=HOSTILE)
    fire(db, MACHINE, Ev.ALLOCATE, Ev.DEPLOY, Ev.BOOTED, Ev.READY)
    with db.transaction() as session:
        machine = session.exec(select(Machine).where(Machine.name == MACHINE)).one()
        assert machine.id is not None
        session.add(Nic(machine_id=machine.id, mac=MAC, name=":cd:", ip_address="10.0.0.9"))
        session.add(Bmc(machine_id=machine.id, address="10.0.3.17", username=f"[red]{ESC}[2J:ab:"))
        image = Image(
            name=f"img [/x] :cd: {ESC}[31m",
            kernel=":cd:vmlinuz",
            initrd="[bold]initrd",
            os_template=HOSTILE,
        )
        session.add(image)
        session.add(
            Deployment(
                machine_id=machine.id,
                address=f"10.0.0.9 [/x]{ESC}[31m",
                outcome="failed",
                failure_reason=HOSTILE,
                finished_at=utcnow(),
            )
        )
        token, _ = create_token(session, name=TOKEN, role="ci")
        session.flush()
        assert token.id is not None and image.id is not None
        failed = Allocation(
            owner_token_id=token.id, image_id=image.id, state="failed", failure_reason=HOSTILE
        )
        ready = Allocation(
            owner_token_id=token.id,
            image_id=image.id,
            machine_id=machine.id,
            state="ready",
            ssh_user=":smile:",
            expires_at=utcnow() + timedelta(hours=1),
        )
        session.add_all([failed, ready])
        session.add(
            Event(
                machine_name=MACHINE,
                kind="audit",
                event=":smile:",
                actor=f"token:{TOKEN}",
                message=f"{HOSTILE} {LONG}",
            )
        )
        session.add(CredentialSet(name=f"dc1 [/x] :ab: {ESC}[31m", username=HOSTILE,
                                  secret_encrypted="x"))  # fmt: skip
        return Ids(failed=failed.uuid, ready=ready.uuid)


def _store_hostile_inventory(db: Database) -> None:
    with db.transaction() as session:
        session.add(Rack(name=f"rack [/x] :cd: {ESC}[5m", site=":ab:"))
        session.add(Rack(name="r1", site=f"[/x]:cd:{ESC}[1m"))
        session.add(Switch(name=f"sw [bold] :smile: {ESC}[31m 東京"))
        session.add(Pdu(name=f"pdu [/x] :ab: Müller {ESC}[0m"))


def run(daemon: Daemon, *args: str, code: int = 0) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in daemon.env.items() if k not in ("COLUMNS", "LINES")}
    result = cli(*args, env=env)
    out = result.stdout + result.stderr
    assert result.returncode == code, out
    assert "Traceback" not in out and "MarkupError" not in out, out
    assert ESC not in out, f"a raw escape reached the terminal: {out!r}"
    assert not any(e in out for e in EMOJI), f"emoji in {out!r}"
    return result


def test_every_view_prints_data_literally(daemon: tuple[Daemon, Ids], tmp_path: Path) -> None:
    d, ids = daemon

    out = run(d, "machines", "list").stdout
    for value in (MACHINE, LONG, ":ab:, [bold]tag", HOSTILE):
        assert shown(value) in out, (value, out)

    out = run(d, "machines", "show", MACHINE).stdout
    for value in (
        f"machine {MACHINE}",
        f"[/x] Acme {HOSTILE}",
        f":smile:{ESC}]0;title{ESC}\\",
        ":ab:, [bold]tag",
        f"[red]{ESC}[2J:ab:@10.0.3.17",
        MAC,
        ":cd:",
        HOSTILE,
    ):
        assert shown(value) in out, (value, out)

    out = run(d, "events", "--kind", "audit").stdout
    for value in (MACHINE, ":smile:", f"token:{TOKEN}", f"{HOSTILE} {LONG}"):
        assert shown(value) in out, (value, out)
    out = run(d, "events", "--kind", "transition").stdout
    assert shown(HOSTILE) in out and shown(LONG) in out, out

    out = run(d, "allocations", "list").stdout
    for value in (TOKEN, MACHINE, HOSTILE, f"10.0.0.9 [/x]{ESC}[31m"):
        assert shown(value) in out, (value, out)
    out = run(d, "allocations", "show", ids.failed).stdout
    assert f"allocation {ids.failed}: failed" in out and shown(f"reason: {HOSTILE}") in out
    out = run(d, "allocations", "show", ids.ready).stdout
    for value in (f"ready: {MACHINE}", f"address      10.0.0.9 [/x]{ESC}[31m", "ssh :smile:@"):
        assert shown(value) in out, (value, out)

    out = run(d, "images", "list").stdout
    for value in (f"img [/x] :cd: {ESC}[31m", ":cd:vmlinuz", "[bold]initrd", HOSTILE):
        assert shown(value) in out, (value, out)
    bad = run(d, "images", "verify", code=1).stderr
    assert shown(f"FAILED img [/x] :cd: {ESC}[31m") in bad, bad
    assert shown(f"1 image(s) failed verification: img [/x] :cd: {ESC}[31m") in bad, bad

    out = run(d, "credentials", "list").stdout
    assert shown(f"dc1 [/x] :ab: {ESC}[31m") in out and shown(HOSTILE) in out, out

    out = run(d, "token", "list").stdout
    assert shown(TOKEN) in out, out

    # An inventory problem names the machine as it is.
    file = tmp_path / "inventory.yaml"
    file.write_text("version: 1\n")
    err = run(d, "inventory", "apply", str(file), "--prune", "--dry-run", code=1).stderr
    assert shown(f"--prune cannot delete machine {MACHINE}: it is active") in err, err


def test_inventory_plan_prints_racks_switches_pdus_literally(tmp_path: Path) -> None:
    """Racks, switches and PDUs have no list command; the inventory plan shows them."""
    with _daemon_with(tmp_path, _store_hostile_inventory) as (d, _):
        file = tmp_path / "inventory.yaml"
        file.write_text('version: 1\nracks:\n  - {name: r1, site: "東京 :smile:"}\n')
        out = run(d, "inventory", "apply", str(file), "--prune", "--dry-run").stdout
        for value in (
            f"rack [/x] :cd: {ESC}[5m",
            f"sw [bold] :smile: {ESC}[31m 東京",
            f"pdu [/x] :ab: Müller {ESC}[0m",
            f"site [/x]:cd:{ESC}[1m -> 東京 :smile:",
        ):
            assert shown(value) in out, (value, out)
        file.write_text('version: 1\nracks:\n  - {name: r2, "\\e[31m[/x]:ab:": 1, "[bold]": 2}\n')
        err = run(d, "inventory", "apply", str(file), code=1).stderr
        assert shown(f"racks[0].{ESC}[31m[/x]:ab:") in err and "racks[0].[bold]" in err, err


def test_errors_and_hints_print_literally(daemon: tuple[Daemon, Ids]) -> None:
    d, _ = daemon
    missing = f"nope [bold] :ab: {ESC}[31m"  # no "/": names are URL path segments
    err = run(d, "machines", "show", missing, code=1).stderr
    assert re.search(r"error: no machine named .*\[bold\] :ab: .*\[31m", err), err
    assert "hint:" in err
    err = run(d, "allocations", "show", "[bold]x :cd:", code=1).stderr
    assert "no allocation '[bold]x :cd:' [not_found, HTTP 404]" in err, err
    assert "hint: 'provisiond allocations list'" in err
    err = run(d, "machines", "power", MACHINE, "[/x]:smile:", code=1).stderr
    assert "unknown power action '[/x]:smile:'" in err, err


def test_every_problem_of_an_api_error_prints_literally(capsys: pytest.CaptureFixture[str]) -> None:
    """The lines ``handled()`` prints for the second and later problems of a 422."""
    problems = [
        {"path": "body.name", "message": "first"},
        {"path": f"body.{HOSTILE}", "line": 3, "message": f"unknown key {HOSTILE}"},
    ]
    with pytest.raises(typer.Exit), handled():
        raise ApiError(422, "validation_failed", "first", hint=HOSTILE, problems=problems)
    err = capsys.readouterr().err
    assert shown(f"  line 3: body.{HOSTILE}: unknown key {HOSTILE}") in err, err
    assert shown(f"hint: {HOSTILE}") in err and ESC not in err, err
