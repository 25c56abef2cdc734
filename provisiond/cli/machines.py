"""`provisiond machines ...`: list, show, power, inspect, deploy, release."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

import typer

from provisiond.cli.allocate import allocate
from provisiond.cli.common import JsonFlag, api, console, emit, err_console, fail, text

app = typer.Typer(
    help="Machines: list, show, power, inspect, deploy, release.", no_args_is_help=True
)


def _u(machine: dict[str, Any]) -> str:
    if machine.get("u_position") is None:
        return ""
    top = machine["u_position"] + machine["u_height"] - 1
    return f"U{machine['u_position']}" + (f"-U{top}" if top != machine["u_position"] else "")


@app.command("list")
def list_machines(
    state: Annotated[str | None, typer.Option("--state", "-s", help="e.g. available")] = None,
    rack: Annotated[str | None, typer.Option("--rack", help="Only this rack")] = None,
    tag: Annotated[str | None, typer.Option("--tag", help="Only machines with this tag")] = None,
    arch: Annotated[str | None, typer.Option("--arch", help="e.g. x86_64")] = None,
    limit: Annotated[
        int | None,
        typer.Option("--limit", "-n", min=1, help="Show at most this many (default: all)"),
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """List machines by name with their state, power and place (all of them unless
    --limit; fetched from the API a page at a time)."""
    with api() as client:
        # One past the limit tells whether more were left out.
        machines = list(
            client.paginate(
                "/machines",
                limit=None if limit is None else limit + 1,
                state=state,
                rack=rack,
                tag=tag,
                arch=arch,
            )
        )
    more = limit is not None and len(machines) > limit
    machines = machines[:limit]
    if more and not as_json:
        err_console.print(f"showing the first {limit} machines; more match (raise --limit)")
    emit(
        machines,
        as_json,
        columns=("name", "state", "power", "rack", "U", "arch", "tags", "error"),
        title=f"{len(machines)}{'+' if more else ''} machine(s)",
        row=lambda m: (
            m["name"],
            m["state"],
            m["power_state"],
            m["rack"],
            _u(m),
            m["arch"],
            ", ".join(m["tags"]),
            (m.get("last_error") or {}).get("reason", ""),
        ),
    )


@app.command("show")
def show(
    name: Annotated[str, typer.Argument(help="Machine name or uuid")],
    as_json: JsonFlag = False,
) -> None:
    """Show one machine: lifecycle, hardware, NICs and BMC (never its password)."""
    with api() as client:
        machine = client.get(f"/machines/{quote(name, safe='')}")
    if as_json:
        emit(machine, True)
        return
    bmc = machine.get("bmc") or {}
    fields = {
        "name": machine["name"],
        "uuid": machine["uuid"],
        "state": machine["state"],
        "allowed events": ", ".join(machine["allowed_events"]),
        "power": machine["power_state"],
        "rack": " ".join(filter(None, [machine["rack"], _u(machine)])),
        "hardware": f"{machine['vendor']} {machine['model']} ({machine['arch']}, "
        f"{machine['cpus'] or '?'} CPUs, {machine['ram_mib'] or '?'} MiB)",
        "serial": machine["serial"],
        "tags": ", ".join(machine["tags"]),
        "deadline": machine["deadline"],
        "agent": f"{machine['agent_version'] or '?'}, last heartbeat {machine['last_heartbeat_at']}"
        if machine.get("last_heartbeat_at")
        else None,
        "last error": machine["last_error"],
        "lock": f"{machine['lock_owner']} until {machine['lock_expires']}"
        if machine["lock_owner"]
        else None,
        "bmc": f"{bmc['driver']} {bmc['username']}@{bmc['address']}:{bmc['port']} "
        f"(password {'set' if bmc['password_set'] else 'not set'})"
        if bmc
        else None,
    }
    emit(
        [{"field": k, "value": v} for k, v in fields.items() if v not in (None, "")],
        False,
        columns=("field", "value"),
        title=f"machine {machine['name']}",
    )
    if machine["nics"]:
        emit(machine["nics"], False, columns=("mac", "name", "pxe", "ip_address", "switch_port"))
    else:
        console.print("no NICs")
    with api() as client:
        records = client.get(f"/machines/{quote(name, safe='')}/deployments?limit=1")
    for record in records:
        title = (
            f"{record['kind']} {record['uuid'][:8]} (attempt {record['attempt']}, "
            f"{record['outcome']})"
            + (f": {record['failure_reason']}" if record["failure_reason"] else "")
        )
        emit(
            [
                {"phase": p["phase"], "seconds": "" if p["seconds"] is None else p["seconds"]}
                for p in record["phases"]
            ],
            False,
            columns=("phase", "seconds"),
            title=title,
        )
        disk, write = record.get("root_disk") or {}, record.get("image_write") or {}
        if disk or write:
            console.print(
                f"image written to {disk.get('disk', '?')} ({disk.get('why', '')}): "
                f"{write.get('bytes', '?')} bytes in {write.get('seconds', '?')} s, "
                f"{write.get('mb_s', '?')} MB/s, {write.get('resumed', 0)} resumed downloads"
            )


def _event(name: str, event: str, reason: str) -> dict[str, Any]:
    with api() as client:
        result: dict[str, Any] = client.post(
            f"/machines/{quote(name, safe='')}/events", json={"event": event, "reason": reason}
        )
    return result


@app.command("deploy")
def deploy(
    name: Annotated[str, typer.Argument(help="Machine name")],
    image: Annotated[str, typer.Option("--image", help="Image name (provisiond images list)")],
    ssh_key: Annotated[
        list[str] | None,
        typer.Option("--ssh-key", help="Public key file or line; repeat for more"),
    ] = None,
    user_data: Annotated[
        Path | None, typer.Option("--user-data", help="cloud-init user-data file")
    ] = None,
    lease: Annotated[
        str, typer.Option("--lease", help="e.g. 12h, 1d (operators: up to 7d)")
    ] = "1d",
    wait: Annotated[bool, typer.Option("--wait/--no-wait", help="Wait until ready")] = True,
    timeout: Annotated[float, typer.Option("--timeout", help="Seconds to wait")] = 1800,
    as_json: JsonFlag = False,
) -> None:
    """Deploy this machine: an allocation pinned to it (release it with 'provisiond release')."""
    allocate(
        image=image,
        ssh_key=ssh_key,
        name=[name],
        user_data=user_data,
        lease=lease,
        wait=wait,
        timeout=timeout,
        as_json=as_json,
    )


def _print_state(machine: dict[str, Any], as_json: bool) -> None:
    if as_json:
        emit(machine, True)
    else:
        console.print(f"{machine['name']}: {machine['state']}", highlight=False)


@app.command("inspect")
def inspect(
    name: Annotated[str, typer.Argument(help="Machine name or uuid")],
    reason: Annotated[str, typer.Option("--reason")] = "",
    as_json: JsonFlag = False,
) -> None:
    """Boot the machine into the inspection ramdisk; its agent reports the hardware."""
    _print_state(_event(name, "inspect", reason), as_json)


@app.command("release")
def release(
    name: Annotated[str, typer.Argument(help="Machine name or uuid")],
    reason: Annotated[str, typer.Option("--reason")] = "",
    as_json: JsonFlag = False,
) -> None:
    """Wipe the disks (first and last MiB, verified), power off, back to available."""
    _print_state(_event(name, "release", reason), as_json)


POWER_ACTIONS = ("status", "on", "off", "soft_off", "cycle", "reset")


@app.command("power")
def power(
    name: Annotated[str, typer.Argument(help="Machine name or uuid")],
    action: Annotated[str, typer.Argument(help="status, on, off, soft_off, cycle or reset")],
    force: Annotated[
        bool,
        typer.Option("--force", help="Power on even over the rack's power budget (admins only)"),
    ] = False,
    as_json: JsonFlag = False,
) -> None:
    """Read or change power through the machine's BMC; actions are confirmed by read-back.

    Powering on a machine whose rack would pass its power budget is refused, with the
    rack's figures; an admin can --force it."""
    if action not in POWER_ACTIONS:
        fail(f"unknown power action {action!r}", hint=f"use one of: {', '.join(POWER_ACTIONS)}")
    path = f"/machines/{quote(name, safe='')}/power"
    body: dict[str, Any] = {"action": action, **({"force": True} if force else {})}
    with api() as client:
        outcome = client.get(path) if action == "status" else client.post(path, body)
    if as_json:
        emit(outcome, True)
    elif outcome.get("manual"):
        console.print(text("manual action needed:", "yellow"), outcome["message"])
    else:
        console.print(f"{outcome['machine']}: power {outcome['state']}", highlight=False)
        if outcome.get("message"):
            console.print(outcome["message"], highlight=False)


@app.command("bmc-cert")
def bmc_cert(
    name: Annotated[str, typer.Argument(help="Machine name or uuid")],
    pin: Annotated[
        bool,
        typer.Option("--pin", help="Trust this certificate from now on (after you checked it)"),
    ] = False,
    expect: Annotated[
        str | None,
        typer.Option("--expect", help="With --pin: pin only if the BMC presents this fingerprint"),
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Show the TLS certificate a Redfish BMC presents; --pin trusts exactly that one."""
    path = f"/machines/{quote(name, safe='')}/bmc/certificate"
    with api() as client:
        cert = client.get(path)
        if pin:
            # The daemon pins only if the BMC still presents the fingerprint named here.
            confirmed = expect or cert["fingerprint"]
            cert = client.request("PUT", path, json={"fingerprint": confirmed})
    if as_json:
        emit(cert, True)
        return
    console.print(f"BMC {cert['bmc']} of {cert['machine']} presents {cert['fingerprint']}")
    emit(
        [
            {"field": "subject", "value": cert["subject"]},
            {"field": "issuer", "value": cert["issuer"]},
            {"field": "valid", "value": f"{cert['not_before']} to {cert['not_after']}"},
            {"field": "self-signed", "value": "yes" if cert["self_signed"] else "no"},
            {"field": "names", "value": ", ".join(cert["names"])},
            {"field": "pinned", "value": cert["pinned"] or "(none)"},
            {"field": "tls_verify", "value": cert["tls_verify"]},
        ],
        False,
        columns=("field", "value"),
        title=f"TLS certificate of {cert['machine']}'s BMC",
    )
    if pin:
        console.print(f"pinned {cert['pinned']}")
    elif cert["matches_pin"]:
        console.print("this is the pinned certificate")
    else:
        console.print(
            "Not pinned. Check the fingerprint against the BMC's own web UI or console, then: "
            f"provisiond machines bmc-cert {name} --pin --expect {cert['fingerprint']}"
        )
