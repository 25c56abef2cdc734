"""The whole job on a virtual rack, driven the way an operator or a CI job would.

``make demo`` and the end-to-end test both run this: build (or reuse) the guest
image, bring a QEMU rack up in its own namespace, start ``provisiond serve`` with the
rack's provisioning network, register the images, apply the rack's inventory,
discover the BMCs, inspect every machine, deploy them concurrently through the
allocation API, and read back per-phase timings. Everything goes through the real
CLI and HTTP API; everything started is stopped by PID in :meth:`Scenario.down`.

    with Scenario("demo", 3, workdir) as sc:
        sc.up(); sc.discover(); sc.inspect_all(); allocations = sc.deploy_all(keys)
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

from provisiond.client import Client
from provisiond.netboot.dnsmasq import die_with_parent
from provisiond.netboot.netns_socket import connect_in_netns
from provisiond.rack import vrack
from provisiond.rack.disk_image import build_disk_image
from provisiond.rack.guest_image import GuestImage, build_guest_image

INSPECT_IMAGE = "inspect"
DEPLOY_IMAGE = "ramdisk-live"
PROVISIOND = [sys.executable, "-m", "provisiond"]


class ScenarioError(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Scenario:
    name: str
    count: int
    workdir: Path
    subnet: str = "10.213.0.0/24"
    ipv6_prefix: str = "fd00:213::/64"
    api_port: int = field(default_factory=free_port)
    log: Callable[[str], None] = print
    ram_mib: int = 384
    disk_mib: int = 64
    #: Also build (or reuse) the Debian 12 disk image and register it as this name.
    disk_image: str = ""
    #: How many guests boot UEFI (OVMF, the last ones) / have an uncabled first NIC and
    #: boot from their second (the first ones).
    uefi: int = 0
    two_nics: int = 0
    #: A cabling fault: the rack's switch announces these two guests' ports crossed.
    swap_cables: tuple[str, str] | None = None
    #: An inventory fault: these two guests on each other's PDU outlet (the real wiring
    #: is right); and the rack's power budget.
    pdu_miswire: tuple[str, str] | None = None
    power_budget_watts: int = vrack.DEFAULT_POWER_BUDGET_W
    #: Extra provisiond.toml lines (e.g. shorter timeouts in tests).
    extra_config: str = ""
    image: GuestImage | None = None
    rack: vrack.RackState | None = None
    token: str = ""
    proc: subprocess.Popen[bytes] | None = None
    bmc_password: str = field(default_factory=lambda: secrets.token_urlsafe(12))
    pdu_community: str = field(default_factory=lambda: secrets.token_urlsafe(12))

    # --- paths and environment --------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def data_dir(self) -> Path:
        return self.workdir / "data"

    @property
    def config_file(self) -> Path:
        return self.workdir / "provisiond.toml"

    @property
    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PROVISIOND_")}
        env.update(PROVISIOND_CONFIG=str(self.config_file), PROVISIOND_URL=self.url)
        return {**env, "PROVISIOND_TOKEN": self.token, **self.secret_env}

    @property
    def secret_env(self) -> dict[str, str]:
        """What the rack's inventory names: the BMC password and the PDU community."""
        return {vrack.PASSWORD_ENV: self.bmc_password, vrack.PDU_COMMUNITY_ENV: self.pdu_community}

    def cli(self, *args: str, timeout: float = 120, stdin: str | None = None) -> str:
        result = subprocess.run(
            [*PROVISIOND, *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            input=stdin,
            check=False,
        )
        if result.returncode != 0:
            raise ScenarioError(f"provisiond {' '.join(args)} failed: {result.stderr.strip()}")
        return result.stdout

    def api(self) -> httpx.Client:
        return httpx.Client(
            base_url=self.url + "/api/v1",
            headers={"authorization": f"Bearer {self.token}"},
            timeout=30,
        )

    # --- bring-up ---------------------------------------------------------------------

    def up(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        self.image = build_guest_image(log=self.log)
        how = "built" if self.image.built else "cached"
        self.log(
            f"guest image {how}: {self.image.size_bytes / 2**20:.1f} MiB "
            f"({time.monotonic() - started:.1f}s)"
        )
        self.rack = vrack.up(
            self.count, name=self.name, state_dir=self.workdir / "rack", subnet=self.subnet,
            ipv6_prefix=self.ipv6_prefix, ram_mib=self.ram_mib, disk_mib=self.disk_mib,
            password=self.bmc_password, uefi=self.uefi, two_nics=self.two_nics,
            swap_cables=self.swap_cables, pdu_community=self.pdu_community,
            pdu_miswire=self.pdu_miswire, power_budget_watts=self.power_budget_watts,
        )  # fmt: skip
        uefi = f" ({self.uefi} UEFI)" if self.uefi else ""
        self.log(f"rack {self.name}: {self.count} guests{uefi} in netns {self.rack.netns}")
        network = vrack.network_toml(self.rack) + 'dnsmasq_user = "root"\n'
        self.config_file.write_text(
            f'data_dir = "{self.data_dir}"\n'
            f"listen_port = {self.api_port}\n"
            f"{self.extra_config}\n" + network
        )
        self.cli("db", "upgrade")
        out = self.cli("token", "create", "--name", "scenario", "--role", "admin")
        self.token = out.strip().splitlines()[-1]
        self.start_daemon()
        for name, kind in ((INSPECT_IMAGE, "inspection"), (DEPLOY_IMAGE, "deploy")):
            self.cli(
                "images", "add", name, "--kernel", str(self.image.kernel), "--initrd",
                str(self.image.initrd), "--kind", "live", "--kernel-args", self.image.kernel_args,
            )  # fmt: skip
            self.log(f"image {name} registered ({kind})")
        if self.disk_image:
            started = time.monotonic()
            disk = build_disk_image(log=self.log)
            self.cli("images", "add", self.disk_image, "--disk", str(disk.gz), timeout=600)
            self.log(
                f"disk image {self.disk_image} registered ({'built' if disk.built else 'cached'}"
                f", {time.monotonic() - started:.1f}s)"
            )
        inventory = (self.workdir / "rack" / vrack.INVENTORY_FILE).read_text()
        with self.api() as api:
            r = api.post(
                "/inventory/apply",
                json={"yaml": inventory, "env": self.secret_env},
            )
            if r.status_code != 200:
                raise ScenarioError(f"inventory apply failed: {r.text}")

    def start_daemon(self, timeout: float = 30) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = (self.workdir / "serve.log").open("ab")
        self.proc = subprocess.Popen(
            [*PROVISIOND, "serve"],
            env=self.env,
            stdout=log,
            stderr=log,
            preexec_fn=die_with_parent,  # prctl only: safe between fork and exec
        )
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ScenarioError(f"provisiond serve exited: {self.serve_log()[-2000:]}")
            with contextlib.suppress(httpx.TransportError):
                r = httpx.get(self.url + "/healthz", timeout=2)
                last = r.text
                if r.status_code == 200:
                    return
            time.sleep(0.2)
        raise ScenarioError(f"provisiond not healthy in {timeout:.0f}s: {last}")

    def kill_daemon(self, sig: int = signal.SIGKILL) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def serve_log(self) -> str:
        path = self.workdir / "serve.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stall_report(self) -> str:
        """How often the daemon said it stalled (event loop, thread pool, write slot)."""
        text = self.serve_log()
        counts = {
            "event-loop stalls": text.count('"event_loop_stalled"'),
            "thread-pool saturations": text.count('"thread_pool_saturated"'),
            "slow write-slot waits": text.count("sqlite write slot busy"),
        }
        return ", ".join(f"{n} {what}" for what, n in counts.items())

    def diagnostics(self, lines: int = 30) -> str:
        """What to print when the job fails: the daemon's warnings and errors, and the
        last events it recorded (read from its API when it still answers)."""
        noisy = [ln for ln in self.serve_log().splitlines() if '"level": "info"' not in ln]
        out = [f"--- provisiond serve: warnings and errors (last {lines}) ---"]
        out += [ln[:2000] for ln in noisy[-lines:]] or ["(none)"]
        out.append("--- last events ---")
        try:
            with self.api() as api:
                r = api.get("/events", params={"limit": lines}, timeout=5)
                rows = r.json() if r.status_code == 200 else []
        except (httpx.HTTPError, ValueError) as exc:
            rows, out = [], [*out, f"(the API did not answer: {exc!r})"]
        for row in reversed(rows):
            out.append(
                f"{row.get('at')} {row.get('machine') or '-'} {row.get('kind')}/"
                f"{row.get('event')} {row.get('from_state') or ''}->{row.get('to_state') or ''}"
                f" {row.get('message') or ''}"
            )
        return "\n".join(out)

    # --- the job ----------------------------------------------------------------------

    def discover(self) -> dict[str, Any]:
        assert self.rack is not None
        ports = [g.bmc_port for g in self.rack.guests]
        self.cli(
            "credentials", "add", "rack", "--username", self.rack.bmc_username,
            "--password-stdin", stdin=self.bmc_password + "\n",
        )  # fmt: skip
        out = self.cli(
            "discover", "127.0.0.1/32", "--ports", f"{min(ports)}-{max(ports)}", "--json",
            timeout=300,
        )  # fmt: skip
        result: dict[str, Any] = json.loads(out)
        return result

    def machines(self) -> list[dict[str, Any]]:
        with Client(self.url, self.token) as api:  # follows the list's page cursors
            rows: list[dict[str, Any]] = api.machines()
        return sorted(rows, key=lambda m: m["name"])

    def machine(self, name: str) -> dict[str, Any]:
        with self.api() as api:
            r = api.get(f"/machines/{name}")
            r.raise_for_status()
            row: dict[str, Any] = r.json()
        return row

    def wait_states(
        self,
        names: list[str],
        wanted: set[str],
        *,
        timeout: float,
        fail: frozenset[str] | set[str] = frozenset(),
    ) -> dict[str, dict[str, Any]]:
        """Poll until every machine is in ``wanted``; raise at once on a ``fail`` state."""
        deadline = time.monotonic() + timeout
        seen: dict[str, dict[str, Any]] = {}
        while time.monotonic() < deadline:
            seen = {m["name"]: m for m in self.machines() if m["name"] in names}
            bad = {n: m for n, m in seen.items() if m["state"] in fail}
            if bad:
                raise ScenarioError(
                    "; ".join(f"{n}: {m['state']} ({m['last_error']})" for n, m in bad.items())
                )
            if all(seen.get(n, {}).get("state") in wanted for n in names):
                return seen
            time.sleep(1)
        states = {n: seen.get(n, {}).get("state") for n in names}
        raise ScenarioError(f"timed out after {timeout:.0f}s waiting for {wanted}: {states}")

    def inspect_all(self, timeout: float = 300) -> dict[str, dict[str, Any]]:
        names = [g.name for g in self.rack.guests] if self.rack else []
        with self.api() as api:
            for name in names:
                r = api.post(f"/machines/{name}/events", json={"event": "inspect"})
                if r.status_code != 200:
                    raise ScenarioError(f"inspect {name}: {r.text}")
        return self.wait_states(
            names, {"available"}, timeout=timeout, fail={"inspect_failed", "maintenance"}
        )

    def allocate(
        self, names: list[str], ssh_keys: list[str], lease: str = "2h", image: str = DEPLOY_IMAGE
    ) -> list[str]:
        ids = []
        with self.api() as api:
            for name in names:
                r = api.post(
                    "/allocations",
                    json={
                        "constraints": {"names": [name]},
                        "image": image,
                        "ssh_keys": ssh_keys,
                        "lease": lease,
                    },
                )
                if r.status_code not in (200, 201):
                    raise ScenarioError(f"allocate {name}: {r.status_code} {r.text}")
                ids.append(r.json()["id"])
        return ids

    def wait_allocations(self, ids: list[str], timeout: float = 300) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        out: dict[str, dict[str, Any]] = {}
        with self.api() as api:
            while time.monotonic() < deadline:
                for alloc_id in ids:
                    if out.get(alloc_id, {}).get("state") in ("ready", "failed"):
                        continue
                    try:
                        r = api.get(f"/allocations/{alloc_id}", params={"wait": 5})
                    except httpx.TransportError as exc:  # a long-poll is simply asked again
                        self.log(f"GET /allocations/{alloc_id}?wait=5 failed: {exc!r}; again")
                        continue
                    r.raise_for_status()
                    out[alloc_id] = r.json()
                if all(out[i]["state"] in ("ready", "failed") for i in ids):
                    break
        states = {i: out.get(i, {}).get("state") for i in ids}
        if not all(s in ("ready", "failed") for s in states.values()):
            raise ScenarioError(f"allocations not ready after {timeout:.0f}s: {states}")
        return [out[i] for i in ids]

    def deployments(self, name: str) -> list[dict[str, Any]]:
        with self.api() as api:
            r = api.get(f"/machines/{name}/deployments")
            r.raise_for_status()
            rows: list[dict[str, Any]] = r.json()
        return rows

    # --- teardown ---------------------------------------------------------------------

    def down(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.kill_daemon(signal.SIGTERM)
        with contextlib.suppress(Exception):
            removed = vrack.down(self.name, self.workdir / "rack")
            if removed:
                self.log(f"rack {self.name} removed ({len(removed)} items)")

    def __enter__(self) -> Scenario:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.down()


@contextlib.contextmanager
def netns_socket(
    netns: str, address: tuple[str, int], timeout: float = 10
) -> Iterator[socket.socket]:
    """A TCP connection made from inside ``netns`` (for SSH to a guest from the host)."""
    sock = connect_in_netns(netns, address, timeout)
    try:
        yield sock
    finally:
        sock.close()
