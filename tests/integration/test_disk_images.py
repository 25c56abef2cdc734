"""Whole-disk images: each source format converts to disk.raw.gz with the right checksums.

Real tools throughout: ``qemu-img`` makes and checks the images, ``gzip``/``xz``/``zstd``
compress them, and the served file goes through the real app with a Range request.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import subprocess
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlmodel import select

from provisiond.container import Services
from provisiond.db import Database
from provisiond.inventory.disk_images import add_disk_image
from provisiond.models import Image
from provisiond.netboot.disk_convert import DiskImageRefused
from provisiond.netboot.images import ImageStore
from tests.api.test_boot_routes import boot_app
from tests.support.disk_images import MARKER, ext4, mbr_disk, root_tree

SIZE = 5 << 20


def make_raw(path: Path) -> bytes:
    """A 5 MiB sparse disk: an MBR with one partition (an ext4 Debian-like root with
    cloud-init and a random marker file) from 1 MiB to 4 MiB, a marker at the end."""
    build = path.parent / f"{path.name}.build"
    build.mkdir()
    root = ext4(build / "root.ext4", 3 << 20, root_tree(build))
    mbr_disk(path, SIZE, root)
    with path.open("r+b") as disk:
        disk.truncate(SIZE)
        disk.seek(SIZE - len(MARKER))
        disk.write(MARKER[::-1])
    return path.read_bytes()


def make_source(tmp_path: Path, fmt: str) -> tuple[Path, bytes]:
    raw_path = tmp_path / "disk.img"
    raw = make_raw(raw_path)
    if fmt == "raw":
        return raw_path, raw
    if fmt == "qcow2":
        out = tmp_path / "disk.qcow2"
        subprocess.run(
            ["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw_path), str(out)],
            check=True,
        )
        return out, raw
    tool, suffix = {"gzip": ("gzip", ".gz"), "xz": ("xz", ".xz"), "zstd": ("zstd", ".zst")}[fmt]
    out = tmp_path / f"disk.img{suffix}"
    with out.open("wb") as handle:
        subprocess.run([tool, "-c", str(raw_path)], stdout=handle, check=True)
    return out, raw


def stored_names(store: ImageStore) -> list[str]:
    return sorted(p.name for p in store.root.iterdir()) if store.root.exists() else []


@pytest.mark.parametrize("fmt", ["raw", "gzip", "xz", "zstd", "qcow2"])
def test_each_format_registers_and_serves_the_raw_bytes(
    sqlite_db: Database, tmp_path: Path, fmt: str
) -> None:
    source, raw = make_source(tmp_path, fmt)
    store = ImageStore(tmp_path / "images")
    out = add_disk_image(sqlite_db, store, name="deb", source=source, firmware="uefi", actor="test")
    served = (store.root / "deb" / "disk.raw.gz").read_bytes()
    assert gzip.decompress(served) == raw
    assert out.kind == "disk" and out.disk == "deb/disk.raw.gz" and out.source_format == fmt
    assert out.virtual_size == out.min_disk_size == SIZE and out.firmware == "uefi"
    assert out.raw_sha256 == hashlib.sha256(raw).hexdigest()
    assert out.sha256 == {"disk": hashlib.sha256(served).hexdigest()}
    assert (out.configured_by, out.cloud_init) == ("cloud-init", "/usr/bin/cloud-init")
    assert (out.os_family, out.os_version) == ("debian", "12")
    manifest = json.loads((store.root / "deb" / ".sha256.json").read_text())
    assert manifest == {"disk.raw.gz": out.sha256["disk"]}
    assert stored_names(store) == ["deb"]  # no temporary folder or raw copy left
    assert sorted(p.name for p in (store.root / "deb").iterdir()) == [
        ".sha256.json",
        "disk.raw.gz",
    ]
    with sqlite_db.read_session() as s:
        row = s.exec(select(Image)).one()
        assert (row.raw_sha256, row.virtual_size, row.kernel) == (out.raw_sha256, SIZE, "")


def corrupt_gzip(tmp_path: Path) -> Path:
    path, _ = make_source(tmp_path, "gzip")
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    return path


def truncated_qcow2(tmp_path: Path) -> Path:
    path, _ = make_source(tmp_path, "qcow2")
    with path.open("r+b") as handle:
        handle.truncate(path.stat().st_size * 2 // 3)
    return path


def empty(tmp_path: Path) -> Path:
    path = tmp_path / "empty.img"
    path.write_bytes(b"")
    return path


def not_a_disk(tmp_path: Path) -> Path:
    path = tmp_path / "rootfs.ext4"
    path.write_bytes(bytes(1 << 20))  # no boot signature
    return path


def mislabelled(tmp_path: Path) -> Path:
    path = tmp_path / "disk.img.xz"
    path.write_bytes(make_raw(tmp_path / "plain.img"))
    return path


def torn_sector(tmp_path: Path) -> Path:
    raw = make_raw(tmp_path / "whole.img")
    path = tmp_path / "torn.img.gz"
    path.write_bytes(gzip.compress(raw[:-100]))
    return path


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (corrupt_gzip, "does not decompress: gzip exited 1"),
        (truncated_qcow2, "refused by 'qemu-img check' (exit 2)"),
        (empty, "is empty"),
        (not_a_disk, "no MBR/GPT boot signature"),
        (mislabelled, "is named .xz but holds raw data"),
        (torn_sector, "not a whole number of 512-byte sectors"),
    ],
)
def test_a_bad_source_is_refused_and_leaves_nothing(
    sqlite_db: Database, tmp_path: Path, make: object, reason: str
) -> None:
    assert callable(make)
    source = make(tmp_path)
    store = ImageStore(tmp_path / "images")
    with pytest.raises(DiskImageRefused) as exc:
        add_disk_image(sqlite_db, store, name="deb", source=source, actor="test")
    assert reason in exc.value.message and exc.value.hint
    assert stored_names(store) == []
    with sqlite_db.read_session() as s:
        assert s.exec(select(Image)).all() == []


def test_served_file_answers_range_requests(services: Services, tmp_path: Path) -> None:
    source, raw = make_source(tmp_path, "xz")
    store = ImageStore(services.settings.images_path)
    out = add_disk_image(services.db, store, name="deb", source=source, actor="test")
    served = (store.root / "deb" / "disk.raw.gz").read_bytes()
    with TestClient(boot_app(services), client=("10.0.0.5", 40000)) as client:
        whole = client.get("/images/deb/disk.raw.gz")
        assert whole.status_code == 200 and gzip.decompress(whole.content) == raw
        assert whole.headers["etag"] == f'"{out.sha256["disk"]}"'
        half = len(served) // 2
        part = client.get("/images/deb/disk.raw.gz", headers={"Range": f"bytes={half}-"})
        assert part.status_code == 206 and part.content == served[half:]
        assert part.headers["content-range"] == f"bytes {half}-{len(served) - 1}/{len(served)}"
