#!/usr/bin/env python3
"""`make demo`: provisiond on SQLite with the example inventory, serving until Ctrl-C.

It runs the real commands a new user would: `provisiond db upgrade`, `token create`,
`serve`, `inventory apply`, then starts three simulated IPMI BMCs on
127.0.0.1:16001-16003 (`provisiond sim bmc`), stores a credential set, discovers the
BMCs over IPMI (they match the inventory's machines, which gain serial, vendor and
model), powers vm1 on through its BMC and lists the machines. DEMO_ONESHOT=1 stops
after the summary (exit 0 on success), for scripts. Everything it starts is stopped
by PID on exit. PXE boot and deploy to instance-ready come with the deploy issue.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(os.environ.get("DEMO_DATA_DIR", ROOT / ".provisiond-demo"))
PORT = int(os.environ.get("DEMO_PORT", "8080"))
BMC_PORT = int(os.environ.get("DEMO_BMC_PORT", "16001"))  # the example inventory's BMCs
URL = f"http://127.0.0.1:{PORT}"
PROVISIOND = [sys.executable, "-m", "provisiond"]


def step(title: str) -> None:
    print(f"\n\033[1m==> {title}\033[0m", flush=True)


def run(env: dict[str, str], *args: str, capture: bool = False, stdin: str | None = None) -> str:
    result = subprocess.run(
        [*PROVISIOND, *args], env=env, text=True, capture_output=capture, check=False, input=stdin
    )
    if result.returncode != 0:
        if capture:
            sys.stderr.write(result.stderr)
        raise SystemExit(f"demo: 'provisiond {' '.join(args)}' failed ({result.returncode})")
    return result.stdout if capture else ""


def wait_healthy(proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"demo: provisiond serve exited; see {DATA / 'serve.log'}")
        try:
            if httpx.get(URL + "/healthz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"demo: provisiond did not become healthy in {timeout:.0f}s")


def stop_by_pid(proc: subprocess.Popen[bytes] | None, timeout: float) -> None:
    """SIGTERM, then SIGKILL after ``timeout`` s: only the processes the demo started."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def wait_listening(proc: subprocess.Popen[bytes], log: Path, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"demo: the BMC simulator exited; see {log}")
        if b"listening on" in log.read_bytes():
            return
        time.sleep(0.1)
    raise SystemExit(f"demo: the BMC simulator did not start in {timeout:.0f}s")


def main() -> int:
    oneshot = os.environ.get("DEMO_ONESHOT") == "1"
    shutil.rmtree(DATA, ignore_errors=True)
    DATA.mkdir(parents=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROVISIOND_")}
    env.update(
        PROVISIOND_DATA_DIR=str(DATA),
        PROVISIOND_LISTEN_PORT=str(PORT),
        PROVISIOND_URL=URL,
        PROVISIOND_POWER_SYNC_INTERVAL_S="5",  # so the table fills in while the demo serves
    )

    step("provisiond db upgrade (SQLite in .provisiond-demo/)")
    run(env, "db", "upgrade")
    step("provisiond token create --name demo-admin --role admin")
    token = run(env, "token", "create", "--name", "demo-admin", "--role", "admin", capture=True)
    token = token.strip().splitlines()[-1]
    token_file = DATA / "admin.token"
    token_file.write_text(token + "\n")
    token_file.chmod(0o600)
    env["PROVISIOND_TOKEN"] = token

    step(f"provisiond serve on {URL}")
    log = (DATA / "serve.log").open("ab")
    server = subprocess.Popen([*PROVISIOND, "serve"], env=env, stdout=log, stderr=log)
    bmcs: subprocess.Popen[bytes] | None = None
    stop = False

    def on_signal(_sig: int, _frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        wait_healthy(server)
        inventory = ROOT / "inventory" / "example.yaml"
        if BMC_PORT != 16001:  # tests move the simulated BMCs off the default ports
            text = inventory.read_text()
            for i in range(3):
                text = text.replace(f"port: {16001 + i}", f"port: {BMC_PORT + i}")
            inventory = DATA / "example.yaml"
            inventory.write_text(text)
        step("provisiond inventory apply inventory/example.yaml")
        run(env, "inventory", "apply", str(inventory))

        ports = f"{BMC_PORT}-{BMC_PORT + 2}"
        step(f"provisiond sim bmc --count 3 --base-port {BMC_PORT}  (simulated IPMI BMCs)")
        bmc_log = (DATA / "bmc-sim.log").open("ab")
        bmcs = subprocess.Popen(
            [*PROVISIOND, "sim", "bmc", "--count", "3", "--base-port", str(BMC_PORT)],
            env=env,
            stdout=bmc_log,
            stderr=bmc_log,
        )
        wait_listening(bmcs, DATA / "bmc-sim.log")
        step("provisiond credentials add lab-default --username admin --password-stdin")
        run(
            env,
            "credentials",
            "add",
            "lab-default",
            "-u",
            "admin",
            "--password-stdin",
            stdin="password\n",
        )
        step(f"provisiond discover 127.0.0.1/32 --ports {ports} --credentials lab-default")
        run(env, "discover", "127.0.0.1/32", "--ports", ports, "--credentials", "lab-default")
        step("provisiond machines power vm1 on")
        run(env, "machines", "power", "vm1", "on")
        step("provisiond machines list")
        run(env, "machines", "list")
        print(
            f"\nprovisiond is serving the example inventory; its BMCs are simulated on "
            f"127.0.0.1:{ports}.\n"
            f"  API:     {URL}/api/v1   (OpenAPI docs: {URL}/docs)\n"
            f"  health:  {URL}/healthz   metrics: {URL}/metrics\n"
            f"  logs:    {DATA / 'serve.log'}\n"
            f"  try:     export PROVISIOND_URL={URL} PROVISIOND_TOKEN=$(cat {token_file})\n"
            f"           {sys.executable} -m provisiond events --limit 5\n",
            flush=True,
        )
        if oneshot:
            return 0
        print("Ctrl-C stops the demo.", flush=True)
        while not stop and server.poll() is None:
            time.sleep(0.2)
        return 0 if stop else 1
    finally:
        stop_by_pid(bmcs, 10)
        stop_by_pid(server, 15)
        log.close()
        print("demo: stopped provisiond and the simulated BMCs", flush=True)


if __name__ == "__main__":
    sys.exit(main())
