"""The ``provisiond`` command. Remote commands talk to the API through
``PROVISIOND_URL`` and ``PROVISIOND_TOKEN``; admin commands use the local DB."""

from __future__ import annotations

from typing import Annotated

import typer

from provisiond import __version__
from provisiond.cli import (
    admin,
    allocate,
    cabling,
    credentials,
    daemons,
    discover,
    events,
    images,
    inventory,
    machines,
    pdus,
    rack,
    racks,
    sim,
)

app = typer.Typer(
    name="provisiond",
    help="Bare-metal provisioning daemon and its command-line client.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"provisiond {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_print_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """Bare-metal provisioning daemon and its command-line client."""


app.command("serve")(admin.serve)
app.add_typer(admin.db_app, name="db")
app.add_typer(admin.token_app, name="token")
app.add_typer(machines.app, name="machines")
app.add_typer(inventory.app, name="inventory")
app.command("events")(events.events)
app.add_typer(credentials.app, name="credentials")
app.command("discover")(discover.discover)
app.add_typer(sim.app, name="sim")
app.add_typer(rack.app, name="rack")
app.add_typer(pdus.app, name="pdus")
app.add_typer(images.app, name="images")
app.command("allocate")(allocate.allocate)
app.command("release")(allocate.release)
app.add_typer(allocate.app, name="allocations")
app.add_typer(racks.app, name="racks")
app.add_typer(cabling.app, name="cabling")
app.add_typer(daemons.app, name="daemons")


def main() -> None:
    app()
