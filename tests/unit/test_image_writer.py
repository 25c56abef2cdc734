"""The image writer's pieces that need no network and no block device: root disk
selection from a fake /sys tree, the command line, inflating onto a file, and the
configure step's parts (the ext superblock, sysfs partitions, the cloud-init seed)."""

from __future__ import annotations

import gzip
import json
import os
import random
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from provisiond.agent import image_writer as iw

GIB = 1 << 30
SHA = "a" * 64


def disk(root: Path, name: str, gib: float, **files: str) -> None:
    """/sys/block/<name> with ``size`` in sectors and the files given (``device_model``
    is device/model, ``scsi`` an hctl directory under device/scsi_device)."""
    base = root / "sys/block" / name
    base.mkdir(parents=True)
    (base / "size").write_text(f"{int(gib * GIB) // 512}\n")
    for key, value in files.items():
        if key == "scsi":
            (base / "device/scsi_device" / value).mkdir(parents=True)
            continue
        path = base / key.replace("device_", "device/").replace("queue_", "queue/")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(value + "\n")


@pytest.fixture
def sysfs(tmp_path: Path) -> Path:
    """Three disks a rack machine might have, plus block devices that are not disks."""
    disk(tmp_path, "sda", 480, device_model="SAMSUNG MZ7LH480 ", device_vendor="ATA     ",
         device_wwid="naa.5002538e4023a1b2", queue_rotational="0", scsi="0:0:0:0",
         device_serial="S4F1NX0M")  # fmt: skip
    disk(tmp_path, "sdb", 4000, device_model="ST4000NM0035", device_vendor="SEAGATE",
         device_wwid="naa.5000c500b1c2d3e4", queue_rotational="1", scsi="1:0:0:0",
         device_serial="ZC1ABCDE")  # fmt: skip
    disk(tmp_path, "vda", 20, serial="virt-root", queue_rotational="1", device_vendor="0x1af4")
    for name in ("loop0", "ram0", "zram0", "sr0", "dm-0", "fd0", "nbd0"):
        disk(tmp_path, name, 50)
    disk(tmp_path, "sdc", 0)  # an empty card reader
    return tmp_path


def select(sysfs: Path, hints: dict[str, Any], min_bytes: int = 2 * GIB) -> str:
    chosen, _why = iw.select_disk(iw.read_disks(str(sysfs)), hints, min_bytes)
    return str(chosen["name"])


def test_disks_are_read_from_sysfs(sysfs: Path) -> None:
    disks = {d["name"]: d for d in iw.read_disks(str(sysfs))}
    assert sorted(disks) == ["sda", "sdb", "vda"]  # no loop, ram, optical, dm, empty...
    assert disks["sda"] == {
        "name": "sda", "size": 480 * GIB, "model": "SAMSUNG MZ7LH480", "vendor": "ATA",
        "serial": "S4F1NX0M", "wwn": "naa.5002538e4023a1b2", "rotational": False,
        "hctl": "0:0:0:0", "read_only": False,
    }  # fmt: skip
    assert disks["vda"]["serial"] == "virt-root"  # virtio: /sys/block/vda/serial
    assert (disks["vda"]["hctl"], disks["vda"]["wwn"], disks["vda"]["model"]) == ("", "", "")
    assert iw.read_disks(str(sysfs / "nowhere")) == []


def test_without_hints_the_smallest_disk_big_enough_wins(sysfs: Path) -> None:
    chosen, why = iw.select_disk(iw.read_disks(str(sysfs)), {}, 2 * GIB)
    assert chosen["name"] == "vda"
    assert why == f"smallest disk >= {2 * GIB} bytes (of 3 seen)"
    assert select(sysfs, {}, 21 * GIB) == "sda"  # vda is too small now
    disk(sysfs, "vdb", 20)
    assert select(sysfs, {}) == "vda"  # a tie goes by name


@pytest.mark.parametrize(
    ("hints", "chosen"),
    [
        ({"name": "sdb"}, "sdb"),
        ({"name": "/dev/sdb"}, "sdb"),
        ({"size": 480}, "sda"),
        ({"size": "480"}, "sda"),
        ({"size": ">= 1000"}, "sdb"),
        ({"size": "<= 20"}, "vda"),
        ({"size": "> 20"}, "sda"),  # the first by name of sda and sdb
        ({"size": "< 480"}, "vda"),
        ({"size": "== 4000"}, "sdb"),
        ({"size": "!= 480"}, "sdb"),
        ({"serial": "  zc1abcde "}, "sdb"),
        ({"serial": "virt-root"}, "vda"),
        ({"wwn": "0x5000C500B1C2D3E4"}, "sdb"),
        ({"wwn": "naa.5002538e4023a1b2"}, "sda"),
        ({"model": "samsung  mz7lh480"}, "sda"),
        ({"model": "s== ST4000NM0035"}, "sdb"),
        ({"vendor": "seagate"}, "sdb"),
        ({"rotational": False}, "sda"),
        ({"rotational": "true"}, "sdb"),
        ({"rotational": True, "size": "<= 100"}, "vda"),
        ({"hctl": "1:0:0:0"}, "sdb"),
        ({"vendor": "ATA", "rotational": False, "size": 480, "serial": "S4F1NX0M"}, "sda"),
    ],
)
def test_each_root_device_hint(sysfs: Path, hints: dict[str, Any], chosen: str) -> None:
    assert select(sysfs, hints) == chosen


def test_all_hints_must_match_and_the_refusal_names_every_disk(sysfs: Path) -> None:
    with pytest.raises(iw.Failure) as caught:
        select(sysfs, {"vendor": "SEAGATE", "rotational": False})
    failure = caught.value
    assert failure.code == "no_disk"
    assert failure.message.startswith('no disk fits (hints {"vendor": "SEAGATE", "rotational"')
    assert "sda: vendor 'ATA' is not 'SEAGATE'" in failure.message
    assert "sdb: rotational True is not False" in failure.message
    assert "vda: vendor '0x1af4' is not 'SEAGATE'" in failure.message
    rejected = {d["name"]: d["rejected"] for d in failure.details["disks"]}
    assert sorted(rejected) == ["sda", "sdb", "vda"] and all(rejected.values())
    json.dumps(failure.details)  # goes out on stdout as is


def test_a_matching_disk_that_is_too_small_is_refused(sysfs: Path) -> None:
    with pytest.raises(iw.Failure) as caught:
        select(sysfs, {"name": "vda"}, 30 * GIB)
    assert caught.value.code == "no_disk"
    assert f"vda: too small: {20 * GIB} < {30 * GIB} bytes" in caught.value.message
    assert "sda: name 'sda' is not 'vda'" in caught.value.message
    assert "size '20 GiB'" not in caught.value.message


def test_a_read_only_disk_is_never_chosen(sysfs: Path) -> None:
    (sysfs / "sys/block/vda/ro").write_text("1\n")
    assert select(sysfs, {}) == "sda"


def test_no_disks_at_all(tmp_path: Path) -> None:
    with pytest.raises(iw.Failure, match="no disks") as caught:
        iw.select_disk([], {}, GIB)
    assert caught.value.details["disks"] == []


@pytest.mark.parametrize("size", ["~5", ">= x", True, "s== 5", [5]])
def test_a_malformed_size_hint_is_a_bad_argument(sysfs: Path, size: Any) -> None:
    with pytest.raises(iw.Failure) as caught:
        select(sysfs, {"size": size})
    assert caught.value.code == "bad_arguments" and "size hint" in caught.value.message


def run_main(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, list[Any]]:
    status = iw.main(argv)
    out = capsys.readouterr().out
    return status, [json.loads(line) for line in out.splitlines()]


BASE = ["--url", "http://10.0.0.1:8080/images/deb/disk.raw.gz", "--sha256", SHA]


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["--sha256", SHA, "--raw-size", "512"], "--url"),
        ([*BASE], "--raw-size"),
        ([*BASE, "--raw-size", "lots"], "invalid int value"),
        ([*BASE, "--raw-size", "0"], "--raw-size must be > 0"),
        ([*BASE, "--raw-size", "512", "--min-disk", "-1"], "--min-disk >= 0"),
        (["--url", "http://h/x", "--sha256", "abc", "--raw-size", "512"], "64 hex digits"),
        (["--url", "ftp://h/x", "--sha256", SHA, "--raw-size", "512"], "ftp://h/x"),
        (["--url", "http://h/a b", "--sha256", SHA, "--raw-size", "512"], "http(s) URL"),
        ([*BASE, "--raw-size", "512", "--seed-url", "http://h/#x"], "http://h/#x"),
        ([*BASE, "--raw-size", "512", "--seed-url", 'http://h/"x'], "quotes"),
        ([*BASE, "--raw-size", "512", "--tries", "0"], "--tries"),
        ([*BASE, "--raw-size", "512", "--timeout", "0"], "--timeout"),
        ([*BASE, "--raw-size", "512", "--hints", "{name: sda}"], "--hints"),
        ([*BASE, "--raw-size", "512", "--hints", '["sda"]'], "--hints"),
        ([*BASE, "--raw-size", "512", "--hints", '{"by_label": "root"}'], "'wwn'"),
        ([*BASE, "--raw-size", "512", "--no-such-option"], "--no-such-option"),
    ],
)
def test_argument_errors_are_one_json_line(
    argv: list[str], says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    status, events = run_main(argv, capsys)
    assert status == 1
    assert len(events) == 1 and events[0]["event"] == "error"
    assert events[0]["code"] == "bad_arguments" and says in events[0]["message"]


def test_no_fitting_disk_fails_before_anything_is_written(
    sysfs: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [*BASE, "--raw-size", str(5000 * GIB), "--sys-root", str(sysfs)]
    status, events = run_main(argv, capsys)
    assert status == 1 and [e["event"] for e in events] == ["error"]
    assert events[0]["code"] == "no_disk"
    assert [d["name"] for d in events[0]["disks"]] == ["sda", "sdb", "vda"]
    assert all("too small" in d["rejected"] for d in events[0]["disks"])


class Chunks:
    """A served file cut into pieces of varied size (the network is another test's)."""

    def __init__(self, data: bytes, sizes: Iterator[int]) -> None:
        self.data, self.sizes, self.offset = data, sizes, 0

    def chunks(self) -> Iterator[bytes]:
        while self.offset < len(self.data):
            piece = self.data[self.offset : self.offset + next(self.sizes)]
            self.offset += len(piece)
            yield piece


def inflate_onto_file(path: Path, gz: bytes, limit: int, *, block_device: bool) -> iw.DiskWriter:
    rng = random.Random(5)
    sizes = iter(lambda: rng.choice((1, 7, 4096, 65536, 1 << 20, 3 << 20)), None)
    fd = os.open(path, os.O_WRONLY)
    try:
        writer = iw.DiskWriter(fd, limit, block_device=block_device)
        assert iw.write_image(Chunks(gz, sizes), writer) == ""  # type: ignore[arg-type]
        return writer
    finally:
        os.close(fd)


@pytest.mark.parametrize("block_device", [False, True])
def test_inflating_onto_a_file_overwrites_every_byte(tmp_path: Path, block_device: bool) -> None:
    """Zeros too: with ``block_device`` the ioctl fails on a file and zeros are written."""
    rng = random.Random(3)
    raw = bytes(9 << 20) + rng.randbytes(5 << 20) + bytes(2 << 20) + b"tail" + bytes(508)
    gz = gzip.compress(raw[: 7 << 20], 9) + gzip.compress(raw[7 << 20 :], 1)  # two members
    target = tmp_path / "disk"
    target.write_bytes(b"\xa5" * (len(raw) + 4096))
    writer = inflate_onto_file(target, gz, len(raw), block_device=block_device)
    assert (writer.raw, writer.pos, writer.zeroed) == (len(raw), len(raw), 0)
    assert writer.zeroout is False  # BLKZEROOUT refused by a regular file, or never tried
    data = target.read_bytes()
    assert data[: len(raw)] == raw and data[len(raw) :] == b"\xa5" * 4096


def test_inflating_stops_writing_at_the_raw_size(tmp_path: Path) -> None:
    raw = random.Random(4).randbytes(6 << 20)
    target = tmp_path / "disk"
    target.write_bytes(b"\xa5" * (8 << 20))
    writer = inflate_onto_file(target, gzip.compress(raw, 1), 4 << 20, block_device=False)
    assert writer.raw == len(raw)  # counted on, to report the real size
    assert target.read_bytes()[4 << 20 :] == b"\xa5" * (4 << 20)  # but never written past


def test_wipe_zeroes_both_ends_of_the_disk_and_of_the_image(tmp_path: Path) -> None:
    target = tmp_path / "disk"
    target.write_bytes(b"\xa5" * (16 << 20))
    fd = os.open(target, os.O_WRONLY)
    try:
        wiped = iw.wipe(fd, 16 << 20, 10 << 20)
    finally:
        os.close(fd)
    assert wiped == [[0, 1 << 20], [9 << 20, 1 << 20], [15 << 20, 1 << 20]]
    data = target.read_bytes()
    for start, length in wiped:
        assert data[start : start + length] == bytes(length)
    assert data.count(0) == 3 << 20


def test_the_ext_superblock_magic(tmp_path: Path) -> None:
    plain = tmp_path / "zeros"
    plain.write_bytes(bytes(4096))
    assert not iw.is_ext(str(plain))
    made = bytearray(4096)
    made[1080:1082] = (0xEF53).to_bytes(2, "little")
    (tmp_path / "magic").write_bytes(made)
    assert iw.is_ext(str(tmp_path / "magic"))
    (tmp_path / "short").write_bytes(b"x" * 1081)
    assert not iw.is_ext(str(tmp_path / "short"))
    assert not iw.is_ext(str(tmp_path / "missing"))
    if shutil.which("mkfs.ext4"):
        real = tmp_path / "real.ext4"
        subprocess.run(
            ["mkfs.ext4", "-q", "-F", str(real), "8M"], capture_output=True, timeout=60, check=True
        )
        assert iw.is_ext(str(real))


def test_partitions_come_from_sysfs_in_number_order(tmp_path: Path) -> None:
    base = tmp_path / "sys/block/nvme0n1"
    for number in (1, 2, 10):
        part = base / f"nvme0n1p{number}"
        part.mkdir(parents=True)
        (part / "partition").write_text(f"{number}\n")
        (part / "dev").write_text(f"259:{number}\n")
    (base / "queue").mkdir()  # not a partition
    (base / "holders").mkdir()
    assert iw.partitions("nvme0n1", str(tmp_path)) == [
        ("nvme0n1p1", "259:1"), ("nvme0n1p2", "259:2"), ("nvme0n1p10", "259:10"),
    ]  # fmt: skip


def root_tree(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    (root / "etc/cloud/cloud.cfg.d").mkdir(parents=True)
    (root / "etc/cloud/cloud.cfg.d/90_dpkg.cfg").write_text("datasource_list: [ NoCloud ]\n")
    (root / "var/lib/cloud/instances/i-old").mkdir(parents=True)
    (root / "var/lib/cloud/instances/i-old/user-data.txt").write_text("#cloud-config\n")
    (root / "var/lib/cloud/instance").symlink_to("/var/lib/cloud/instances/i-old")
    (root / "var/lib/cloud/seed").mkdir()
    return root


def test_the_seed_config_is_written_and_old_instances_forgotten(tmp_path: Path) -> None:
    root = root_tree(tmp_path)
    path = Path(iw.write_seed(str(root), "http://10.0.0.1:8080/meta/u-1/"))
    assert path == root / "etc/cloud/cloud.cfg.d/99_provisiond.cfg"
    assert path.read_text() == (
        "# written by provisiond at deploy time\n"
        "datasource_list: [NoCloud]\n"
        "datasource:\n"
        "  NoCloud:\n"
        "    seedfrom: http://10.0.0.1:8080/meta/u-1/\n"
        "manual_cache_clean: true\n"
    )
    assert path.stat().st_mode & 0o777 == 0o644
    assert sorted(p.name for p in path.parent.iterdir()) == ["90_dpkg.cfg", "99_provisiond.cfg"]
    cloud = root / "var/lib/cloud"
    assert sorted(p.name for p in cloud.iterdir()) == ["seed"]  # instance(s) gone, seed kept
    iw.write_seed(str(root), "http://10.0.0.2/meta/u-2/")  # a redeploy: replaced, not added
    assert "seedfrom: http://10.0.0.2/meta/u-2/\n" in path.read_text()


def test_a_root_without_cloud_init_is_refused(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    with pytest.raises(iw.Failure, match="no /etc/cloud") as caught:
        iw.write_seed(str(tmp_path), "http://h/meta/x/")
    assert caught.value.code == "configure_failed"
    assert not (tmp_path / "etc/cloud").exists()


def test_the_writer_is_one_stdlib_file() -> None:
    """It is uploaded alone into a ramdisk with python3.11 and its standard library."""
    source = Path(iw.__file__).read_text()
    assert "provisiond" not in {
        line.split()[1].split(".")[0]
        for line in source.splitlines()
        if line.startswith(("import ", "from "))
    }
    done = subprocess.run(
        ["python3", "-I", "-S", iw.__file__, "--help"], capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0 and "--raw-size" in done.stdout
