"""Rack front elevations and power bars as SVG built here, after NetBox's RackElevationSVG.

:func:`layout` decides what goes where (pure: no database); :func:`rack_svg` draws it:
U numbers down the left (U1 at the bottom), every drawn device a ``<g class="device
KIND">`` over its U range, every free U its own ``<rect class="empty-u">``. Devices
without a U position, outside the rack or on a U another device already holds are not
drawn: :class:`Layout` lists them (``unplaced``, ``conflicts``), and zero-U PDUs apart
(``zero_u``), for the page to show beside the rack.

Every text and attribute value is XML-escaped here (names, owners and states come from
the database); the result is :class:`markupsafe.Markup` only because of that. No
``style=`` attribute anywhere (the console's Content-Security-Policy): colours are
SVG presentation attributes, the rest is ``console.css``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from urllib.parse import quote
from xml.sax.saxutils import escape, quoteattr

from markupsafe import Markup

from provisiond.console.render import STATE_COLOURS

#: Pixels per rack unit, the U-number column, the device column.
U_PX = 15
LABEL_W = 30
BODY_W = 214
PAD = 6
WIDTH = LABEL_W + BODY_W + PAD
#: Fills of what has no lifecycle state.
KIND_FILLS = {"switch": "#7986cb", "pdu": "#bcaaa4"}
UNKNOWN_FILL = "#cfd8dc"
EMPTY_FILL = "#f4f6f8"
#: Who wins a contested U: machines, then switches, then PDUs (then by name).
KIND_ORDER = {"machine": 0, "switch": 1, "pdu": 2}
#: About how many characters of 10px text fit across the device column.
LINE_CHARS = 36
BAR_W, BAR_H = 230, 12
BAR_COLOURS = {"ok": "#43a047", "warn": "#fb8c00", "over": "#e53935"}
_CONTROL = re.compile(r"[\x00-\x1f\x7f\ufffe\uffff]")


def clean(text: object) -> str:
    """``text`` as a string XML can carry: control characters become U+FFFD."""
    return _CONTROL.sub("\ufffd", str(text))


def _t(text: object) -> str:
    return escape(clean(text))


def _a(text: object) -> str:
    return quoteattr(clean(text))


def fill_of(kind: str, state: str) -> str:
    if kind == "machine":
        return STATE_COLOURS.get(state, UNKNOWN_FILL)
    return KIND_FILLS.get(kind, UNKNOWN_FILL)


def foreground(fill: str) -> str:
    """Black or white text, whichever reads better on ``fill`` (``#rrggbb``)."""
    try:
        r, g, b = (int(fill[i : i + 2], 16) for i in (1, 3, 5))
    except ValueError:
        return "#000000"
    return "#000000" if (0.299 * r + 0.587 * g + 0.114 * b) > 140 else "#ffffff"


def shorten(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: max(limit - 1, 1)] + "\u2026"


@dataclass(frozen=True)
class Device:
    """One machine, switch or PDU of a rack, as the elevation needs it."""

    kind: str  # machine | switch | pdu
    name: str
    u: int | None  # the lowest U it occupies
    height: int
    state: str = ""  # lifecycle state (machines only)
    power: str = ""  # on | off | unknown (machines only)
    owner: str = ""  # the live allocation's owner as shown to this user, "" when none

    @property
    def top(self) -> int:
        return (self.u or 0) + self.height - 1

    @property
    def span(self) -> str:
        if self.u is None:
            return "no U"
        return f"U{self.u}" if self.height <= 1 else f"U{self.u}\u2013U{self.top}"

    @property
    def href(self) -> str:
        return f"/ui/machines/{quote(self.name, safe='')}" if self.kind == "machine" else ""

    @property
    def status(self) -> str:
        """What is written after the name: power state and owner (machines only)."""
        if self.kind != "machine":
            return ""
        parts = [self.power or "unknown"]
        if self.owner:
            parts.append(shorten(self.owner, 16))
        return " \u00b7 ".join(parts)


@dataclass(frozen=True)
class Placed:
    """A device not drawn, and why."""

    device: Device
    why: str


@dataclass
class Layout:
    u_height: int
    drawn: list[Device] = field(default_factory=list)
    unplaced: list[Placed] = field(default_factory=list)
    conflicts: list[Placed] = field(default_factory=list)
    zero_u: list[Device] = field(default_factory=list)
    #: U -> the drawn device occupying it.
    occupied: dict[int, Device] = field(default_factory=dict)

    @property
    def empty(self) -> list[int]:
        return [u for u in range(1, self.u_height + 1) if u not in self.occupied]


def layout(u_height: int, devices: Iterable[Device]) -> Layout:
    """Put each device in its U range; the first (machines before switches before PDUs,
    then by name) to claim a U keeps it, the others are conflicts."""
    out = Layout(u_height=u_height)
    for device in sorted(devices, key=lambda d: (KIND_ORDER.get(d.kind, 9), d.name)):
        if device.kind == "pdu" and device.height == 0:
            out.zero_u.append(device)
        elif device.u is None:
            out.unplaced.append(Placed(device, "no U position"))
        elif device.height < 1 or device.u < 1 or device.top > u_height:
            out.unplaced.append(
                Placed(device, f"{device.span} is outside this rack's U1\u2013U{u_height}")
            )
        else:
            units = range(device.u, device.top + 1)
            holders = sorted({out.occupied[u].name for u in units if u in out.occupied})
            if holders:
                out.conflicts.append(Placed(device, f"{device.span} overlaps {', '.join(holders)}"))
                continue
            out.drawn.append(device)
            for u in units:
                out.occupied[u] = device
    return out


def _y(u_height: int, top_u: int) -> int:
    """The y of the top edge of U ``top_u``."""
    return PAD + (u_height - top_u) * U_PX


def _device(u_height: int, device: Device) -> str:
    fill = fill_of(device.kind, device.state)
    ink = foreground(fill)
    y = _y(u_height, device.top)
    h = device.height * U_PX
    x = LABEL_W + 1
    status = device.status
    tip = " \u00b7 ".join(
        part for part in (device.name, device.kind, device.state, status, device.span) if part
    )
    one_line = device.height == 1
    name_room = LINE_CHARS - (len(status) + 2 if one_line and status else 0)
    parts = [
        f'<g class="device {device.kind}" data-name={_a(device.name)} data-u="{device.u}" '
        f'data-height="{device.height}" data-state={_a(device.state)}>',
        f"<title>{_t(tip)}</title>",
        f'<rect x="{x}" y="{y + 0.5}" width="{BODY_W - 2}" height="{h - 1}" rx="2" '
        f'fill="{fill}" stroke="#37474f" stroke-width="0.6"/>',
        f'<text class="name" x="{x + 5}" y="{y + 11}" fill="{ink}">'
        f"{_t(shorten(device.name, max(name_room, 8)))}</text>",
    ]
    if status:
        if one_line:
            parts.append(
                f'<text class="status" x="{x + BODY_W - 7}" y="{y + 11}" fill="{ink}" '
                f'text-anchor="end">{_t(status)}</text>'
            )
        else:
            parts.append(
                f'<text class="status" x="{x + 5}" y="{y + 11 + U_PX}" fill="{ink}">'
                f"{_t(status)}</text>"
            )
    parts.append("</g>")
    body = "".join(parts)
    if device.href:
        return f"<a href={_a(device.href)}>{body}</a>"
    return body


def rack_svg(rack_name: str, plan: Layout) -> Markup:
    """The front elevation of one rack: ``<svg class="elevation">``, XML-escaped."""
    height = plan.u_height * U_PX + 2 * PAD
    out = [
        f'<svg class="elevation" data-rack={_a(rack_name)} data-u-height="{plan.u_height}" '
        f'width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" role="img" '
        f"aria-label={_a(f'front elevation of rack {rack_name}')} "
        'font-size="10" font-family="DejaVu Sans, sans-serif">',
        f'<rect class="frame" x="{LABEL_W - 1}" y="{PAD - 1}" width="{BODY_W + 2}" '
        f'height="{plan.u_height * U_PX + 2}" fill="#37474f"/>',
    ]
    for u in range(plan.u_height, 0, -1):
        y = _y(plan.u_height, u)
        out.append(
            f'<text class="u-label" x="{LABEL_W - 5}" y="{y + 11}" text-anchor="end" '
            f'fill="#5f6b7a">{u}</text>'
        )
    for u in plan.empty:
        y = _y(plan.u_height, u)
        out.append(
            f'<rect class="empty-u" data-u="{u}" x="{LABEL_W + 1}" y="{y + 0.5}" '
            f'width="{BODY_W - 2}" height="{U_PX - 1}" fill="{EMPTY_FILL}"/>'
        )
    out.extend(_device(plan.u_height, device) for device in plan.drawn)
    out.append("</svg>")
    return Markup("".join(out))  # noqa: S704 - every value above went through _t or _a


@dataclass(frozen=True)
class Power:
    """A rack's measured draw against its budget, as the page shows it."""

    measured: int | None
    budget: int | None
    percent: int | None  # None without both a reading and a budget above 0
    level: str  # ok | warn | over | "" (nothing to compare)

    @classmethod
    def of(cls, measured: int | None, budget: int | None) -> Power:
        if measured is None or budget is None:
            return cls(measured, budget, None, "")
        if budget <= 0:
            return cls(measured, budget, None, "over" if measured > 0 else "ok")
        percent = round(100 * measured / budget)
        # as provisiond.power_budget judges: over 90 % warns, over 100 % is over budget
        level = "over" if measured > budget else "warn" if measured > 0.9 * budget else "ok"
        return cls(measured, budget, percent, level)


def power_bar(power: Power) -> Markup | None:
    """A bar of ``measured / budget`` (green, orange over 90 %, red over 100 %), with a
    tick at 90 %; None when there is no reading or no budget to draw."""
    if power.measured is None or power.budget is None or not power.level:
        return None
    share = 1.0 if power.percent is None else min(power.percent, 100) / 100
    width = round(BAR_W * share, 1)
    tick = round(BAR_W * 0.9, 1)
    percent = "" if power.percent is None else str(power.percent)
    return Markup(  # noqa: S704 - numbers and fixed words only
        f'<svg class="power-bar" data-level="{power.level}" data-percent="{percent}" '
        f'width="{BAR_W}" height="{BAR_H}" viewBox="0 0 {BAR_W} {BAR_H}" role="img" '
        f'aria-label="{percent or "over"} percent of budget">'
        f'<rect class="track" width="{BAR_W}" height="{BAR_H}" fill="#e0e0e0"/>'
        f'<rect class="used" width="{width}" height="{BAR_H}" '
        f'fill="{BAR_COLOURS[power.level]}"/>'
        f'<line x1="{tick}" x2="{tick}" y1="0" y2="{BAR_H}" stroke="#455a64" '
        'stroke-width="1" stroke-dasharray="2 2"/>'
        "</svg>"
    )
