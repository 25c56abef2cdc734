"""OpenIPMI's ``ipmi_sim`` as an outside IPMI peer, on a loopback port.

lanplus needs a ``guid`` line; ``chassis bootdev`` and power need a
``chassis_control`` program, here a small shell script keeping state in files.
Stopped by PID.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support import procs

IPMI_SIM = shutil.which("ipmi_sim") or "/usr/bin/ipmi_sim"
IPMITOOL = shutil.which("ipmitool") or "/usr/bin/ipmitool"

_CHASSIS = """#!/bin/sh
# chassis_control for ipmi_sim: <device> get|set <parm> [value] ...
dir="{state}"
shift
op=$1; shift
case $op in
get)
  for p in "$@"; do
    case $p in
      power) v=$(cat "$dir/power" 2>/dev/null || echo 0);;
      boot) v=$(cat "$dir/boot" 2>/dev/null || echo default);;
      *) echo "unknown parameter $p"; exit 1;;
    esac
    echo "$p:$v"
  done;;
set)
  while [ $# -gt 1 ]; do
    case $1 in
      power) echo "$2" > "$dir/power";;
      reset) echo 1 > "$dir/power";;
      boot) echo "$2" > "$dir/boot";;
    esac
    shift 2
  done;;
*) echo "unknown operation $op"; exit 1;;
esac
"""

_LAN_CONF = """name "provisiond-test"
set_working_mc 0x20
  startlan 1
    addr 127.0.0.1 {port}
    priv_limit admin
    allowed_auths_callback none md2 md5 straight
    allowed_auths_user none md2 md5 straight
    allowed_auths_operator none md2 md5 straight
    allowed_auths_admin none md2 md5 straight
    guid a123456789abcdefa123456789abcdef
  endlan
  chassis_control "{chassis} 0x20"
  user 1 true  ""  "test" user 10 none md2 md5 straight
  user 2 true  "{user}" "{password}" admin 10 none md2 md5 straight
"""

_EMU = """mc_setbmc 0x20
mc_add 0x20 0 no-device-sdrs 0x23 9 8 0x9f 0x1291 0xf02 persist_sdr
mc_enable 0x20
"""


def require_tools() -> None:
    for tool in (IPMI_SIM, IPMITOOL):
        if not os.path.exists(tool):
            if os.environ.get("CI"):
                pytest.fail(f"{tool} is missing; scripts/bootstrap.sh must install it")
            pytest.skip(f"{tool} is not installed (apt-get install openipmi ipmitool)")


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class IpmiSim:
    root: Path
    port: int
    username: str = "admin"
    password: str = "password"
    proc: subprocess.Popen[bytes] | None = None

    @property
    def state_dir(self) -> Path:
        return self.root / "chassis"

    def power(self) -> str:
        path = self.state_dir / "power"
        return "on" if path.exists() and path.read_text().strip() == "1" else "off"

    def set_power(self, on: bool) -> None:
        (self.state_dir / "power").write_text("1\n" if on else "0\n")

    def start(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        chassis = self.root / "chassis.sh"
        chassis.write_text(_CHASSIS.format(state=self.state_dir))
        chassis.chmod(0o755)
        conf = self.root / "lan.conf"
        conf.write_text(
            _LAN_CONF.format(
                port=self.port, chassis=chassis, user=self.username, password=self.password
            )
        )
        emu = self.root / "sim.emu"
        emu.write_text(_EMU)
        (self.root / "state").mkdir(exist_ok=True)
        log = (self.root / "ipmi_sim.log").open("wb")
        self.proc = subprocess.Popen(
            [IPMI_SIM, "-c", str(conf), "-f", str(emu), "-s", str(self.root / "state"), "-n"],
            stdout=log,
            stderr=log,
            stdin=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.ipmitool("power", "status").returncode == 0:
                return
            time.sleep(0.1)
        self.stop()
        raise AssertionError("ipmi_sim did not answer within 10 s")

    def ipmitool(self, *args: str, password: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                IPMITOOL,
                "-I",
                "lanplus",
                "-C",
                "3",
                "-H",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-U",
                self.username,
                "-P",
                self.password if password is None else password,
                "-N",
                "1",
                "-R",
                "1",
                *args,
            ],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )

    def stop(self) -> None:
        procs.stop(self.proc)
        self.proc = None


@contextmanager
def running_sims(root: Path, count: int) -> Iterator[list[IpmiSim]]:
    """``count`` ipmi_sim BMCs on free loopback ports, stopped by PID however the block ends."""
    require_tools()
    started: list[IpmiSim] = []
    try:
        for i in range(count):
            sim = IpmiSim(root / f"sim{i}", free_udp_port())
            sim.start()
            started.append(sim)
        yield started
    finally:
        for sim in started:
            sim.stop()
