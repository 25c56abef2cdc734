"""Register a whole-disk image: convert it into the store, then record the catalog row.

The conversion (tens of seconds for a 2 GiB image) runs with no database
transaction open, because a SQLite write transaction (``BEGIN IMMEDIATE``) would hold
every other writer of the daemon for that long. The order is: check the name and
options in a read session; convert into a temporary store folder that is renamed
into place only when complete; record the row in one short write transaction; and
if that fails (say the name was taken meanwhile), remove the stored folder again.
A refused source leaves neither a folder nor a row.
"""

from __future__ import annotations

from pathlib import Path

from provisiond.crud import ensure_name_free
from provisiond.db import Database
from provisiond.inventory.images import create_image, validated_as
from provisiond.models import Image
from provisiond.netboot.disk_convert import ConvertedDisk, convert
from provisiond.netboot.images import ImageStore
from provisiond.schemas.catalog import DiskImageIn, ImageOut

#: Placeholder checksum for validating the options before anything is converted.
_UNKNOWN = "0" * 64


def add_disk_image(
    db: Database,
    store: ImageStore,
    *,
    name: str,
    source: Path,
    arch: str = "x86_64",
    os_template: str = "",
    firmware: str = "both",
    actor: str,
) -> ImageOut:
    """Convert ``source`` to ``<name>/disk.raw.gz`` in ``store`` and add it to the catalog."""

    def spec(disk: ConvertedDisk | None) -> DiskImageIn:
        return validated_as(
            DiskImageIn,
            {
                "name": name,
                "arch": arch,
                "disk": f"{name}/{disk.file if disk else 'disk.raw.gz'}",
                "source_format": disk.source_format if disk else "raw",
                "virtual_size": disk.virtual_size if disk else 1,
                "min_disk_size": disk.virtual_size if disk else 1,
                "raw_sha256": disk.raw_sha256 if disk else _UNKNOWN,
                "sha256": {"disk": disk.sha256 if disk else _UNKNOWN},
                "os_template": os_template,
                "firmware": firmware,
            },
        )

    spec(None)  # refuse bad options before any work
    with db.read_session() as session:
        ensure_name_free(session, Image, name, kind="image")

    def build(folder: Path) -> tuple[dict[str, str], ConvertedDisk]:
        disk = convert(source, folder)
        return {disk.file: disk.sha256}, disk

    converted = store.add_built(name, build)
    try:
        with db.transaction() as session:
            return create_image(session, spec(converted), actor=actor)
    except BaseException:
        store.remove(name)
        raise
