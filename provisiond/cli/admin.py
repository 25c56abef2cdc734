"""Commands that run on the daemon's host and use the DB directly: serve, db, token."""

from __future__ import annotations

from typing import Annotated

import typer

from provisiond import logging as plog
from provisiond.auth import Role, create_token
from provisiond.cli.common import ConfigOpt, JsonFlag, console, emit, handled, settings
from provisiond.db import Database

db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
token_app = typer.Typer(help="API tokens (run on the daemon's host).", no_args_is_help=True)


def serve(config: ConfigOpt = None) -> None:
    """Run the daemon: REST API, boot routes, scheduler. Stops cleanly on SIGTERM/SIGINT."""
    from provisiond import daemon

    cfg = settings(config)
    plog.configure(cfg.log_level, cfg.log_file)
    with handled():
        services = daemon.build_services(cfg)
        daemon.run(services)


@db_app.command("upgrade")
def db_upgrade(config: ConfigOpt = None) -> None:
    """Create or migrate the schema to the newest revision."""
    cfg = settings(config)
    with handled():
        db = Database(cfg.db_url, busy_timeout_s=cfg.sqlite_busy_timeout_s)
        before, after = db.upgrade()
        db.dispose()
    console.print(f"database {db.safe_url}: {before or 'empty'} -> {after}")


@token_app.command("create")
def token_create(
    name: Annotated[str, typer.Option("--name", "-n", help="A unique name, e.g. ci-runner-1")],
    role: Annotated[str, typer.Option("--role", "-r", help="admin, operator or ci")] = "ci",
    quota: Annotated[
        int | None, typer.Option("--quota", help="Most machines this token may hold at once")
    ] = None,
    config: ConfigOpt = None,
    as_json: JsonFlag = False,
) -> None:
    """Create a token and print it once; only its hash is stored."""
    cfg = settings(config)
    with handled():
        db = Database(cfg.db_url, busy_timeout_s=cfg.sqlite_busy_timeout_s)
        db.check_schema()
        Role.parse(role)
        with db.transaction() as session:
            row, clear = create_token(session, name=name, role=role, quota_machines=quota)
        db.dispose()
    if as_json:
        emit({"name": row.name, "role": row.role, "token": clear}, True)
    else:
        console.print(f"token {row.name} ({row.role}); it is shown only this once:")
        print(clear)
