"""Register a whole-disk image: convert it into the store, then record the catalog row.

The conversion (tens of seconds for a 2 GiB image) runs with no database
transaction open, because a SQLite write transaction (``BEGIN IMMEDIATE``) would hold
every other writer of the daemon for that long. The order is: check the name and
options in a read session; convert into a temporary store folder that is renamed
into place only when complete; record the row in one short write transaction; and
if that fails (say the name was taken meanwhile), remove the stored folder again.
A refused source leaves neither a folder nor a row.

A deploy configures the written OS through cloud-init: it writes a NoCloud seed
config into the image's root, and cloud-init fetches the deploy's seed (SSH keys,
hostname) and phones home with the host key. An image without cloud-init would
never call back, so while converting, the raw image is looked into
(:mod:`provisiond.netboot.disk_inspect`, read-only, no mounts) and one whose root
has no cloud-init, has it disabled, or cannot be read (not ext2/3/4) is refused,
unless the operator registers it as ``configured_by="agent"``: an image that phones
home by itself (README, "Disk images"). What was found (cloud-init, OS) is recorded.
"""

from __future__ import annotations

from pathlib import Path

from provisiond.crud import ensure_name_free
from provisiond.db import Database
from provisiond.inventory.images import create_image, validated_as
from provisiond.models import Image
from provisiond.netboot.disk_convert import ConvertedDisk, DiskImageRefused, convert
from provisiond.netboot.disk_inspect import (
    CLOUD_CONFIG,
    CLOUD_INIT_DISABLED,
    CLOUD_INIT_PROGRAMS,
    DiskContents,
    inspect_disk,
    require_debugfs,
)
from provisiond.netboot.images import ImageStore
from provisiond.schemas.catalog import DiskImageIn, ImageOut

#: Placeholder checksum for validating the options before anything is converted.
_UNKNOWN = "0" * 64
#: The way out, in every refusal for want of cloud-init.
_NO_CLOUD_INIT = (
    "or, if the image phones home by itself, register it with --no-cloud-init "
    "(configured_by agent; README, 'Disk images')"
)


def add_disk_image(
    db: Database,
    store: ImageStore,
    *,
    name: str,
    source: Path,
    arch: str = "x86_64",
    os_template: str = "",
    firmware: str = "both",
    configured_by: str = "cloud-init",
    actor: str,
) -> ImageOut:
    """Convert ``source`` to ``<name>/disk.raw.gz`` in ``store`` and add it to the catalog.

    With ``configured_by="cloud-init"`` (the default) the image must have cloud-init
    in an ext2/3/4 root; otherwise :class:`DiskImageRefused` and nothing is stored.
    """

    def spec(disk: ConvertedDisk | None, found: DiskContents | None = None) -> DiskImageIn:
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
                "configured_by": configured_by,
                "cloud_init": found.cloud_init if found else "",
                "os_family": found.os_family if found else "",
                "os_version": found.os_version if found else "",
            },
        )

    spec(None)  # refuse bad options before any work
    require_debugfs()
    with db.read_session() as session:
        ensure_name_free(session, Image, name, kind="image")

    def build(folder: Path) -> tuple[dict[str, str], tuple[ConvertedDisk, DiskContents]]:
        found: list[DiskContents] = []

        def look(raw: Path) -> None:
            contents = inspect_disk(raw)
            if configured_by == "cloud-init":
                check_cloud_init(source, contents)
            found.append(contents)

        disk = convert(source, folder, on_raw=look)
        return {disk.file: disk.sha256}, (disk, found[0])

    converted, contents = store.add_built(name, build)
    try:
        with db.transaction() as session:
            return create_image(session, spec(converted, contents), actor=actor)
    except BaseException:
        store.remove(name)
        raise


def check_cloud_init(source: Path, found: DiskContents) -> None:
    """Refuse an image whose root cannot take the deploy's NoCloud seed config."""
    root = found.root
    if root is None:
        raise DiskImageRefused(
            f"{source}: no ext2/3/4 root file system (one with /etc) found to check for "
            f"cloud-init; the image has {found.describe()}",
            hint="only ext2/3/4 roots on MBR or GPT partitions can be read here (not XFS, "
            f"Btrfs or LVM); {_NO_CLOUD_INIT}",
            code="cloud_init_not_found",
        )
    where = f"its {found.os_family or 'Linux'} root file system (partition {root.number})"
    if not found.cloud_init:
        raise DiskImageRefused(
            f"{source} has no cloud-init: none of {', '.join(CLOUD_INIT_PROGRAMS)} in {where}. "
            "A deploy writes /etc/cloud/cloud.cfg.d/99_provisiond.cfg for cloud-init to "
            "fetch the deploy's SSH keys and phone home; without it the machine never "
            "calls back",
            hint=f"install cloud-init in the image (e.g. apt-get install cloud-init), "
            f"{_NO_CLOUD_INIT}",
            code="cloud_init_not_found",
        )
    if not found.cloud_config:
        raise DiskImageRefused(
            f"{source}: cloud-init ({found.cloud_init}) is there but {CLOUD_CONFIG} is not a "
            f"directory in {where}; the deploy writes its seed config into "
            f"{CLOUD_CONFIG}/cloud.cfg.d",
            hint=f"reinstall cloud-init in the image, {_NO_CLOUD_INIT}",
            code="cloud_init_not_found",
        )
    if found.cloud_init_disabled:
        raise DiskImageRefused(
            f"{source}: cloud-init ({found.cloud_init}) is disabled by "
            f"{CLOUD_INIT_DISABLED} in {where}, so it would not fetch the deploy's seed",
            hint=f"remove {CLOUD_INIT_DISABLED} from the image, {_NO_CLOUD_INIT}",
            code="cloud_init_disabled",
        )
