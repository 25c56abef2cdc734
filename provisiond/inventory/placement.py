"""Rack placement rules shared by the API and inventory apply."""

from __future__ import annotations

from dataclasses import dataclass

from provisiond.errors import Problem


@dataclass(frozen=True)
class Placed:
    """Something that takes U positions: a machine, switch or PDU."""

    kind: str
    name: str
    u_position: int | None
    u_height: int
    path: str = ""
    line: int | None = None

    @property
    def units(self) -> range:
        if self.u_position is None or self.u_height < 1:
            return range(0)
        return range(self.u_position, self.u_position + self.u_height)


def check_rack(rack: str, u_height: int, items: list[Placed]) -> list[Problem]:
    """Problems for items that overflow the rack or overlap each other (U1 is the bottom)."""
    problems: list[Problem] = []
    taken: dict[int, Placed] = {}
    for item in sorted(items, key=lambda p: (p.line or 0, p.path, p.name)):
        units = item.units
        if not units:
            continue
        where = item.path or f"{item.kind} {item.name}"
        if units.start < 1 or units.stop - 1 > u_height:
            problems.append(
                Problem(
                    where,
                    f"{item.kind} {item.name} at U{units.start} (height {item.u_height}U) "
                    f"does not fit rack {rack} of {u_height}U",
                    item.line,
                )
            )
            continue
        clash = next((taken[u] for u in units if u in taken), None)
        if clash is not None:
            problems.append(
                Problem(
                    where,
                    f"{item.kind} {item.name} at U{units.start}-U{units.stop - 1} overlaps "
                    f"{clash.kind} {clash.name} at U{clash.units.start}-U{clash.units.stop - 1} "
                    f"in rack {rack}",
                    item.line,
                )
            )
            continue
        for u in units:
            taken[u] = item
    return problems
