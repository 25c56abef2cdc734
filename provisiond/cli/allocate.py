"""`provisiond allocate`, `provisiond release` and `provisiond allocations ...`.

These talk to the API through :class:`provisiond.client.Client` (``PROVISIOND_URL``,
``PROVISIOND_TOKEN``). With ``--wait`` the progress goes to stderr and the result to
stdout, so ``--json`` output can be piped into ``jq``::

    ADDR=$(provisiond allocate --image debian-12 --tag ci --ssh-key ~/.ssh/id.pub \\
           --lease 2h --wait --json | jq -r .address)
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from provisiond.cli.common import JsonFlag, api, console, emit, err_console, fail, text
from provisiond.client import Allocation, AllocationFailed

app = typer.Typer(help="Allocations: list, show, renew.", no_args_is_help=True)

DEFAULT_KEYS = ("~/.ssh/id_ed25519.pub", "~/.ssh/id_ecdsa.pub", "~/.ssh/id_rsa.pub")
COLUMNS = ("id", "state", "owner", "machine", "address", "expires", "reason")


def _default_keys() -> list[str]:
    found = [k for k in DEFAULT_KEYS if Path(k).expanduser().is_file()]
    if not found:
        fail(
            "no SSH public key given",
            hint="pass --ssh-key ~/.ssh/id_ed25519.pub (or make one with ssh-keygen -t ed25519)",
        )
    return found[:1]


def _describe(a: Allocation) -> str:
    where = f" on {a.machine}" if a.machine else ""
    attempts = a.data.get("attempts", 0)
    try_note = f" (try {attempts})" if a.state == "deploying" and attempts > 1 else ""
    notes = {"pending": " (queued: no matching machine is free yet)"}
    return f"allocation {a.id}: {a.state}{where}{try_note}{notes.get(a.state, '')}"


def _row(a: dict[str, Any]) -> list[Any]:
    return [
        a["id"],
        a["state"],
        a["owner"],
        a["machine"],
        a["address"],
        (a["expires_at"] or "")[:19],
        a["failure_reason"][:60],
    ]


def _show_ready(a: Allocation) -> None:
    console.print(text("ready", "bold green") + text(f": {a.machine}"))
    console.print(f"  address      {a.address}")
    console.print(f"  ssh          ssh {a.ssh_user}@{a.address}")
    console.print(f"  host key     {a.host_key_fingerprint}")
    console.print(f"  expires      {a.expires_at}")
    console.print(f"  release with provisiond release {a.id}")


def _hints(pairs: list[str]) -> dict[str, object]:
    """``--root-device size=>=100 --root-device rotational=false`` as the API takes it."""
    hints: dict[str, object] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            fail(f"--root-device {pair!r} is not KEY=VALUE", hint="e.g. --root-device size=>=100")
        key, value = key.strip(), value.strip()
        if key == "rotational":
            if value.lower() not in ("true", "false", "yes", "no", "1", "0"):
                fail(f"--root-device rotational={value!r}", hint="rotational=true or false")
            hints[key] = value.lower() in ("true", "yes", "1")
        elif key == "size" and value.isdigit():
            hints[key] = int(value)
        else:
            hints[key] = value
    return hints


def allocate(
    image: Annotated[str, typer.Option("--image", help="Image name (provisiond images list)")],
    ssh_key: Annotated[
        list[str] | None,
        typer.Option("--ssh-key", help="Public key file or line; repeat for more"),
    ] = None,
    arch: Annotated[
        str | None, typer.Option("--arch", help="e.g. x86_64 (default: image's)")
    ] = None,
    min_cpus: Annotated[int | None, typer.Option("--min-cpus")] = None,
    min_ram_mib: Annotated[int | None, typer.Option("--min-ram-mib")] = None,
    min_disk_gb: Annotated[int | None, typer.Option("--min-disk-gb")] = None,
    tag: Annotated[list[str] | None, typer.Option("--tag", help="Required tag; repeat")] = None,
    rack: Annotated[str | None, typer.Option("--rack")] = None,
    site: Annotated[str | None, typer.Option("--site")] = None,
    name: Annotated[
        list[str] | None, typer.Option("--name", help="Acceptable machine; repeat")
    ] = None,
    user_data: Annotated[
        Path | None, typer.Option("--user-data", help="cloud-init user-data file")
    ] = None,
    lease: Annotated[str, typer.Option("--lease", help="e.g. 30m, 2h, 1d")] = "1h",
    ssh_user: Annotated[str, typer.Option("--ssh-user")] = "root",
    root_device: Annotated[
        list[str] | None,
        typer.Option(
            "--root-device",
            help="Root-device hint for a disk image, KEY=VALUE (name, size, serial, wwn, "
            "model, vendor, rotational); repeat",
        ),
    ] = None,
    idempotency_key: Annotated[
        str | None, typer.Option("--idempotency-key", help="Retry-safe key, e.g. the CI job id")
    ] = None,
    wait: Annotated[bool, typer.Option("--wait/--no-wait", help="Wait until ready")] = False,
    timeout: Annotated[float, typer.Option("--timeout", help="Seconds to wait")] = 1800,
    as_json: JsonFlag = False,
) -> None:
    """Ask for a machine; with --wait, show progress and print its address when ready."""
    keys = ssh_key or _default_keys()
    data = ""
    if user_data is not None:
        try:
            data = user_data.read_text()
        except OSError as exc:
            fail(f"cannot read {user_data}: {exc.strerror}", hint="pass a readable file")
    with api() as client:
        status = err_console.status(text("requesting a machine ..."))
        status.start()

        def progress(a: Allocation) -> None:
            status.update(text(_describe(a)))  # a str would be read as markup
            err_console.print(_describe(a))

        try:
            allocation = client.allocate(
                image=image,
                ssh_keys=keys,
                arch=arch,
                min_cpus=min_cpus,
                min_ram_mib=min_ram_mib,
                min_disk_gb=min_disk_gb,
                tags=tag or [],
                rack=rack,
                site=site,
                names=name or [],
                user_data=data,
                lease=lease,
                ssh_user=ssh_user,
                root_device=_hints(root_device or []),
                idempotency_key=idempotency_key,
                wait=wait,
                timeout=timeout,
                on_change=progress,
            )
        except AllocationFailed as exc:
            status.stop()
            if as_json:
                emit(exc.allocation.data, True)
            fail(
                str(exc),
                hint="'provisiond events' shows why"
                if exc.allocation.state == "failed"
                else "try a longer --timeout, or fewer constraints",
            )
        finally:
            status.stop()
    if as_json:
        emit(allocation.data, True)
    elif allocation.state == "ready":
        _show_ready(allocation)
    else:
        console.print(f"{_describe(allocation)}; wait with --wait, or watch 'allocations show'")


def release(
    allocation_id: Annotated[str, typer.Argument(help="Allocation id")],
    as_json: JsonFlag = False,
) -> None:
    """Hand a machine back early; it is wiped and returned to the pool."""
    with api() as client:
        allocation = client.release(allocation_id)
    if as_json:
        emit(allocation.data, True)
    else:
        console.print(f"allocation {allocation.id}: {allocation.state}")


@app.command("list")
def list_allocations(
    state: Annotated[
        str | None, typer.Option("--state", "-s", help="e.g. ready, or pending,deploying")
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """List allocations, newest first (ci tokens see their own)."""
    with api() as client:
        rows = client.get("/allocations", state=state)
    emit(rows, as_json, columns=COLUMNS, title=f"{len(rows)} allocation(s)", row=_row)


@app.command("show")
def show(
    allocation_id: Annotated[str, typer.Argument(help="Allocation id")],
    as_json: JsonFlag = False,
) -> None:
    """Show one allocation."""
    with api() as client:
        allocation = client.get_allocation(allocation_id)
    if as_json:
        emit(allocation.data, True)
    elif allocation.state == "ready":
        _show_ready(allocation)
    else:
        console.print(_describe(allocation), highlight=False)
        if allocation.failure_reason:
            console.print(f"  reason: {allocation.failure_reason}", highlight=False)


@app.command("renew")
def renew(
    allocation_id: Annotated[str, typer.Argument(help="Allocation id")],
    lease: Annotated[str, typer.Option("--lease", help="New lease from now, e.g. 2h")],
    as_json: JsonFlag = False,
) -> None:
    """Extend a lease (from now, up to your role's maximum)."""
    with api() as client:
        allocation = client.get_allocation(allocation_id).renew(lease)
    if as_json:
        emit(allocation.data, True)
    else:
        console.print(
            f"allocation {allocation.id}: {allocation.state}, expires {allocation.expires_at}"
        )
