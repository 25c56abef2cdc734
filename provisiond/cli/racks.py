"""`provisiond racks ...`: racks and their power draw against their budgets."""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import quote

import typer

from provisiond.cli.common import JsonFlag, api, console, emit

app = typer.Typer(help="Racks: list, power draw against budget.", no_args_is_help=True)

_STATUS = {"ok": "ok", "over_90": "over 90%", "over_100": "OVER BUDGET", "": ""}


def _watts(value: Any) -> str:
    return "" if value is None else f"{value} W"


@app.command("list")
def list_racks(as_json: JsonFlag = False) -> None:
    """Racks with their measured draw, nameplate (declared) watts, budget and verdict."""
    with api() as client:
        racks = client.get("/racks")
    emit(
        racks,
        as_json,
        columns=("rack", "site", "measured", "declared", "budget", "status"),
        row=lambda r: (
            r["name"],
            r["site"],
            _watts(r.get("measured_watts")),
            _watts(r.get("declared_watts")),
            _watts(r["power_budget_watts"]),
            _STATUS.get(r.get("budget_status") or "", r.get("budget_status")),
        ),
    )


@app.command("power")
def power(
    rack: Annotated[str | None, typer.Argument(help="One rack; all racks when left out")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Each machine's draw now and where it comes from, per rack.

    Sources: pdu (outlet reading), bmc (BMC reading), off (no reading, known off: 0 W),
    declared (no reading: the machine's declared power_watts counts).
    """
    with api() as client:
        names = [rack] if rack else [r["name"] for r in client.get("/racks")]
        views = [client.get(f"/racks/{quote(name, safe='')}/power") for name in names]
    if as_json:
        emit(views if rack is None else views[0], True)
        return
    for view in views:
        counted = ", ".join(f"{n} {source}" for source, n in sorted(view["counted"].items()))
        budget = view["budget_watts"]
        head = f"rack {view['rack']}: {view['measured_watts']} W"
        head += f" of {budget} W budget" if budget is not None else " (no budget)"
        status = _STATUS.get(view["budget_status"], view["budget_status"])
        head += f", {status}" if status else ""
        head += f"; nameplate {view['declared_watts']} W; counted: {counted or 'no machines'}"
        emit(
            view["machines"],
            False,
            columns=("machine", "power", "watts", "source", "declared", "read at"),
            title=None,
            row=lambda m: (
                m["name"],
                m["power_state"],
                _watts(m["watts"]),
                m["source"],
                _watts(m["declared_watts"]),
                m["measured_at"] or "",
            ),
        )
        console.print(head, highlight=False, markup=False)
