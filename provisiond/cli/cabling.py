"""`provisiond cabling check|export|import`: planned switch ports against LLDP, PTM style.

``check`` runs the check on the daemon and prints a table like ``ptmctl``; it exits 1
when a port fails, so a script or CI job can gate on it. ``export`` prints the plan
as a PTM ``topology.dot``; ``import`` applies one (all lines or none).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from provisiond.cli.common import JsonFlag, api, console, emit, fail, text

app = typer.Typer(help="Cabling: planned switch ports against LLDP.", no_args_is_help=True)

_STYLE = {"pass": "green", "fail": "bold red", "n/a": "yellow"}
#: Largest topology.dot the daemon takes.
MAX_BYTES = 1024 * 1024


def _expected(port: dict[str, Any]) -> str:
    if port["expected_switch"] is None:
        return "(not planned)"
    return f"{port['expected_switch']}/{port['expected_port']}"


def _actual(port: dict[str, Any]) -> str:
    switch = port["actual_switch"] or port["seen_system_name"] or port["seen_chassis_id"]
    name = port["actual_port"] or port["seen_port_id"] or port["seen_port_description"]
    if not switch and not name:
        return "(nothing seen)"
    return f"{switch or '?'}/{name or '?'}"


def _note(port: dict[str, Any]) -> str:
    if port["swapped_with"]:
        return f"swapped with {port['swapped_with']}"
    if port["planned_for"]:
        return f"that port is planned for {port['planned_for']}"
    return str(port["reason"]) if port["result"] == "n/a" else ""


@app.command("check")
def check(
    rack: Annotated[str | None, typer.Option("--rack", help="Only this rack")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Check every NIC's planned switch port against the LLDP neighbour it saw; exit 1
    when any port fails."""
    with api() as client:
        answer = client.post("/cabling/check", params={"rack": rack} if rack else None)
    if as_json:
        emit(answer, True)
    else:
        table = Table(header_style="bold", title=f"cabling (policy {answer['policy']})")
        for column in ("machine", "nic", "expected", "actual", "result", "note"):
            table.add_column(column, overflow="fold")
        for port in answer["ports"]:
            result = port["result"] or "-"
            cells = (port["machine"], port["nic"] or port["mac"], _expected(port), _actual(port))
            # Text cells: user data prints as written, the colour comes from the label only.
            table.add_row(
                *(text(c) for c in cells),
                text(result, _STYLE.get(result, "dim")),
                text(_note(port)),
            )
        console.print(table)
        for finding in answer["findings"]:
            console.print(text(finding["kind"] + ":", "bold red"), text(finding["message"]))
        counts = answer["counts"]
        console.print(text(f"{counts['pass']} pass, {counts['fail']} fail, {counts['n/a']} n/a"))
    if answer["counts"]["fail"]:
        raise typer.Exit(1)


@app.command("export")
def export() -> None:
    """Print the planned cabling as a PTM topology.dot (redirect it to a file)."""
    with api() as client:
        dot = client.request("GET", "/cabling/topology.dot")
    sys.stdout.write(str(dot))


@app.command("import")
def import_(
    file: Annotated[Path, typer.Argument(help="A PTM topology.dot ('-' for stdin)")],
) -> None:
    """Set each NIC's planned switch port from FILE, in one transaction."""
    try:
        body = sys.stdin.buffer.read() if str(file) == "-" else file.read_bytes()
    except OSError as exc:
        fail(f"cannot read {file}: {exc.strerror}", "give the path of a topology.dot file")
    if len(body) > MAX_BYTES:
        fail(f"{file} is {len(body)} bytes; the daemon takes up to {MAX_BYTES}", "split it")
    with api() as client:
        out = client.request(
            "PUT",
            "/cabling/topology.dot",
            content=body,
            headers={"Content-Type": "text/vnd.graphviz"},
        )
    for line in [*out["changed"], *out["unwired"], *out["skipped"]]:
        console.print(text(line))
    console.print(
        text(
            f"{len(out['changed'])} rewired, {len(out['unwired'])} unwired, "
            f"{out['unchanged']} unchanged, {len(out['skipped'])} skipped"
        )
    )
