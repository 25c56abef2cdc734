"""The guest image against its real peers: QEMU (TCG, direct kernel boot), dropbear and
busybox inside it, paramiko and a small HTTP server standing in for provisiond.

QEMU's user-mode network needs no root: the guest reaches the host's loopback (where
the test's HTTP server listens) as 10.0.2.2, and the host reaches the guest's port 22
through a hostfwd on 127.0.0.1. The guest is told of no other address. One VM serves
the module: the refused-key test runs first, the full inspection-style session
(python3, dd, poweroff -f) last.
"""

from __future__ import annotations

import base64
import dataclasses
import importlib.util
import io
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import ModuleType
from typing import Any

import paramiko
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from provisiond.rack import guest_image
from provisiond.rack.build_cache import take_lock
from provisiond.rack.guest_image import GuestImage, build_guest_image
from tests.support.procs import stop

HOST_FROM_GUEST = "10.0.2.2"  # QEMU user networking maps it to the host's 127.0.0.1
CALLBACK_WAIT = 90.0
DISK_BYTES = 8 << 20
MIB = 1 << 20


def new_key() -> paramiko.Ed25519Key:
    pem = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    return paramiko.Ed25519Key.from_private_key(io.StringIO(pem.decode()))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Seed(ThreadingHTTPServer):
    """Serves the NoCloud user-data and records phone_home callbacks."""

    def __init__(self, machine: str) -> None:
        super().__init__(("127.0.0.1", 0), SeedHandler)
        self.machine = machine
        self.user_data = ""
        self.callbacks: list[dict[str, Any]] = []
        self.called_back = threading.Event()


class SeedHandler(BaseHTTPRequestHandler):
    server: Seed

    def do_GET(self) -> None:
        if self.path == f"/meta/{self.server.machine}/user-data":
            self.answer(200, self.server.user_data.encode())
        else:
            self.answer(404, b"not found\n")

    def do_POST(self) -> None:
        url = urllib.parse.urlsplit(self.path)
        body = self.rfile.read(int(self.headers.get("Content-Length", 0))).decode()
        if url.path != f"/boot/callback/{self.server.machine}":
            self.answer(404, b"not found\n")
            return
        self.server.callbacks.append(
            {
                "query": urllib.parse.parse_qs(url.query),
                "content_type": self.headers.get("Content-Type"),
                "form": {k: v[0] for k, v in urllib.parse.parse_qs(body).items()},
                "at": time.monotonic(),
            }
        )
        self.server.called_back.set()
        self.answer(200, b"ok\n")

    def answer(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_args: object) -> None:
        pass


@dataclasses.dataclass
class Vm:
    proc: subprocess.Popen[bytes]
    seed: Seed
    ssh_port: int
    disk: Path
    serial_log: Path
    key: paramiko.Ed25519Key
    started: float

    def host_key(self) -> paramiko.PKey:
        assert self.seed.called_back.wait(CALLBACK_WAIT), self.console()
        line = self.seed.callbacks[0]["form"]["pub_key_ed25519"]
        kind, b64 = line.split()[:2]
        assert kind == "ssh-ed25519"
        return paramiko.Ed25519Key(data=base64.b64decode(b64))

    def ssh(self, key: paramiko.PKey) -> paramiko.SSHClient:
        client = paramiko.SSHClient()
        client.get_host_keys().add(f"[127.0.0.1]:{self.ssh_port}", "ssh-ed25519", self.host_key())
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
        client.connect(
            "127.0.0.1",
            port=self.ssh_port,
            username="root",
            pkey=key,
            allow_agent=False,
            look_for_keys=False,
            timeout=15,
            banner_timeout=15,
            auth_timeout=15,
        )
        return client

    def console(self) -> str:
        return self.serial_log.read_text(errors="replace")[-3000:]


@pytest.fixture(scope="module")
def image() -> GuestImage:
    started = time.monotonic()
    image = build_guest_image()
    how = "built" if image.built else "reused"
    print(
        f"\nguest image {image.recipe_hash}: {how} in {time.monotonic() - started:.1f} s, "
        f"kernel {image.kernel.stat().st_size / 1e6:.1f} MB + initrd "
        f"{image.initrd.stat().st_size / 1e6:.1f} MB = {image.size_bytes / 1e6:.1f} MB"
    )
    return image


@pytest.fixture(scope="module")
def vm(image: GuestImage, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Vm]:
    qemu = shutil.which("qemu-system-x86_64")
    if qemu is None:
        pytest.skip("qemu-system-x86_64 is not installed (make bootstrap)")
    work = tmp_path_factory.mktemp("guest")
    machine, key = str(uuid.uuid4()), new_key()
    seed = Seed(machine)
    server = f"{HOST_FROM_GUEST}:{seed.server_address[1]}"
    seed.user_data = "\n".join(
        [
            "#cloud-config",
            "hostname: guest-under-test",
            "ssh_authorized_keys:",
            f'  - "{key.get_name()} {key.get_base64()} provisiond-test"',
            "phone_home:",
            f'  url: "http://{server}/boot/callback/{machine}?token=abc"',
            "  post: [pub_key_ed25519, instance_id, hostname]",
            "",
        ]
    )
    threading.Thread(target=seed.serve_forever, daemon=True).start()
    disk = work / "disk.raw"
    disk.write_bytes(b"\xaa" * DISK_BYTES)
    ssh_port, serial_log = free_port(), work / "serial.log"
    net = f"user,id=n0,hostfwd=tcp:127.0.0.1:{ssh_port}-:22"
    append = (
        f"{image.kernel_args} ds=nocloud-net;s=http://{server}/meta/{machine}/ "
        f"provisiond.url=http://{server} provisiond.machine={machine}"
    )
    cmd = [
        qemu,
        "-accel",
        "tcg",
        "-m",
        "384",
        "-nographic",
        "-monitor",
        "none",
        "-serial",
        f"file:{serial_log}",
        "-kernel",
        str(image.kernel),
        "-initrd",
        str(image.initrd),
        "-append",
        append,
        "-netdev",
        net,
        "-device",
        "virtio-net-pci,netdev=n0,romfile=",
        "-drive",
        f"file={disk},if=virtio,format=raw",
        "-no-reboot",
    ]
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    try:
        yield Vm(proc, seed, ssh_port, disk, serial_log, key, time.monotonic())
    finally:
        stop(proc, timeout=5)
        seed.shutdown()
        seed.server_close()


@pytest.mark.slow
def test_wrong_key_is_refused(vm: Vm) -> None:
    vm.host_key()  # sshd is up once the guest called back
    with pytest.raises(paramiko.AuthenticationException):
        vm.ssh(new_key()).close()


@pytest.mark.slow
def test_boot_callback_ssh_wipe_poweroff(vm: Vm, image: GuestImage) -> None:
    host_key = vm.host_key()
    callback = vm.seed.callbacks[0]
    boot = callback["at"] - vm.started
    print(f"\nboot to callback: {boot:.1f} s (TCG), image {image.size_bytes / 1e6:.1f} MB")
    assert callback["content_type"] == "application/x-www-form-urlencoded"
    assert callback["query"] == {"token": ["abc"]}
    assert callback["form"]["pub_key_ed25519"].startswith("ssh-ed25519 ")
    assert callback["form"]["instance_id"] == vm.seed.machine
    assert callback["form"]["hostname"] == "guest-under-test"
    assert host_key.get_name() == "ssh-ed25519"

    client = vm.ssh(vm.key)
    try:
        out = run(client, "python3 -c 'import json,ssl,urllib.request; print(42)'")
        assert out == "42\n"
        run(client, "dd if=/dev/zero of=/dev/vda bs=1M count=1 && sync")
        with vm.disk.open("rb") as disk:
            assert disk.read(MIB) == bytes(MIB)
            assert disk.read(MIB) == b"\xaa" * MIB  # only the first MiB was wiped
        client.exec_command("poweroff -f", timeout=5)
        assert vm.proc.wait(30) == 0, vm.console()
    finally:
        client.close()


def run(client: paramiko.SSHClient, command: str) -> str:
    _stdin, stdout, stderr = client.exec_command(command, timeout=60)
    status = stdout.channel.recv_exit_status()
    out = stdout.read().decode()
    assert status == 0, f"{command}: exit {status}: {out}{stderr.read().decode()}"
    return out


# Units: no VM, no build.


def test_recipe_hash_is_stable_and_follows_the_guest_files() -> None:
    recipe = guest_image.default_recipe()
    versions = {"busybox-static": "1:1.35.0-4", "linux-image-6.1.0-1-amd64": "6.1.1-1"}
    key = guest_image.recipe_hash(recipe, versions)
    assert key == guest_image.recipe_hash(
        guest_image.default_recipe(), dict(reversed(versions.items()))
    )
    init = next(f for f in recipe.files if f[0] == "init")
    edited = (init[0], init[1], init[2] + b"\n# changed\n")
    changed = dataclasses.replace(
        recipe, files=tuple(edited if f is init else f for f in recipe.files)
    )
    assert guest_image.recipe_hash(changed, versions) != key
    assert guest_image.recipe_hash(recipe, {**versions, "busybox-static": "1:1.35.0-5"}) != key


def phone_home() -> ModuleType:
    path = Path(guest_image.__file__).parent / "guest" / "phone_home.py"
    spec = importlib.util.spec_from_file_location("phone_home", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_phone_home_reads_the_seed_and_cloud_config() -> None:
    ph = phone_home()
    args = ph.kernel_args(
        "console=ttyS0 ds=nocloud-net;s=http://10.0.0.1:8080/meta/u1/ provisiond.machine=u1"
    )
    assert ph.seed_url(args) == "http://10.0.0.1:8080/meta/u1/"
    assert ph.seed_url(ph.kernel_args("console=ttyS0 quiet")) is None
    config = ph.parse_user_data(
        "#cloud-config\nhostname: node-7\nssh_authorized_keys:\n"
        '  - "ssh-ed25519 AAAA1 a \\"quoted\\" comment"\n'
        "  - ssh-ed25519 AAAA2 bare\nwrite_files:\n  - path: /x\n"
        "phone_home:\n  url: http://h/boot/callback/u1?token=t\n  tries: 3\n"
    )
    assert config.ssh_keys == ['ssh-ed25519 AAAA1 a "quoted" comment', "ssh-ed25519 AAAA2 bare"]
    assert config.phone_home_url == "http://h/boot/callback/u1?token=t"
    assert config.hostname == "node-7"
    assert ph.redact("http://h/boot/callback/u1?token=secret") == "http://h/boot/callback/u1?…"


def test_a_second_builder_of_a_recipe_waits_for_the_lock(tmp_path: Path) -> None:
    lock, error = tmp_path / "recipe.lock", guest_image.GuestImageError
    held = take_lock(lock, guest_image.LOCK_WAIT, error)
    try:
        started = time.monotonic()
        with pytest.raises(guest_image.GuestImageError, match="stayed locked"):
            take_lock(lock, 1.5, error)
        assert time.monotonic() - started >= 1.5
    finally:
        os.close(held)
    os.close(take_lock(lock, 1.5, error))  # free again once the holder lets go


class Flaky(BaseHTTPRequestHandler):
    """Answers each request with the next status from ``server.statuses``."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        status = self.server.statuses.pop(0)  # type: ignore[attr-defined]
        self.send_response(status)
        self.send_header("Content-Length", "3")
        self.end_headers()
        self.wfile.write(b"ok\n")

    def log_message(self, *_args: object) -> None:
        pass


@pytest.mark.parametrize(
    ("statuses", "answered", "tries"),
    [([503, 429, 200], True, 3), ([403, 200], False, 1), ([500, 500, 500], False, 3)],
)
def test_phone_home_retries_are_bounded_and_stop_when_refused(
    statuses: list[int], answered: bool, tries: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    ph = phone_home()
    monkeypatch.setattr(ph, "TRIES", 3)
    monkeypatch.setattr(ph, "PAUSE", 0.01)
    server = ThreadingHTTPServer(("127.0.0.1", 0), Flaky)
    server.statuses = list(statuses)  # type: ignore[attr-defined]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/boot/callback/u1?token=t"
        answer = ph.request("phone_home", url, b"instance_id=u1")
        assert (answer is not None) == answered
        assert len(statuses) - len(server.statuses) == tries  # type: ignore[attr-defined]
    finally:
        server.shutdown()
        server.server_close()
