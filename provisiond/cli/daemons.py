"""`provisiond daemons ...`: the daemons sharing this database, and draining one."""

from __future__ import annotations

from typing import Annotated
from urllib.parse import quote

import typer

from provisiond.cli.common import JsonFlag, api, console, emit

app = typer.Typer(help="Daemons on this database: list, drain.", no_args_is_help=True)


@app.command("list")
def list_daemons(as_json: JsonFlag = False) -> None:
    """Each daemon: state, heartbeat age, roles, and the machines it is working on."""
    with api() as client:
        rows = client.get("/daemons")
    emit(
        rows,
        as_json,
        columns=("daemon", "version", "state", "heartbeat", "roles", "machines", "api"),
        title=f"{len(rows)} daemon(s)",
        row=lambda d: (
            d["id"],
            d["version"],
            d["state"] if d["state"] != "live" else f"live (epoch {d['epoch']})",
            f"{d['heartbeat_age_s']:.1f} s ago",
            ", ".join(d["roles"]),
            ", ".join(d["machines"]) or "-",
            d["api_url"],
        ),
    )


@app.command("drain")
def drain(
    daemon_id: Annotated[str, typer.Argument(help="The daemon's id (host:pid:start)")],
    as_json: JsonFlag = False,
) -> None:
    """Hand a daemon's work to the others and stop it (as SIGUSR2 on its host does)."""
    with api() as client:
        row = client.post(f"/daemons/{quote(daemon_id, safe='')}/drain")
    if as_json:
        emit(row, True)
        return
    console.print(f"daemon {row['id']} is {row['state']}; it stops once its running steps end")
