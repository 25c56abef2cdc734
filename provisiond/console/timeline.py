"""A deployment's boot phases as an SVG timeline, built here and escaped here.

:func:`deploy_timeline` takes the view of :func:`provisiond.deploy.deployments.to_view`
(phases in time order, each with its seconds since the power-cycle) and draws one row
per phase: a bar from the phase's start to the next phase's start on an axis of
seconds, the phase's name and its seconds as text. The last bar of a running
deployment reaches "now", and a failed one ends in a red marker with the reason.
Where "now" or the end lie on the deployment's own clock comes from :func:`with_end`
(the view alone has no origin time); without it the last phase is a thin mark.

Every text and attribute value is escaped (``escape``/``quoteattr``): phase names and
failure reasons come from the network and the database.
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any
from xml.sax.saxutils import escape, quoteattr

from markupsafe import Markup

from provisiond.deploy.telemetry import seconds_since_origin
from provisiond.models import Deployment

LABEL_W = 160
CHART_W = 480
VALUE_W = 130
ROW_H = 20
AXIS_H = 26
BAR_H = 12
#: Outcome as stored -> as the page names it.
OUTCOMES = {"": "running", "running": "running", "active": "succeeded", "available": "succeeded"}
BAR = "#64b5f6"
RUNNING_BAR = "#ffb74d"
FAILED = "#c62828"
TICK_STEPS = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 14400, 43200)
MAX_TICKS = 10


def outcome(raw: str) -> str:
    """``running``, ``succeeded`` (active, available), or the stored outcome."""
    return OUTCOMES.get(raw, raw)


def with_end(view: dict[str, Any], record: Deployment, now: datetime) -> dict[str, Any]:
    """``view`` plus ``end_s``: where its last bar ends, in seconds since the
    power-cycle (now for a running deployment, else its finish)."""
    at = record.finished_at if record.outcome else now
    end = seconds_since_origin(record, at) if at is not None else None
    return {**view, "end_s": end}


def _tick_step(span: float) -> int:
    for step in TICK_STEPS:
        if span / step <= MAX_TICKS:
            return step
    return TICK_STEPS[-1] * math.ceil(span / (TICK_STEPS[-1] * MAX_TICKS))


def _num(value: float) -> str:
    return f"{value:.1f}"


def _seconds_attr(value: float | None) -> str:
    return "" if value is None else f"{value:.3f}"


def _phases(view: dict[str, Any]) -> list[tuple[str, float | None]]:
    out = []
    for item in view.get("phases") or []:
        seconds = item.get("seconds")
        out.append(
            (
                str(item.get("phase", "")),
                float(seconds) if isinstance(seconds, int | float) else None,
            )
        )
    return out


def deploy_timeline(view: dict[str, Any]) -> Markup:
    """The SVG of one deployment's phases (see the module's docstring)."""
    phases = _phases(view)
    state = outcome(str(view.get("outcome") or ""))
    end_raw = view.get("end_s")
    end = float(end_raw) if isinstance(end_raw, int | float) else None
    timed = [s for _name, s in phases if s is not None]
    lo = min([0.0, *timed])
    hi = max([lo, *timed, *([end] if end is not None else [])])
    span = max(hi - lo, 1.0)
    scale = CHART_W / span
    failed = state == "failed"
    rows = max(len(phases), 1)
    height = AXIS_H + rows * ROW_H + (2 * ROW_H if failed else 0) + 6
    width = LABEL_W + CHART_W + VALUE_W

    def x(seconds: float) -> float:
        return LABEL_W + (seconds - lo) * scale

    parts = [
        f'<svg class="timeline" data-outcome={quoteattr(state)} width="{width}" '
        f'height="{height}" viewBox="0 0 {width} {height}" role="img" '
        f"aria-label={quoteattr(f'deployment timeline ({state})')}>"
    ]
    # the axis: a tick and a label every ``step`` seconds
    step = _tick_step(span)
    parts.append('<g class="axis">')
    parts.append(
        f'<line x1="{LABEL_W}" y1="{AXIS_H - 4}" x2="{LABEL_W + CHART_W}" y2="{AXIS_H - 4}" '
        'stroke="#9aa5b1"/>'
    )
    tick = math.ceil(lo / step) * step
    while tick <= lo + span + 1e-9:
        tx = _num(x(tick))
        parts.append(
            f'<line x1="{tx}" y1="{AXIS_H - 8}" x2="{tx}" y2="{height}" stroke="#e0e4ea"/>'
            f'<text x="{tx}" y="{AXIS_H - 11}" text-anchor="middle" fill="#5f6b7a">'
            f"{tick}s</text>"
        )
        tick += step
    parts.append("</g>")
    if not phases:
        parts.append(
            f'<text x="{LABEL_W}" y="{AXIS_H + 14}" fill="#5f6b7a">no phases recorded yet</text>'
        )
    for i, (name, start) in enumerate(phases):
        top = AXIS_H + i * ROW_H
        following = next((s for _n, s in phases[i + 1 :] if s is not None), None)
        last = following is None
        stop = following if following is not None else end
        if start is None:
            bar_x, bar_w, value = float(LABEL_W), 0.0, "no time"
        else:
            stop = start if stop is None or stop < start else stop
            bar_x, bar_w = x(start), max((stop - start) * scale, 2.0)
            value = f"{start:.1f} s" + (f" (+{stop - start:.1f} s)" if stop > start else "")
        fill = RUNNING_BAR if last and state == "running" else BAR
        parts.append(
            f'<g class="phase" data-phase={quoteattr(name)} '
            f'data-seconds="{_seconds_attr(start)}">'
            f'<rect x="{_num(bar_x)}" y="{top + (ROW_H - BAR_H) // 2}" width="{_num(bar_w)}" '
            f'height="{BAR_H}" rx="2" fill="{fill}"/>'
            f'<text class="phase-name" x="4" y="{top + 14}">{escape(name)}</text>'
            f'<text class="phase-seconds" x="{_num(bar_x + bar_w + 4)}" y="{top + 14}" '
            f'fill="#5f6b7a">{escape(value)}</text>'
            "</g>"
        )
    if failed:
        at = end if end is not None else (timed[-1] if timed else lo)
        mx = x(at)
        top = AXIS_H + rows * ROW_H
        reason = str(view.get("failure_reason") or "no reason recorded")
        parts.append(
            f'<g class="failure" data-seconds="{_seconds_attr(at)}">'
            f'<line x1="{_num(mx)}" y1="{AXIS_H - 4}" x2="{_num(mx)}" y2="{top + 4}" '
            f'stroke="{FAILED}" stroke-width="2"/>'
            f'<circle cx="{_num(mx)}" cy="{top + 4}" r="5" fill="{FAILED}"/>'
            f'<text class="failure-reason" x="4" y="{top + ROW_H + 8}" fill="{FAILED}">'
            f"failed: {escape(reason)}</text>"
            "</g>"
        )
    parts.append("</svg>")
    return Markup("".join(parts))  # noqa: S704  (every value above is escaped)
