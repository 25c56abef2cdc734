"""`provisiond pdus status|outlet|verify`: PDUs with a driver, through the API."""

from __future__ import annotations

from typing import Annotated, Literal
from urllib.parse import quote

import typer

from provisiond.cli.common import JsonFlag, api, console, emit, fail

app = typer.Typer(help="PDU outlets: read, switch, and prove the outlet map.", no_args_is_help=True)


def _path(pdu: str) -> str:
    return f"/pdus/{quote(pdu, safe='')}"


@app.command("status")
def status(
    pdu: Annotated[str, typer.Argument(help="The PDU's name")], as_json: JsonFlag = False
) -> None:
    """Read the PDU now: each outlet's state and watts, and the total."""
    with api() as client:
        body = client.get(f"{_path(pdu)}/status")
    if as_json:
        emit(body, True)
        return
    if not body["reachable"]:
        fail(body["error"], hint=body["hint"])
    console.print(f"{body['pdu']}: {body['power_watts']} W")
    emit(body["outlets"], False, columns=("number", "state", "power_watts"))


@app.command("outlet")
def outlet(
    pdu: Annotated[str, typer.Argument(help="The PDU's name")],
    number: Annotated[int, typer.Argument(help="The outlet number")],
    action: Annotated[Literal["on", "off", "cycle"], typer.Argument(help="on, off or cycle")],
    as_json: JsonFlag = False,
) -> None:
    """Switch one outlet (under the lock of the machine it feeds), confirmed by read-back."""
    with api() as client:
        body = client.post(f"{_path(pdu)}/outlets/{number}/power", {"action": action})
    if as_json:
        emit(body, True)
        return
    feeds = f" (feeds {body['machine']})" if body["machine"] else ""
    console.print(f"{pdu}/{number}{feeds}: {body['state']} in {body['seconds']}s")


@app.command("verify")
def verify(
    pdu: Annotated[str, typer.Argument(help="The PDU's name")],
    settle: Annotated[
        float, typer.Option(help="Seconds to wait for the expected BMC to go dark")
    ] = 10.0,
    recover: Annotated[float, typer.Option(help="Seconds to wait for it to answer again")] = 60.0,
    as_json: JsonFlag = False,
) -> None:
    """Prove the outlet map: cut each mapped outlet of a machine not in use and check
    that exactly its machine's BMC stops answering. Exits 1 when any outlet fails."""
    body = {"settle_s": settle, "recover_s": recover}
    with api() as client:
        # Each outlet may take settle + recover seconds: no HTTP timeout below an hour.
        verdicts = client.request("POST", f"{_path(pdu)}/verify", json=body, timeout=3600)
    emit(verdicts, as_json, columns=("outlet", "machine", "result", "detail"))
    if any(v["result"] == "fail" for v in verdicts):
        raise typer.Exit(1)
