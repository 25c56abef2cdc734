"""Fault injection for simulated BMCs and the ``--fail SPEC`` parser.

A SPEC is ``KIND[=VALUE][@TARGETS]``:

- ``latency=MS``: add MS milliseconds to every reply.
- ``drop=FRACTION``: silently drop that fraction of received packets (seeded RNG).
- ``wrong-password``: reject every login as if the password were wrong.
- ``no-resources``: refuse new sessions with RMCP+ status 0x01
  ("insufficient resources to create a session").
- ``busy``: answer every command after login with completion code 0xC0 ("node busy").
- ``privilege=LEVEL``: the BMC user may hold at most LEVEL (``callback``, ``user``,
  ``operator`` or ``administrator``). The login itself works; Set Session Privilege
  Level above LEVEL answers 0x80 ("not available for this user"), and commands that
  need more than the session holds answer 0xD4 ("insufficient privilege").
- ``reset=SECONDS[/PERIOD]``: unreachable for SECONDS from start, and again at the
  start of every PERIOD seconds if PERIOD is given; sessions are lost, power is kept.
- ``no-dcmi``: a BMC without DCMI: Get Power Reading answers 0xC1 ("invalid command").

TARGETS are BMC indexes counted from 0, e.g. ``@3`` or ``@0-9,42``; without them the
fault applies to every BMC. Later specs override earlier ones field by field:

    >>> rules = [parse_fault("latency=50"), parse_fault("drop=1@2")]
    >>> faults_for(2, rules)
    Faults(latency_ms=50.0, drop=1.0, wrong_password=False, no_resources=False, busy=False, reset_s=0.0, reset_period_s=0.0, privilege=4, no_dcmi=False)
"""  # noqa: E501

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

__all__ = ["FaultRule", "FaultSpecError", "Faults", "faults_for", "parse_fault", "parse_load"]

FAIL_SPEC_HELP = (
    "Inject a fault: KIND[=VALUE][@TARGETS]. Kinds: latency=MS, drop=FRACTION, "
    "wrong-password, no-resources (RMCP+ status 0x01), busy (completion code 0xC0), "
    "reset=SECONDS[/PERIOD] (unreachable, power kept), privilege=user|operator (the most "
    "the BMC user may hold), no-dcmi (no power reading). TARGETS are BMC indexes from 0, "
    "e.g. @3 or @0-9,42; default every BMC. Repeatable; later specs win."
)


#: IPMI privilege levels by name (IPMI 2.0 table 22-28).
PRIVILEGE_LEVELS = {"callback": 1, "user": 2, "operator": 3, "administrator": 4, "admin": 4}


class FaultSpecError(ValueError):
    """A ``--fail`` SPEC that does not parse; the message says what was expected."""


@dataclass(frozen=True)
class Faults:
    """What is wrong with one simulated BMC. The default is a healthy BMC."""

    latency_ms: float = 0.0
    drop: float = 0.0
    wrong_password: bool = False
    no_resources: bool = False
    busy: bool = False
    reset_s: float = 0.0
    reset_period_s: float = 0.0
    #: The highest IPMI privilege level the BMC user may hold (4: administrator).
    privilege: int = 4
    #: No DCMI: Get Power Reading answers 0xC1, as on BMCs that lack it.
    no_dcmi: bool = False


@dataclass(frozen=True)
class FaultRule:
    """Field overrides for :class:`Faults`, applied to ``targets`` (None: every BMC)."""

    changes: Mapping[str, float | bool]
    targets: frozenset[int] | None = None

    def applies_to(self, index: int) -> bool:
        return self.targets is None or index in self.targets


def faults_for(index: int, rules: Iterable[FaultRule], base: Faults | None = None) -> Faults:
    faults = base or Faults()
    for rule in rules:
        if rule.applies_to(index):
            faults = dataclasses.replace(faults, **rule.changes)  # type: ignore[arg-type]
    return faults


def _number(kind: str, value: str | None, *, low: float, high: float | None = None) -> float:
    if value is None:
        raise FaultSpecError(f"{kind} needs a value, e.g. {kind}=1")
    try:
        number = float(value)
    except ValueError:
        raise FaultSpecError(f"{kind}={value}: not a number") from None
    if number < low or (high is not None and number > high):
        bounds = f"between {low:g} and {high:g}" if high is not None else f">= {low:g}"
        raise FaultSpecError(f"{kind}={value}: must be {bounds}")
    return number


def _flag(kind: str, value: str | None) -> bool:
    if value is None or value.lower() in ("1", "true", "yes", "on"):
        return True
    if value.lower() in ("0", "false", "no", "off"):
        return False
    raise FaultSpecError(f"{kind}={value}: expected no value, or on/off")


def _targets(text: str) -> frozenset[int]:
    indexes: set[int] = set()
    for part in text.split(","):
        first, sep, last = part.strip().partition("-")
        try:
            low = int(first)
            high = int(last) if sep else low
        except ValueError:
            raise FaultSpecError(f"@{text}: targets are indexes like 3 or 0-9,42") from None
        if low < 0 or high < low:
            raise FaultSpecError(f"@{text}: bad range {part!r}")
        indexes.update(range(low, high + 1))
    return frozenset(indexes)


def parse_fault(spec: str) -> FaultRule:
    """Parse one ``KIND[=VALUE][@TARGETS]`` spec; raises :class:`FaultSpecError`."""
    body, at, target_text = spec.strip().partition("@")
    kind, eq, raw_value = body.partition("=")
    kind = kind.strip().lower().replace("_", "-")
    value = raw_value.strip() if eq else None
    changes: dict[str, float | bool]
    if kind == "latency":
        changes = {"latency_ms": _number(kind, value, low=0, high=60_000)}
    elif kind == "drop":
        changes = {"drop": _number(kind, value, low=0, high=1)}
    elif kind == "wrong-password":
        changes = {"wrong_password": _flag(kind, value)}
    elif kind == "no-resources":
        changes = {"no_resources": _flag(kind, value)}
    elif kind == "busy":
        changes = {"busy": _flag(kind, value)}
    elif kind == "no-dcmi":
        changes = {"no_dcmi": _flag(kind, value)}
    elif kind == "privilege":
        if value is None or value.lower() not in PRIVILEGE_LEVELS:
            raise FaultSpecError(
                f"privilege needs a level: {', '.join(PRIVILEGE_LEVELS)}, e.g. privilege=user"
            )
        changes = {"privilege": PRIVILEGE_LEVELS[value.lower()]}
    elif kind == "reset":
        if value is None:
            raise FaultSpecError("reset needs SECONDS[/PERIOD], e.g. reset=5 or reset=5/60")
        down, slash, period = value.partition("/")
        reset_s = _number(kind, down, low=0)
        period_s = _number(kind, period, low=0) if slash else 0.0
        if slash and period_s <= reset_s:
            raise FaultSpecError(f"reset={value}: PERIOD must be longer than SECONDS")
        changes = {"reset_s": reset_s, "reset_period_s": period_s}
    else:
        raise FaultSpecError(
            f"unknown fault {kind!r}; expected latency, drop, wrong-password, "
            "no-resources, busy, reset, privilege or no-dcmi"
        )
    return FaultRule(changes, _targets(target_text) if at else None)


def parse_load(spec: str) -> tuple[float, frozenset[int] | None]:
    """``FRACTION[@TARGETS]`` (``provisiond sim bmc --load``): how loaded those machines are."""
    body, at, target_text = spec.strip().partition("@")
    return _number("load", body.strip() or None, low=0, high=1), (
        _targets(target_text) if at else None
    )
