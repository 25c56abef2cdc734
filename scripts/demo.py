#!/usr/bin/env python3
"""`make demo`: provisiond on SQLite with the example inventory, serving until Ctrl-C.

It runs the real commands a new user would: `provisiond db upgrade`, `token create`,
`serve`, `inventory apply`, `machines list`. DEMO_ONESHOT=1 stops after the summary
(exit 0 on success), for scripts. Everything it starts is stopped by PID on exit.
The virtual-rack demo (IPMI discovery, PXE, deploy to instance-ready) comes with the
deploy issue; see README.md.
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
URL = f"http://127.0.0.1:{PORT}"
PROVISIOND = [sys.executable, "-m", "provisiond"]


def step(title: str) -> None:
    print(f"\n\033[1m==> {title}\033[0m", flush=True)


def run(env: dict[str, str], *args: str, capture: bool = False) -> str:
    result = subprocess.run(
        [*PROVISIOND, *args], env=env, text=True, capture_output=capture, check=False
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


def main() -> int:
    oneshot = os.environ.get("DEMO_ONESHOT") == "1"
    shutil.rmtree(DATA, ignore_errors=True)
    DATA.mkdir(parents=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROVISIOND_")}
    env.update(PROVISIOND_DATA_DIR=str(DATA), PROVISIOND_LISTEN_PORT=str(PORT), PROVISIOND_URL=URL)

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
    stop = False

    def on_signal(_sig: int, _frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        wait_healthy(server)
        step("provisiond inventory apply inventory/example.yaml")
        run(env, "inventory", "apply", str(ROOT / "inventory" / "example.yaml"))
        step("provisiond machines list")
        run(env, "machines", "list")
        print(
            f"\nprovisiond is serving the example inventory.\n"
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
        if server.poll() is None:
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(15)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait(5)
        log.close()
        print("demo: stopped provisiond", flush=True)


if __name__ == "__main__":
    sys.exit(main())
