"""Commands that run on the daemon's host and use the DB directly: serve, db, token."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

import typer

import provisiond.tokens as tokens
from provisiond import logging as plog
from provisiond.auth import Role, create_token, parse_expiry
from provisiond.cli.common import ConfigOpt, JsonFlag, console, emit, handled, settings
from provisiond.db import Database
from provisiond.models import utcnow

db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
token_app = typer.Typer(help="API tokens (run on the daemon's host).", no_args_is_help=True)


def serve(
    config: ConfigOpt = None,
    host: Annotated[
        str | None,
        typer.Option("--host", help="Address to listen on; wins over listen_host and its env."),
    ] = None,
    port: Annotated[
        int | None,
        typer.Option(
            "--port", min=1, max=65535, help="Port to listen on; wins over listen_port and its env."
        ),
    ] = None,
) -> None:
    """Run the daemon: REST API, boot routes, scheduler. Stops cleanly on SIGTERM/SIGINT."""
    from provisiond import daemon

    flags = {"listen_host": host, "listen_port": port}
    cfg = settings(config, **{key: value for key, value in flags.items() if value is not None})
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


def _open(config: ConfigOpt) -> Database:
    cfg = settings(config)
    with handled():
        db = Database(cfg.db_url, busy_timeout_s=cfg.sqlite_busy_timeout_s)
        db.check_schema()
        return db
    raise AssertionError("unreachable")


@token_app.command("create")
def token_create(
    name: Annotated[str, typer.Option("--name", "-n", help="A unique name, e.g. ci-runner-1")],
    role: Annotated[str, typer.Option("--role", "-r", help="admin, operator or ci")] = "ci",
    quota: Annotated[
        int | None,
        typer.Option("--quota", min=0, help="Most machines this token may hold at once"),
    ] = None,
    expires: Annotated[
        str | None,
        typer.Option(
            "--expires",
            help="Refuse the token after this: 90d, 12h, 2w (s, m, h, d, w) or a date "
            "2027-01-31 (UTC). Default: never.",
        ),
    ] = None,
    config: ConfigOpt = None,
    as_json: JsonFlag = False,
) -> None:
    """Create a token and print it once; only its hash is stored."""
    db = _open(config)
    with handled():
        Role.parse(role)
        expires_at = None if expires is None else parse_expiry(expires)
        with db.transaction() as session:
            row, clear = create_token(
                session, name=name, role=role, quota_machines=quota, expires_at=expires_at
            )
        db.dispose()
    if as_json:
        when = None if row.expires_at is None else row.expires_at.isoformat()
        emit({"name": row.name, "role": row.role, "expires_at": when, "token": clear}, True)
    else:
        until = "" if row.expires_at is None else f", expires {_when(row.expires_at)}"
        console.print(f"token {row.name} ({row.role}{until}); it is shown only this once:")
        print(clear)


def _when(at: datetime | None) -> str:
    return "" if at is None else f"{at:%Y-%m-%d %H:%M:%S} UTC"


def _row(token: dict[str, Any]) -> list[Any]:
    expires = token["expires_at"]
    expired = expires is not None and expires <= utcnow()
    return [
        token["name"],
        token["role"],
        token["prefix"],
        token["quota_machines"],
        _when(token["created_at"]),
        _when(token["last_used_at"]),
        "never" if expires is None else _when(expires) + (" (expired)" if expired else ""),
    ]


@token_app.command("list")
def token_list(config: ConfigOpt = None, as_json: JsonFlag = False) -> None:
    """List tokens with their role, last use and expiry (never the tokens themselves)."""
    db = _open(config)
    with handled():
        with db.read_session() as session:
            rows = tokens.list_tokens(session)
        db.dispose()
    if as_json:
        emit([t.model_dump(mode="json") for t in rows], True)
        return
    columns = ("name", "role", "prefix", "quota", "created", "last used", "expires")
    emit([t.model_dump() for t in rows], False, columns=columns, title=f"{len(rows)} token(s)",
         row=_row)  # fmt: skip
