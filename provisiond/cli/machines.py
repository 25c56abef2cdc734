"""`provisiond machines ...`: list, show."""

from __future__ import annotations

import typer

app = typer.Typer(help="Machines: list, show.", no_args_is_help=True)
