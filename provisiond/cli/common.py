"""What every CLI command shares: the API client, errors, and table-or-JSON output."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from provisiond.client import ApiError, Client
from provisiond.config import Settings, load_settings
from provisiond.errors import ProvisiondError

console = Console(soft_wrap=True)  # long lines stay whole in logs and pipes
err_console = Console(stderr=True, soft_wrap=True)

JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]
ConfigOpt = Annotated[
    Path | None,
    typer.Option(
        "--config", "-c", help="TOML config file (default /etc/provisiond/provisiond.toml)"
    ),
]


def fail(message: str, hint: str = "", code: int = 1, details: Sequence[str] = ()) -> NoReturn:
    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False)
    for detail in details:
        err_console.print(f"  - {detail}", highlight=False, markup=False)
    if hint:
        err_console.print(f"[yellow]hint:[/] {escape(hint)}", highlight=False)
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


def settings(config: Path | None) -> Settings:
    with handled():
        return load_settings(config)
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
        table.add_column(column)
    for item in rows:
        values = row(item) if row else [item.get(c) for c in columns]
        table.add_row(*("" if v is None else str(v) for v in values))
    console.print(table)
