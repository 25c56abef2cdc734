"""What every CLI command shares: the API client, errors, and table-or-JSON output.

Output is literal. API data is names, MACs, fingerprints and free text that other
people typed, so rich must not read it as markup (``[/x] Acme`` raised MarkupError)
or emoji codes (the MAC ``52:54:00:ab:cd:01`` printed as ``52:54:00🆎cd:01``), and a
stored ANSI escape must not reach the terminal. So both consoles are
:class:`LiteralConsole`: every string they are given, in a table cell, a title or a
line, is printed as written with control characters shown escaped (``\\x1b``).
Colour comes only from :func:`text` labels, never from parsing strings.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console, HighlighterType, JustifyMethod, OverflowMethod
from rich.style import Style
from rich.table import Table
from rich.text import Text

from provisiond.client import ApiError, Client
from provisiond.config import Settings, load_settings
from provisiond.errors import ProvisiondError

#: C0 and C1 control characters (but newline and tab) and the bidirectional overrides
#: that reorder what a terminal shows.
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")
#: Width when writing to a pipe or file: rows stay whole, so grep and diff see them.
PIPE_WIDTH = 100_000


def _escaped(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def literal(value: str) -> str:
    """``value`` safe for a terminal: control characters shown as ``\\x1b``, ``\\u202e``."""
    return _CONTROL.sub(_escaped, value)


def text(value: object, style: str = "") -> Text:
    """``value`` as literal text in ``style``: for coloured labels, and wherever rich
    would otherwise parse a string (status lines, progress descriptions)."""
    return Text(literal(str(value)), style=style)


class LiteralConsole(Console):
    """A rich console that prints strings as written (see the module docstring)."""

    def __init__(self, *, stderr: bool = False) -> None:
        super().__init__(stderr=stderr, soft_wrap=True, markup=False, emoji=False, highlight=False)
        if not self.is_terminal and "COLUMNS" not in os.environ:
            self.width = PIPE_WIDTH

    def render_str(
        self,
        text: str,
        *,
        style: str | Style = "",
        justify: JustifyMethod | None = None,
        overflow: OverflowMethod | None = None,
        emoji: bool | None = None,
        markup: bool | None = None,
        highlight: bool | None = None,
        highlighter: HighlighterType | None = None,
    ) -> Text:
        # Every string rich prints passes here: print(), table cells, titles, headers.
        return super().render_str(
            literal(text),
            style=style,
            justify=justify,
            overflow=overflow,
            emoji=False,
            markup=False,
            highlight=False,
        )


console = LiteralConsole()
err_console = LiteralConsole(stderr=True)

JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]
ConfigOpt = Annotated[
    Path | None,
    typer.Option(
        "--config", "-c", help="TOML config file (default /etc/provisiond/provisiond.toml)"
    ),
]


def fail(message: str, hint: str = "", code: int = 1, details: Sequence[str] = ()) -> NoReturn:
    err_console.print(text("error:", "bold red"), message)
    for detail in details:
        err_console.print(f"  - {detail}")
    if hint:
        err_console.print(text("hint:", "yellow"), hint)
    raise typer.Exit(code)


@contextmanager
def handled() -> Iterator[None]:
    """Turn our errors into a message, a hint and a non-zero exit code."""
    try:
        yield
    except ApiError as exc:
        for problem in exc.problems[1:]:
            line = f"line {problem['line']}: " if problem.get("line") else ""
            err_console.print(f"  {line}{problem.get('path', '')}: {problem.get('message', '')}")
        fail(
            f"{exc.message} [{exc.code}, HTTP {exc.status}]" if exc.status else exc.message,
            exc.hint,
        )
    except ProvisiondError as exc:
        fail(exc.message, exc.hint)


@contextmanager
def api() -> Iterator[Client]:
    with handled(), Client() as client:
        yield client


def settings(config: Path | None, **overrides: Any) -> Settings:
    """The settings from ``config`` and the environment; ``overrides`` (flags) win over both."""
    with handled():
        return load_settings(config, **overrides)
    raise AssertionError("unreachable")


def emit(
    data: Any,
    as_json: bool,
    *,
    columns: Sequence[str] = (),
    title: str | None = None,
    row: Callable[[dict[str, Any]], Sequence[Any]] | None = None,
) -> None:
    """Print ``data`` as JSON, or as a rich table of ``columns`` for people."""
    if as_json:
        sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")
        return
    rows = data if isinstance(data, list) else [data]
    table = Table(title=title, header_style="bold")
    for column in columns:
        table.add_column(column, overflow="fold")  # on a narrow terminal: wrapped, never cut
    for item in rows:
        values = row(item) if row else [item.get(c) for c in columns]
        table.add_row(*("" if v is None else str(v) for v in values))
    console.print(table)
