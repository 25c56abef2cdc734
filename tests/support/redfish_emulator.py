"""sushy-tools' Redfish emulator (fake driver, no libvirt) over HTTPS on a loopback port.

A self-signed certificate and an htpasswd (bcrypt) file are made in the test's
folder, so certificate pinning and wrong passwords are tested for real. Stopped by
PID.

The emulator runs through a tiny launcher rather than the ``sushy-emulator``
script, for three test-only reasons:

- the fake driver applies a power change after a random 1-11 s; the launcher fixes
  that to at most ``power_delay`` s, so changes stay asynchronous (read-back
  confirmation is exercised) but the suite stays fast and deterministic;
- the fake driver ignores ``BootSourceOverrideEnabled`` (GET always says
  "Continuous"), so the launcher records the Boot PATCH bodies it receives to a
  JSON-lines file, which is how tests see one-time versus persistent;
- sushy-tools keeps fake state in a shared ``/tmp/sushy-emulator`` unless
  ``SUSHY_EMULATOR_STATE_DIR`` is set, so each emulator gets its own;
- sushy-tools serves no power reading, so the launcher adds both shapes a BMC may
  have: ``Chassis/{id}/EnvironmentMetrics`` (``PowerWatts.Reading``) and the older
  ``Chassis/{id}/Power`` (``PowerControl[0].PowerConsumedWatts``), linked from the
  chassis. Which of them exist, and the watts while on (0 while off), come from
  ``meter.json``, read on every request: :meth:`RedfishEmulator.set_meter`, which can
  also make both serve a given (malformed) body instead.

It is otherwise sushy-tools' own ``main()`` with ``--fake``.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import http.client
import importlib.util
import ipaddress
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import bcrypt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.support import procs

SYSTEM_UUID = "27946b59-9e44-4fa7-8e91-f3527a1ef094"
SYSTEM_URL = f"/redfish/v1/Systems/{SYSTEM_UUID}"

_LAUNCHER = """
import io, json, sys, time
import flask
from sushy_tools.emulator import main as emu
from sushy_tools.emulator.resources.systems import fakedriver

delay, log_path, meter_path = int(sys.argv[1]), sys.argv[2], sys.argv[3]

class _FixedDelay:
    def randint(self, a, b):
        return delay

fakedriver.random = _FixedDelay()

class _Recorder:
    # Records each authenticated request before handling it, then hands it on untouched.
    def __init__(self, app):
        self.app = app

    def __call__(self, env, start_response):
        size = int(env.get("CONTENT_LENGTH") or 0)
        body = env["wsgi.input"].read(size) if size else b""
        env["wsgi.input"] = io.BytesIO(body)
        with open(log_path, "a") as log:
            log.write(json.dumps({"method": env.get("REQUEST_METHOD"),
                                  "path": env.get("PATH_INFO"),
                                  "body": body.decode("utf-8", "replace")}) + "\\n")
        return self.app(env, start_response)

def _meter():
    with open(meter_path) as f:
        meter = json.load(f)
    systems = emu.app.systems.systems
    on = bool(systems) and emu.app.systems.get_power_state(systems[0]) == "On"
    return meter["shapes"], (meter["watts"] if on else 0)

def _raw():
    # The body a test set to serve as-is, whatever its shape; None when it set none.
    # A meter set slow answers (either way) only after that many seconds.
    with open(meter_path) as f:
        meter = json.load(f)
    time.sleep(meter.get("slow_s", 0))
    if "raw" in meter:
        return flask.Response(json.dumps(meter["raw"]), mimetype="application/json")
    return None

def _chassis_link(identity, name):
    return {"@odata.id": "/redfish/v1/Chassis/%s/%s" % (identity, name)}

@emu.app.route("/redfish/v1/Chassis/<identity>/EnvironmentMetrics")
def _environment_metrics(identity):
    raw = _raw()
    if raw is not None:
        return raw
    shapes, watts = _meter()
    if "environment" not in shapes:
        return "not found", 404
    return {"@odata.id": _chassis_link(identity, "EnvironmentMetrics")["@odata.id"],
            "@odata.type": "#EnvironmentMetrics.v1_3_0.EnvironmentMetrics",
            "Id": "EnvironmentMetrics", "Name": "Chassis Environment Metrics",
            "PowerWatts": {"DataSourceUri": "/redfish/v1/Chassis/%s/Sensors/Power" % identity,
                           "Reading": watts}}

@emu.app.route("/redfish/v1/Chassis/<identity>/Power")
def _power(identity):
    raw = _raw()
    if raw is not None:
        return raw
    shapes, watts = _meter()
    if "power" not in shapes:
        return "not found", 404
    return {"@odata.id": _chassis_link(identity, "Power")["@odata.id"],
            "@odata.type": "#Power.v1_5_0.Power", "Id": "Power", "Name": "Power",
            "PowerControl": [{"MemberId": "0", "Name": "System Power Control",
                              "PowerConsumedWatts": watts, "PowerCapacityWatts": 800}]}

@emu.app.after_request
def _link_meters(response):
    parts = flask.request.path.rstrip("/").split("/")
    if (flask.request.method == "GET" and response.status_code == 200 and len(parts) == 5
            and parts[3] == "Chassis"):
        shapes, _ = _meter()
        body = json.loads(response.get_data())
        if "environment" in shapes:
            body["EnvironmentMetrics"] = _chassis_link(parts[4], "EnvironmentMetrics")
        if "power" in shapes:
            body["Power"] = _chassis_link(parts[4], "Power")
        response.set_data(json.dumps(body))
    return response

emu.app.wsgi_app = _Recorder(emu.app.wsgi_app)
sys.argv = ["sushy-emulator", *sys.argv[4:]]
sys.exit(emu.main())
"""


def require_sushy() -> None:
    """Fail in CI, skip locally, when sushy-tools is not installed."""
    script = shutil.which("sushy-emulator") or str(Path(sys.executable).parent / "sushy-emulator")
    if importlib.util.find_spec("sushy_tools") is None or not os.path.exists(script):
        if os.environ.get("CI"):
            pytest.fail(
                "sushy-emulator is missing; scripts/bootstrap.sh must pip install sushy-tools"
            )
        pytest.skip("sushy-emulator is not installed (pip install sushy-tools)")


def free_tcp_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def self_signed_cert(folder: Path, name: str = "bmc") -> tuple[Path, Path, str]:
    """A P-256 certificate for 127.0.0.1; returns (cert, key, sha256 hex of the DER)."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / f"{name}.crt", folder / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    fingerprint = hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()
    return cert_path, key_path, fingerprint


@dataclass
class RedfishEmulator:
    root: Path
    port: int
    username: str = "admin"
    password: str = "password"
    #: Seconds after which a power change lands (the fake driver's own is random 1-11).
    power_delay: int = 1
    #: Power reading shapes served ("environment", "power") and the watts while on.
    meter_shapes: tuple[str, ...] = ("environment", "power")
    meter_watts: int = 280
    fingerprint: str = ""
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def log_path(self) -> Path:
        return self.root / "requests.jsonl"

    @property
    def meter_path(self) -> Path:
        return self.root / "meter.json"

    def set_meter(
        self, shapes: tuple[str, ...], watts: int, raw: Any = None, slow_s: float = 0
    ) -> None:
        """Which power reading shapes the emulator serves from now on, and the watts on;
        with ``raw``, both meter URLs serve that JSON as-is (a malformed meter); with
        ``slow_s``, they answer only after that many seconds."""
        self.meter_shapes, self.meter_watts = shapes, watts
        tmp = self.meter_path.with_suffix(".tmp")
        meter: dict[str, Any] = {"shapes": list(shapes), "watts": watts, "slow_s": slow_s}
        if raw is not None:
            meter["raw"] = raw
        tmp.write_text(json.dumps(meter))
        tmp.replace(self.meter_path)  # atomic: a request never reads half a file

    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        cert, key = self.root / "bmc.crt", self.root / "bmc.key"
        if not self.fingerprint:  # a restart keeps its certificate, like a real BMC
            cert, key, self.fingerprint = self_signed_cert(self.root)
        auth = self.root / "htpasswd"
        hashed = bcrypt.hashpw(self.password.encode(), bcrypt.gensalt(rounds=4)).decode()
        auth.write_text(f"{self.username}:{hashed}\n")
        config = self.root / "emulator.conf"
        config.write_text(
            f"SUSHY_EMULATOR_AUTH_FILE = {str(auth)!r}\n"
            f"SUSHY_EMULATOR_STATE_DIR = {str(self.root / 'state')!r}\n"
        )
        self.log_path.touch()
        self.set_meter(self.meter_shapes, self.meter_watts)
        log = (self.root / "emulator.log").open("wb")
        env = {k: v for k, v in os.environ.items() if not k.startswith("SUSHY_EMULATOR_")}
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-c",
                _LAUNCHER,
                str(self.power_delay),
                str(self.log_path),
                str(self.meter_path),
                "--fake",
                "--config",
                str(config),
                "-i",
                "127.0.0.1",
                "-p",
                str(self.port),
                "--ssl-certificate",
                str(cert),
                "--ssl-key",
                str(key),
            ],
            stdout=log,
            stderr=log,
            stdin=subprocess.DEVNULL,
            env=env,
        )
        log.close()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            try:
                status, _ = self.request("GET", "/redfish/v1/Systems")
                if status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        output = (self.root / "emulator.log").read_text(errors="replace")[-2000:]
        self.stop()
        raise AssertionError(f"sushy-emulator did not answer within 20 s:\n{output}")

    def request(
        self, method: str, path: str, body: dict[str, Any] | None = None
    ) -> tuple[int, Any]:
        """One HTTPS request to the emulator, pinned to its certificate, as the admin."""
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE  # pinned below instead
        conn = http.client.HTTPSConnection("127.0.0.1", self.port, timeout=5, context=context)
        try:
            conn.connect()
            assert conn.sock is not None
            der = conn.sock.getpeercert(binary_form=True) or b""
            if hashlib.sha256(der).hexdigest() != self.fingerprint:
                raise AssertionError("the emulator presented an unexpected certificate")
            token = base64.b64encode(f"{self.username}:{self.password}".encode()).decode()
            headers = {"Authorization": f"Basic {token}", "Content-Type": "application/json"}
            conn.request(method, path, json.dumps(body) if body else None, headers)
            response = conn.getresponse()
            data = response.read()
            return response.status, json.loads(data) if data else None
        finally:
            conn.close()

    def system(self) -> dict[str, Any]:
        status, data = self.request("GET", SYSTEM_URL)
        assert status == 200, (status, data)
        return dict(data)

    def set_power(self, reset_type: str) -> None:
        """Change power behind the driver's back (lands after ``power_delay``)."""
        status, data = self.request(
            "POST", f"{SYSTEM_URL}/Actions/ComputerSystem.Reset", {"ResetType": reset_type}
        )
        assert status in (200, 202, 204), (status, data)

    def requests(self) -> list[dict[str, str]]:
        """Requests past the emulator's auth (the service root needs none), oldest first."""
        lines = self.log_path.read_text().splitlines()
        return [json.loads(line) for line in lines]

    def patches(self) -> list[dict[str, Any]]:
        """JSON bodies of the PATCHes to the system, oldest first."""
        return [
            json.loads(r["body"])
            for r in self.requests()
            if r["method"] == "PATCH" and r["path"].rstrip("/") == SYSTEM_URL
        ]

    def stop(self) -> None:
        procs.stop(self.proc)
        self.proc = None
