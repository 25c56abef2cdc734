"""Disk images without cloud-init are refused at registration, unless configured by the agent.

Real images throughout (tests/support/disk_images.py: ``mkfs.ext4 -d`` roots in GPT
or MBR partitions, no root, no mounts) and the real ``debugfs`` reading them at their
partition offsets, as registration does on a host kernel without partition support.
"""

from __future__ import annotations

import glob
import gzip
import subprocess
from pathlib import Path

import pytest
from sqlmodel import select

from provisiond.container import Services
from provisiond.db import Database
from provisiond.inventory.disk_images import add_disk_image
from provisiond.models import Image
from provisiond.netboot.disk_convert import DiskImageRefused
from provisiond.netboot.disk_inspect import inspect_disk
from provisiond.netboot.images import ImageStore
from tests.conftest import Api
from tests.support.disk_images import MIB, debian_like, ext4, gpt_disk, mbr_disk, root_tree

RACK_IMAGE = "/var/cache/provisiond/guest-images/disk-*/debian-12.raw"


def stored(store: ImageStore) -> list[str]:
    return sorted(p.name for p in store.root.rglob("*")) if store.root.exists() else []


def rows(db: Database) -> list[Image]:
    with db.read_session() as s:
        return list(s.exec(select(Image)).all())


@pytest.mark.parametrize(
    ("cloud_init", "found"),
    [
        ("file", "/usr/bin/cloud-init"),
        ("link", "/usr/bin/cloud-init"),  # relative, then absolute symlink
        ("long-link", "/usr/bin/cloud-init"),  # a slow symlink (target in a block)
        ("dangling", ""),
        ("none", ""),
    ],
)
def test_inspect_reads_the_gpt_root_through_debugfs(
    tmp_path: Path, cloud_init: str, found: str
) -> None:
    contents = inspect_disk(debian_like(tmp_path, cloud_init=cloud_init))
    assert contents.table == "gpt"
    assert [p.number for p in contents.partitions] == [1, 2, 3]
    assert contents.partitions[0].type == "21686148-6449-6e6f-744e-656564454649"  # BIOS boot
    assert contents.root is not None and contents.root.number == 3
    assert contents.root.offset == 3 * MIB
    assert (contents.os_family, contents.os_version) == ("debian", "12")  # via a symlink
    assert contents.cloud_init == found and not contents.cloud_init_disabled
    assert contents.cloud_config == (cloud_init != "none")


@pytest.mark.parametrize("logical", [False, True])
def test_inspect_reads_mbr_primary_and_logical_partitions(tmp_path: Path, logical: bool) -> None:
    root = ext4(tmp_path / "root.ext4", 3 * MIB, root_tree(tmp_path))
    offset = mbr_disk(tmp_path / "disk.img", 6 * MIB, root, logical=logical)
    contents = inspect_disk(tmp_path / "disk.img")
    assert contents.table == "mbr" and contents.root is not None
    assert (contents.root.number, contents.root.offset) == (5 if logical else 1, offset)
    assert contents.cloud_init == "/usr/bin/cloud-init"


def test_inspect_the_rack_debian_image() -> None:
    """The virtual rack's Debian 12 image, when built (rack disk-image build)."""
    found = sorted(glob.glob(RACK_IMAGE))
    if not found:
        pytest.skip("no cached rack disk image (provisiond rack disk-image build)")
    contents = inspect_disk(Path(found[-1]))
    assert contents.root is not None and contents.root.number == 3
    assert (contents.os_family, contents.os_version) == ("debian", "12")
    assert contents.cloud_init == "/usr/bin/cloud-init" and contents.cloud_config


def no_root(tmp_path: Path) -> Path:
    """A GPT whose only partition is not ext2/3/4 (an XFS or LVM root reads the same)."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    disk = tmp_path / "disk.img"
    gpt_disk(disk, 4 * MIB, [(2 * MIB, "8300", None)])
    return disk


@pytest.mark.parametrize(
    ("make", "code", "says"),
    [
        (lambda p: debian_like(p, cloud_init="none"), "cloud_init_not_found", "has no cloud-init"),
        (lambda p: debian_like(p, cloud_init="dangling"), "cloud_init_not_found", "partition 3"),
        (lambda p: debian_like(p, cloud_init="no-config"), "cloud_init_not_found", "/etc/cloud"),
        (lambda p: debian_like(p, disabled=True), "cloud_init_disabled", "cloud-init.disabled"),
        (no_root, "cloud_init_not_found", "no ext2/3/4 root file system"),
    ],
    ids=["absent", "dangling-link", "no-etc-cloud", "disabled", "no-ext4-root"],
)
@pytest.mark.parametrize("fmt", ["raw", "gzip"])
def test_an_image_without_usable_cloud_init_is_refused_and_leaves_nothing(
    sqlite_db: Database, tmp_path: Path, make: object, code: str, says: str, fmt: str
) -> None:
    assert callable(make)
    source = make(tmp_path / "build")
    if fmt == "gzip":
        source.with_suffix(".img.gz").write_bytes(gzip.compress(source.read_bytes(), 1))
        source = source.with_suffix(".img.gz")
    store = ImageStore(tmp_path / "images")
    with pytest.raises(DiskImageRefused) as exc:
        add_disk_image(sqlite_db, store, name="deb", source=source, actor="test")
    error = exc.value.to_dict()
    assert exc.value.status_code == 400 and set(error) == {"code", "message", "hint"}
    assert error["code"] == code and says in error["message"], error
    assert "--no-cloud-init" in error["hint"] and "README" in error["hint"]
    assert stored(store) == [] and rows(sqlite_db) == []  # no folder, raw copy or row


@pytest.mark.parametrize("make", [lambda p: debian_like(p, cloud_init="none"), no_root])
def test_configured_by_agent_skips_the_check_and_records_what_was_found(
    sqlite_db: Database, tmp_path: Path, make: object
) -> None:
    assert callable(make)
    source = make(tmp_path / "build")
    store = ImageStore(tmp_path / "images")
    out = add_disk_image(
        sqlite_db, store, name="deb", source=source, configured_by="agent", actor="test"
    )
    assert (out.configured_by, out.cloud_init) == ("agent", "")
    assert out.os_family == ("" if make is no_root else "debian")
    assert [r.configured_by for r in rows(sqlite_db)] == ["agent"]


def test_a_damaged_gpt_is_refused(sqlite_db: Database, tmp_path: Path) -> None:
    source = debian_like(tmp_path / "build")
    with source.open("r+b") as disk:
        disk.seek(512 + 40)  # first usable LBA, inside the CRC-protected header
        disk.write(b"\xff")
    with pytest.raises(DiskImageRefused) as exc:
        add_disk_image(sqlite_db, ImageStore(tmp_path / "images"), name="d", source=source,
                       configured_by="agent", actor="test")  # fmt: skip
    assert "no valid GPT header" in exc.value.message and "sgdisk -v" in exc.value.hint


def test_without_debugfs_registration_stops_before_converting(
    sqlite_db: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = debian_like(tmp_path / "build")
    bare = tmp_path / "bin"
    bare.mkdir()
    monkeypatch.setenv("PATH", str(bare))
    store = ImageStore(tmp_path / "images")
    with pytest.raises(DiskImageRefused) as exc:
        add_disk_image(sqlite_db, store, name="deb", source=source, actor="test")
    assert "debugfs is not installed" in exc.value.message
    assert "apt-get install e2fsprogs" in exc.value.hint
    assert not store.root.exists() and rows(sqlite_db) == []


def test_the_api_shows_what_registration_found(
    api: Api, services: Services, tmp_path: Path
) -> None:
    store = ImageStore(services.settings.images_path)
    add_disk_image(services.db, store, name="deb", source=debian_like(tmp_path), actor="test")
    r = api.ci.get("/api/v1/images/deb")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["configured_by"] == "cloud-init" and body["cloud_init"] == "/usr/bin/cloud-init"
    assert (body["os_family"], body["os_version"]) == ("debian", "12")
    live = api.ci.get("/api/v1/images").json()
    assert [i["name"] for i in live] == ["deb"]


def test_the_debugfs_offset_syntax_reads_a_partition_in_place(tmp_path: Path) -> None:
    """The e2fsprogs feature the inspection rests on: ``FILE?offset=BYTES``."""
    disk = debian_like(tmp_path)
    out = subprocess.run(
        ["debugfs", "-R", "cat /usr/lib/os-release", f"{disk}?offset={3 * MIB}"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert "ID=debian" in out.stdout
