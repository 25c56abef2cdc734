"""`provisiond credentials add|list|delete`: the credential sets discovery logs in with."""

from __future__ import annotations

import sys
from typing import Annotated
from urllib.parse import quote

import typer

from provisiond.cli.common import JsonFlag, api, console, emit, fail

app = typer.Typer(help="BMC credential sets for discovery.", no_args_is_help=True)


@app.command("add")
def add(
    name: Annotated[str, typer.Argument(help="A name, e.g. dc1-default")],
    username: Annotated[str, typer.Option("--username", "-u", help="BMC user")],
    password_stdin: Annotated[
        bool, typer.Option("--password-stdin", help="Read the password from standard input")
    ] = False,
    as_json: JsonFlag = False,
) -> None:
    """Store a credential set; the password is read from stdin and never printed."""
    if not password_stdin:
        fail(
            "the password must come from standard input",
            hint='echo "$BMC_PASSWORD" | provisiond credentials add NAME -u USER --password-stdin',
        )
    password = sys.stdin.readline().rstrip("\r\n")
    if not password:
        fail("no password on standard input", hint="pipe the password into the command")
    with api() as client:
        row = client.post(
            "/credentials", {"name": name, "username": username, "password": password}
        )
    if as_json:
        emit(row, True)
    else:
        console.print(f"credential set {row['name']} stored (user {row['username']})")


@app.command("list")
def list_(as_json: JsonFlag = False) -> None:
    """List credential sets (never their passwords)."""
    with api() as client:
        rows = client.get("/credentials")
    emit(rows, as_json, columns=("name", "username", "password_set", "created_at"))


@app.command("delete")
def delete(name: Annotated[str, typer.Argument(help="The credential set")]) -> None:
    """Delete a credential set that no BMC uses."""
    with api() as client:
        client.delete(f"/credentials/{quote(name, safe='')}")
    console.print(f"credential set {name} deleted")
