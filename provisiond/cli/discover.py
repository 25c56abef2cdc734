"""`provisiond discover NETWORK... [--ports P] [--credentials NAME...]`."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from provisiond.cli.common import JsonFlag, api, console, emit, fail


def discover(
    networks: Annotated[list[str], typer.Argument(help="CIDR networks, e.g. 10.1.0.0/22")],
    ports: Annotated[
        str, typer.Option("--ports", "-p", help="623, a list 623,664, or a range 16000-16999")
    ] = "623",
    credentials: Annotated[
        list[str] | None,
        typer.Option("--credentials", "-c", help="Credential sets to try, in order (default all)"),
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Sweep BMC networks over IPMI, then enroll new machines and update known ones."""
    body = {"networks": networks, "ports": ports, "credentials": credentials or None}
    result: dict[str, Any] | None = None
    with (
        api() as client,
        Progress(
            TextColumn("{task.description}", markup=False),
            BarColumn(),
            TextColumn("{task.completed}/{task.total}", markup=False),
            TimeElapsedColumn(),
            console=console,
            transient=True,
            disable=as_json,
        ) as progress,
    ):
        task = progress.add_task("probing", total=None)
        for line in client.stream_lines("POST", "/discovery", json=body, params={"stream": "true"}):
            event = json.loads(line)
            if "error" in event:
                err = event["error"]
                fail(err["message"], err.get("hint", ""))
            if "result" in event:
                result = event["result"]
                break
            step = event["progress"]
            if step["phase"] == "probe":
                progress.update(task, description=f"probing {step['targets']} targets")
            elif step["phase"] == "probed":
                progress.update(
                    task, description="logging in", total=step["responders"], completed=0
                )
            elif step["phase"] == "login":
                progress.update(task, completed=step["done"])
    if result is None:
        fail("the sweep ended without a result", hint="see the daemon's log")
    if as_json:
        emit(result, True)
        return
    secs = result["seconds"]
    console.print(
        f"{result['targets']} targets, {result['responders']} answered "
        f"(probe {secs.get('probe', 0)}s, login {secs.get('login', 0)}s): "
        f"{len(result['enrolled'])} enrolled, {len(result['updated'])} updated, "
        f"{len(result['unchanged'])} unchanged, {len(result['failed'])} failed",
        highlight=False,
    )
    if result["failed"]:
        emit(result["failed"], False, columns=("bmc", "reason", "hint"), title="failed")
