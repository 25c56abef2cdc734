"""`provisiond events`."""

from __future__ import annotations

from typing import Annotated

import typer

from provisiond.cli.common import JsonFlag, api, emit


def events(
    machine: Annotated[str | None, typer.Option("--machine", "-m", help="Machine name")] = None,
    kind: Annotated[
        str | None, typer.Option("--kind", "-k", help="transition, audit, power, boot, ...")
    ] = None,
    since: Annotated[str | None, typer.Option("--since", help="ISO 8601 date-time")] = None,
    limit: Annotated[int, typer.Option("--limit", "-n", help="At most this many (1-1000)")] = 100,
    as_json: JsonFlag = False,
) -> None:
    """List events, newest first."""
    with api() as client:
        rows = client.get("/events", machine=machine, kind=kind, since=since, limit=limit)
    emit(
        rows,
        as_json,
        columns=("at", "machine", "kind", "event", "change", "actor", "message"),
        title=f"{len(rows)} event(s)",
        row=lambda e: (
            e["at"],
            e["machine"],
            e["kind"],
            e["event"],
            f"{e['from_state'] or '-'} -> {e['to_state']}" if e["to_state"] else "",
            e["actor"],
            e["message"],
        ),
    )
