"""``provisiond images add|list|verify|delete``: the image catalog and its file store.

These commands run on the daemon's host and work on its data dir and database
directly, like ``db upgrade`` and ``token create``, rather than uploading through
the API. Why: the store is a folder on that host (``<data_dir>/images``), and boot
images are large; a local streamed copy (1 MiB at a time, hashed on the way, then an
atomic rename) needs no 100 MB request bodies through uvicorn, no upload size limits
and no partial-upload clean-up, and the files' owner and permissions stay the
daemon's. Listing for remote users is ``GET /api/v1/images``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from provisiond.cli.common import (
    ConfigOpt,
    JsonFlag,
    console,
    emit,
    err_console,
    fail,
    handled,
    text,
)
from provisiond.cli.common import settings as load
from provisiond.config import Settings
from provisiond.db import Database
from provisiond.inventory import images as service
from provisiond.inventory.disk_images import add_disk_image
from provisiond.netboot.images import ImageStore
from provisiond.schemas.catalog import ImageOut

app = typer.Typer(
    help="Boot images: kernel, initrd, rootfs, or a whole disk (run on the daemon's host).",
    no_args_is_help=True,
)


LIST_COLUMNS = (
    "name", "arch", "kind", "kernel", "initrd", "rootfs", "os_template",
    "disk", "virtual_size", "firmware", "os_family", "configured_by",
)  # fmt: skip


def _open(cfg: Settings) -> tuple[Database, ImageStore]:
    db = Database(cfg.db_url, busy_timeout_s=cfg.sqlite_busy_timeout_s)
    db.check_schema()
    return db, ImageStore(cfg.images_path)


@app.command("add")
def add(
    name: Annotated[str, typer.Argument(help="Image name, e.g. debian12")],
    kernel: Annotated[
        Path | None, typer.Option("--kernel", help="Kernel file", exists=True, dir_okay=False)
    ] = None,
    initrd: Annotated[
        Path | None, typer.Option("--initrd", help="Initrd file", exists=True, dir_okay=False)
    ] = None,
    rootfs: Annotated[
        Path | None,
        typer.Option("--rootfs", help="Optional root file system", exists=True, dir_okay=False),
    ] = None,
    arch: Annotated[str, typer.Option("--arch")] = "x86_64",
    disk: Annotated[
        Path | None,
        typer.Option(
            "--disk",
            help="Whole-disk image (raw, .gz, .xz, .zst or qcow2), served as disk.raw.gz",
            exists=True,
            dir_okay=False,
        ),
    ] = None,
    firmware: Annotated[
        str, typer.Option("--firmware", help="With --disk: bios, uefi or both")
    ] = "both",
    no_cloud_init: Annotated[
        bool,
        typer.Option(
            "--no-cloud-init",
            help="With --disk: the image phones home by itself (configured by the agent "
            "alone); it is not checked for cloud-init and no seed config is written into it",
        ),
    ] = False,
    kind: Annotated[str, typer.Option("--kind", help="live or disk")] = "live",
    os_template: Annotated[str, typer.Option("--os-template", help="pxe/os/<family> to use")] = "",
    kernel_args: Annotated[str, typer.Option("--kernel-args")] = "",
    config: ConfigOpt = None,
    as_json: JsonFlag = False,
) -> None:
    """Copy the files into the store with their sha256 and add the image to the catalog.

    With --disk, the whole-disk image is converted once into gzip-compressed raw and
    recorded with its source format, size, both checksums and firmware. It must have
    cloud-init in an ext2/3/4 root (checked read-only), unless --no-cloud-init.
    """
    cfg = load(config)
    if no_cloud_init and disk is None:
        fail("--no-cloud-init applies to --disk images only", "drop it, or give --disk FILE")
    if disk is not None:
        if kernel or initrd or rootfs or kernel_args:
            fail("--disk takes no --kernel, --initrd, --rootfs or --kernel-args", "drop them")
        with handled():
            db, store = _open(cfg)
            try:
                out = add_disk_image(
                    db,
                    store,
                    name=name,
                    source=disk,
                    arch=arch,
                    os_template=os_template,
                    firmware=firmware,
                    configured_by="agent" if no_cloud_init else "cloud-init",
                    actor="cli:images",
                )
            finally:
                db.dispose()
        _print_added(out, store, as_json)
        return
    if kernel is None or initrd is None:
        fail("give --kernel and --initrd, or --disk", "images add NAME --disk FILE for a disk")
    files = {"kernel": kernel, "initrd": initrd}
    if rootfs is not None:
        files["rootfs"] = rootfs
    with handled():
        db, store = _open(cfg)
        with db.transaction() as session:
            out = service.add_image(
                session,
                store,
                name=name,
                files=files,
                arch=arch,
                kind=kind,
                kernel_args=kernel_args,
                os_template=os_template,
                actor="cli:images",
            )
        db.dispose()
    _print_added(out, store, as_json)


def _print_added(out: ImageOut, store: ImageStore, as_json: bool) -> None:
    if as_json:
        emit(out.model_dump(mode="json"), True)
        return
    console.print(f"image {out.name} stored in {store.folder(out.name)}")
    if out.disk:
        console.print(
            f"  disk: {out.disk} from {out.source_format}, {out.virtual_size} bytes raw, "
            f"firmware {out.firmware}"
        )
        console.print(f"  raw: sha256 {out.raw_sha256}")
        os_name = f"{out.os_family} {out.os_version}".strip() or "unknown"
        found = f", {out.cloud_init}" if out.cloud_init else ""
        console.print(f"  os: {os_name}; configured by {out.configured_by}{found}")
    for role, digest in sorted(out.sha256.items()):
        console.print(f"  {role}: sha256 {digest}")


@app.command("list")
def list_(config: ConfigOpt = None, as_json: JsonFlag = False) -> None:
    """List the catalog."""
    cfg = load(config)
    with handled():
        db, _ = _open(cfg)
        with db.read_session() as session:
            rows = [i.model_dump(mode="json") for i in service.list_images(session)]
        db.dispose()
    emit(rows, as_json, columns=LIST_COLUMNS)


@app.command("show")
def show(name: str, config: ConfigOpt = None, as_json: JsonFlag = False) -> None:
    """One image with every catalog field (checksums, disk format, sizes, firmware)."""
    cfg = load(config)
    with handled():
        db, _ = _open(cfg)
        with db.read_session() as session:
            out = service.get_image(session, name).model_dump(mode="json")
        db.dispose()
    if as_json:
        emit(out, True)
        return
    sums = out.pop("sha256")
    out.update({f"sha256 {role}": digest for role, digest in sorted(sums.items())})
    emit([{"field": k, "value": v} for k, v in out.items()], False, columns=["field", "value"])


@app.command("verify")
def verify(
    name: Annotated[str | None, typer.Argument(help="One image; all when omitted")] = None,
    config: ConfigOpt = None,
    as_json: JsonFlag = False,
) -> None:
    """Re-hash the stored files against the catalog; exits 1 if any differs or is missing."""
    cfg = load(config)
    with handled():
        db, store = _open(cfg)
        with db.read_session() as session:
            results = service.verify_images(session, store, name)
        db.dispose()
    if as_json:
        emit([{"name": r.name, "ok": r.ok, "problems": r.problems} for r in results], True)
    else:
        for r in results:
            if r.ok:
                console.print(text("ok", "green"), r.name)
            else:
                err_console.print(text("FAILED", "bold red"), r.name)
                for problem in r.problems:
                    err_console.print(f"  - {problem}")
    bad = [r.name for r in results if not r.ok]
    if bad:
        fail(
            f"{len(bad)} image(s) failed verification: {', '.join(bad)}",
            "re-add the image from its source files (images delete, then images add)",
        )


@app.command("delete")
def delete(name: str, config: ConfigOpt = None) -> None:
    """Remove an image and its files; refused while an allocation references it."""
    cfg = load(config)
    with handled():
        db, store = _open(cfg)
        with db.transaction() as session:
            service.delete_image(session, name, actor="cli:images")
        db.dispose()
        store.remove(name)  # only after the row is gone for good
    console.print(f"image {name} deleted")
