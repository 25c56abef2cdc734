"""``provisiond images add|list|verify|delete`` as a subprocess on a real data dir."""

from __future__ import annotations

import gzip
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from provisiond.cli import app as main_app
from tests.integration.test_disk_images import corrupt_gzip, make_source
from tests.support.daemon import Daemon, cli
from tests.support.disk_images import debian_like

_REGISTERED = any(g.name == "images" for g in main_app.registered_groups)
_STANDALONE = [sys.executable, "-c", "from provisiond.cli.images import app; app()"]


def images(daemon: Daemon, *args: str) -> subprocess.CompletedProcess[str]:
    """Through ``provisiond images`` once registered; until then the same Typer app alone."""
    if _REGISTERED:
        return cli("images", *args, env=daemon.env)
    return subprocess.run(
        [*_STANDALONE, *args],
        env=daemon.env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture
def daemon(tmp_path: Path) -> Daemon:
    d = Daemon(tmp_path / "data")
    d.prepare()
    return d


@pytest.fixture
def sources(tmp_path: Path) -> dict[str, Path]:
    src = tmp_path / "src"
    src.mkdir()
    files = {"kernel": src / "vmlinuz", "initrd": src / "initrd.img", "rootfs": src / "root.sq"}
    for i, path in enumerate(files.values()):
        path.write_bytes(bytes([i]) * (3 << 20) + b"tail")
    return files


def test_add_list_verify_delete(daemon: Daemon, sources: dict[str, Path]) -> None:
    r = images(
        daemon,
        "add",
        "debian12",
        "--kernel",
        str(sources["kernel"]),
        "--initrd",
        str(sources["initrd"]),
        "--rootfs",
        str(sources["rootfs"]),
        "--arch",
        "x86_64",
        "--kind",
        "disk",
        "--os-template",
        "debian",
        "--json",
    )
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    for role, path in sources.items():
        assert out["sha256"][role] == hashlib.sha256(path.read_bytes()).hexdigest()
    stored = daemon.data_dir / "images" / "debian12"
    assert (stored / "vmlinuz").read_bytes() == sources["kernel"].read_bytes()
    assert not list((daemon.data_dir / "images").glob(".tmp-*"))

    listed = json.loads(images(daemon, "list", "--json").stdout)
    assert [(i["name"], i["kind"], i["kernel"]) for i in listed] == [
        ("debian12", "disk", "debian12/vmlinuz")
    ]
    assert "debian12" in images(daemon, "list").stdout

    ok = images(daemon, "verify")
    assert ok.returncode == 0 and "ok debian12" in ok.stdout, ok.stderr

    data = bytearray((stored / "initrd.img").read_bytes())
    data[1 << 20] ^= 0xFF  # one corrupt byte in the middle
    (stored / "initrd.img").write_bytes(bytes(data))
    bad = images(daemon, "verify", "debian12")
    assert bad.returncode == 1
    assert "FAILED debian12" in bad.stderr and "initrd debian12/initrd.img: sha256" in bad.stderr

    (stored / "vmlinuz").unlink()
    assert "kernel debian12/vmlinuz: missing" in images(daemon, "verify").stderr

    dup = images(
        daemon,
        "add",
        "debian12",
        "--kernel",
        str(sources["kernel"]),
        "--initrd",
        str(sources["initrd"]),
    )
    assert dup.returncode == 1 and "exists" in dup.stderr and "hint" in dup.stderr

    assert images(daemon, "delete", "debian12").returncode == 0
    assert not stored.exists()
    assert json.loads(images(daemon, "list", "--json").stdout) == []


def test_bad_input_is_reported_without_a_traceback(
    daemon: Daemon, sources: dict[str, Path]
) -> None:
    k, i = str(sources["kernel"]), str(sources["initrd"])
    for args, needle in (
        (["add", "../evil", "--kernel", k, "--initrd", i], "name: String should match"),
        (["add", "x", "--kernel", k, "--initrd", i, "--kind", "iso"], "kind"),
        (["add", "x", "--kernel", k, "--initrd", k], "share a name"),
        (["verify", "nope"], "no image named"),
        (["delete", "nope"], "no image named"),
    ):
        r = images(daemon, *args)
        assert r.returncode != 0, args
        assert needle in r.stderr and "Traceback" not in r.stderr, (args, r.stderr)
    assert not (daemon.data_dir / "images" / "x").exists()


def test_add_disk_image_end_to_end(daemon: Daemon, tmp_path: Path) -> None:
    source, raw = make_source(tmp_path, "qcow2")
    r = images(
        daemon, "add", "deb12", "--disk", str(source), "--firmware", "bios",
        "--os-template", "debian", "--json",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    served = daemon.data_dir / "images" / "deb12" / "disk.raw.gz"
    assert gzip.decompress(served.read_bytes()) == raw
    assert (out["kind"], out["source_format"], out["firmware"]) == ("disk", "qcow2", "bios")
    assert out["virtual_size"] == out["min_disk_size"] == len(raw)
    assert out["raw_sha256"] == hashlib.sha256(raw).hexdigest()
    assert out["sha256"] == {"disk": hashlib.sha256(served.read_bytes()).hexdigest()}

    shown = images(daemon, "show", "deb12")
    assert shown.returncode == 0, shown.stderr
    for needle in ("qcow2", out["raw_sha256"][:16], "bios", "deb12/disk.raw.gz"):
        assert needle in shown.stdout, (needle, shown.stdout)
    listed = json.loads(images(daemon, "list", "--json").stdout)
    assert [(i["disk"], i["virtual_size"]) for i in listed] == [("deb12/disk.raw.gz", len(raw))]
    assert "deb12" in images(daemon, "list").stdout
    assert images(daemon, "verify", "deb12").returncode == 0

    data = bytearray(served.read_bytes())
    data[len(data) // 2] ^= 0xFF
    served.write_bytes(bytes(data))
    bad = images(daemon, "verify", "deb12")
    assert bad.returncode == 1 and "disk deb12/disk.raw.gz: sha256" in bad.stderr


def test_add_disk_image_refusals(daemon: Daemon, tmp_path: Path) -> None:
    (tmp_path / "bad").mkdir()
    bad = corrupt_gzip(tmp_path / "bad")
    r = images(daemon, "add", "deb12", "--disk", str(bad))
    assert r.returncode == 1 and "does not decompress" in r.stderr and "hint" in r.stderr
    assert "Traceback" not in r.stderr
    good, _ = make_source(tmp_path, "raw")
    r = images(daemon, "add", "deb12", "--disk", str(good), "--firmware", "arm")
    assert r.returncode == 1 and "firmware" in r.stderr, r.stderr
    r = images(daemon, "add", "deb12", "--disk", str(good), "--kernel", str(good))
    assert r.returncode == 1 and "--disk takes no" in r.stderr
    store = daemon.data_dir / "images"
    assert not store.exists() or list(store.iterdir()) == []  # not even a .tmp- folder
    assert json.loads(images(daemon, "list", "--json").stdout) == []


def test_add_disk_image_without_cloud_init(daemon: Daemon, tmp_path: Path) -> None:
    """Refused with the reason and the way out; accepted with --no-cloud-init."""
    source = debian_like(tmp_path / "build", cloud_init="none")
    r = images(daemon, "add", "plain", "--disk", str(source))
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    assert "has no cloud-init" in r.stderr and "never calls back" in r.stderr
    assert "hint:" in r.stderr and "--no-cloud-init" in r.stderr
    store = daemon.data_dir / "images"
    assert not store.exists() or list(store.iterdir()) == []
    assert json.loads(images(daemon, "list", "--json").stdout) == []

    r = images(daemon, "add", "plain", "--disk", str(source), "--no-cloud-init", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert (out["configured_by"], out["cloud_init"], out["os_family"]) == ("agent", "", "debian")
    shown = images(daemon, "show", "plain")
    assert "configured_by" in shown.stdout and "agent" in shown.stdout

    with_ci = debian_like(tmp_path / "ci")
    r = images(daemon, "add", "withci", "--disk", str(with_ci))
    assert r.returncode == 0, r.stderr
    assert "os: debian 12; configured by cloud-init, /usr/bin/cloud-init" in r.stdout

    k = str(source)
    r = images(daemon, "add", "x", "--kernel", k, "--initrd", k, "--no-cloud-init")
    assert r.returncode == 1 and "--no-cloud-init applies to --disk images only" in r.stderr
