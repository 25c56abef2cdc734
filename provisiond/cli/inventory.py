"""`provisiond inventory apply|export`."""

from __future__ import annotations

import typer

app = typer.Typer(help="Inventory as code: YAML apply and export.", no_args_is_help=True)
