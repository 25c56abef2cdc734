"""`provisiond inventory apply|export` end to end: the real CLI against a real daemon (SQLite)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.support.daemon import Daemon, cli

pytestmark = pytest.mark.slow  # a daemon and a dozen CLI processes per test

EXAMPLE = Path(__file__).parents[2] / "inventory" / "example.yaml"


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    d = Daemon(tmp_path / "data", extra_env={"COLUMNS": "200"})
    d.prepare()
    d.start()
    try:
        yield d
    finally:
        d.stop()


def test_apply_dry_run_apply_export_round_trip(daemon: Daemon, tmp_path: Path) -> None:
    env = daemon.env
    dry = cli("inventory", "apply", str(EXAMPLE), "--dry-run", env=env)
    assert dry.returncode == 0, dry.stderr
    assert "6 to create, 0 to update, 0 unchanged, 0 to delete (dry run" in dry.stdout
    assert "vm3" in dry.stdout
    empty = cli("inventory", "export", env=env)
    assert empty.returncode == 0 and yaml.safe_load(empty.stdout)["machines"] == []

    first = cli("inventory", "apply", str(EXAMPLE), env=env)
    assert first.returncode == 0, first.stderr
    assert "6 to create, 0 to update, 0 unchanged, 0 to delete (applied)" in first.stdout
    again = cli("inventory", "apply", str(EXAMPLE), env=env)
    assert "0 to create, 0 to update, 6 unchanged, 0 to delete (applied)" in again.stdout

    out = tmp_path / "exported.yaml"
    exported = cli("inventory", "export", "-o", str(out), env=env)
    assert exported.returncode == 0, exported.stderr
    data = yaml.safe_load(out.read_text())
    assert [m["name"] for m in data["machines"]] == ["vm1", "vm2", "vm3"]
    assert "password:" not in out.read_text()
    assert cli("inventory", "export", env=env).stdout == out.read_text()
    back = cli("inventory", "apply", str(out), env=env)
    assert "6 unchanged" in back.stdout, back.stderr

    data["machines"] = data["machines"][:2]
    out.write_text(yaml.safe_dump(data))
    data["machines"][0]["u_position"] = 7
    out.write_text(yaml.safe_dump(data))
    moved = cli("inventory", "apply", str(out), "--dry-run", env=env)
    assert "vm1" in moved.stdout and "u_position 1 -> 7" in moved.stdout
    kept = cli("inventory", "apply", str(out), "--json", env=env)
    assert json.loads(kept.stdout)["summary"]["delete"] == 0
    pruned = cli("inventory", "apply", str(out), "--prune", "--json", env=env)
    assert pruned.returncode == 0, pruned.stderr
    plan = json.loads(pruned.stdout)
    assert plan["applied"] is True and plan["summary"]["delete"] == 1
    assert plan["changes"][-1] == {
        "action": "delete",
        "kind": "machine",
        "name": "vm3",
        "line": None,
        "fields": {},
    }


def test_problems_print_file_and_line_and_exit_non_zero(daemon: Daemon, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    text = EXAMPLE.read_text()
    text = text.replace("u_position: 2\n", "u_position: 1\n")  # vm2 onto vm1's unit
    text = text.replace("port: 16003, username: admin}", "port: 16003, usrname: admin}")
    bad.write_text(text)
    lines = text.splitlines()
    vm2 = lines.index("  - name: vm2") + 1
    typo = next(i for i, line in enumerate(lines, 1) if "usrname" in line)

    r = cli("inventory", "apply", str(bad), env=daemon.env)
    assert r.returncode == 1
    assert f"{bad}:{vm2}: machines[1]: machine vm2 at U1-U1 overlaps machine vm1" in r.stderr
    assert f"{bad}:{typo}: machines[2].bmc.usrname: unknown key 'usrname'" in r.stderr
    assert f"{bad}: 2 problem(s)" in r.stderr and "nothing was written" in r.stderr
    assert yaml.safe_load(cli("inventory", "export", env=daemon.env).stdout)["racks"] == []

    missing = cli("inventory", "apply", str(tmp_path / "nope.yaml"), env=daemon.env)
    assert missing.returncode == 1 and "does not exist" in missing.stderr

    syntax = tmp_path / "syntax.yaml"
    syntax.write_text("racks:\n  - {name: r1\n")
    r = cli("inventory", "apply", str(syntax), env=daemon.env)
    assert r.returncode == 1 and f"{syntax}:3: (file): YAML syntax error" in r.stderr


def test_password_env_comes_from_the_cli_environment(daemon: Daemon, tmp_path: Path) -> None:
    secret = "s3cret-from-env"
    file = tmp_path / "pw.yaml"
    file.write_text(
        EXAMPLE.read_text().replace(
            "port: 16001, username: admin}", "port: 16001, username: admin, password_env: VM1_PW}"
        )
    )
    unset = cli("inventory", "apply", str(file), env=daemon.env)
    assert unset.returncode == 1
    assert "environment variable VM1_PW is not set" in unset.stderr

    r = cli("inventory", "apply", str(file), "--json", env={**daemon.env, "VM1_PW": secret})
    assert r.returncode == 0, r.stderr
    assert secret not in r.stdout
    vm1 = next(c for c in json.loads(r.stdout)["changes"] if c["name"] == "vm1")
    assert vm1["fields"]["bmc.password"] == {"from": None, "to": "(new, hidden)"}
    again = cli("inventory", "apply", str(file), env={**daemon.env, "VM1_PW": secret})
    assert "6 unchanged" in again.stdout
    exported = cli("inventory", "export", env=daemon.env).stdout
    assert secret not in exported and "password_env" not in exported
