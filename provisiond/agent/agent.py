#!/usr/bin/python3
"""provisiond machine agent: report this machine's hardware, then heartbeat.

A single file on purpose: it must run from a tiny ramdisk with only
python3.11-minimal and libpython3.11-stdlib, so it imports nothing outside the
standard library (and nothing from provisiond). The daemon copies it to
``/opt/provisiond-agent/agent.py`` and runs it as a service.

Usage::

    agent.py --env-file /etc/provisiond/agent.env      # inventory, then heartbeat forever
    agent.py --url http://10.0.0.1:8080 --machine UUID --token-file /etc/provisiond/token --once
    agent.py --print-inventory                         # the report as JSON, no network

The env file holds ``PROVISIOND_URL=`` (one daemon's URL, or several separated by
spaces: tried in turn), ``PROVISIOND_MACHINE=`` (the machine's uuid) and
``PROVISIOND_AGENT_TOKEN=`` lines; command-line options win over it.

The loop never dies of a network error: each report is tried a bounded number of
times with exponential backoff plus jitter, and an inventory that could not be
delivered is sent again before the next heartbeat. ``--once`` sends one
inventory and one heartbeat and exits 0, or 1 with the reason on stderr.

LLDP: before the inventory the agent listens on every interface that is up for the
first LLDP frame of each (:mod:`lldp`, beside this file), for ``--lldp-wait`` seconds
at most (``PROVISIOND_LLDP_WAIT_S`` in the environment or the env file; default 5).
That is the trade-off of a one-shot capture: the virtual rack's switch sends every 2 s,
but real switches send every 30 s, so on a real network set it to ~35 (an inspection
then takes that much longer) or run lldpd, whose ``lldpcli`` view the agent reports
when the capture hears nothing. 0 skips the capture.

The daemon's reply may carry an ``action``; the only one is ``poweroff``
(``systemctl poweroff`` under systemd, else ``poweroff -f``). ``--no-actions``
logs the action instead of running it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import random
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from http.client import HTTPException
from typing import Any, NoReturn

try:
    from provisiond.agent import lldp
except ImportError:  # on a machine: lldp.py sits beside this file
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import lldp  # type: ignore[no-redef, import-not-found]

AGENT_VERSION = "0.2.0"
USER_AGENT = f"provisiond-agent/{AGENT_VERSION}"
DEFAULT_ENV_FILE = "/etc/provisiond/agent.env"
#: Block devices that are not disks: loop, RAM, compressed swap, device-mapper, optical,
#: floppy, network block devices.
SKIP_DISKS = ("loop", "ram", "zram", "dm-", "sr", "fd", "nbd")
#: Seconds between tries of one report; a random 0-50% is added so a rack that
#: lost the daemon does not come back in lockstep.
BACKOFF = (1, 2, 4, 8, 16)
HTTP_TIMEOUT_S = 15
#: Seconds to listen for LLDP before the inventory: longer than the virtual rack switch's
#: 2 s interval, far shorter than a real switch's usual 30 s (see the module doc).
LLDP_WAIT_S = 5.0
LLDP_WAIT_ENV = "PROVISIOND_LLDP_WAIT_S"
INTERVAL_BOUNDS = (1, 3600)
#: HTTP statuses that retrying cannot fix (bad token, bad report, no such route).
FATAL_STATUSES = frozenset({400, 401, 403, 404, 405, 413, 422})

log = logging.getLogger("provisiond-agent")


class ReportError(Exception):
    """A report the daemon did not accept; ``fatal`` when retrying cannot help."""

    def __init__(self, message: str, *, fatal: bool) -> None:
        super().__init__(message)
        self.fatal = fatal


# --- inventory ----------------------------------------------------------------


def _read(path: str, default: str = "") -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return handle.read().strip()
    except OSError:
        return default


def _run(argv: list[str], timeout: float = 10) -> str:
    """stdout of a helper command, or "" if it is missing, fails or hangs."""
    if shutil.which(argv[0]) is None:
        return ""
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.SubprocessError):
        return ""
    return done.stdout if done.returncode == 0 else ""


def cpu_info(root: str) -> tuple[int, str]:
    count, model = 0, ""
    for line in _read(os.path.join(root, "proc/cpuinfo")).splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "processor":
            count += 1
        elif key == "model name" and not model:
            model = value.strip()
    return count or (os.cpu_count() or 1), model


def ram_mib(root: str) -> int:
    for line in _read(os.path.join(root, "proc/meminfo")).splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024
    return 0


def disks(root: str) -> list[dict[str, Any]]:
    base = os.path.join(root, "sys/block")
    found = []
    for name in sorted(os.listdir(base)) if os.path.isdir(base) else []:
        if name.startswith(SKIP_DISKS):
            continue
        sectors = _read(os.path.join(base, name, "size"), "0")
        size = int(sectors) * 512 if sectors.isdigit() else 0
        if size == 0:  # an empty card reader or a detached device
            continue
        found.append(
            {
                "name": name,
                "size_bytes": size,
                "model": _read(os.path.join(base, name, "device/model"))[:128],
                "rotational": _read(os.path.join(base, name, "queue/rotational")) == "1",
            }
        )
    return found


def ipv4_addresses() -> dict[str, list[str]]:
    """Interface name -> ["10.0.0.5/24", ...] from ``ip -o -4 addr``, if ``ip`` exists."""
    found: dict[str, list[str]] = {}
    for line in _run(["ip", "-o", "-4", "addr", "show"]).splitlines():
        fields = line.split()
        if len(fields) >= 4 and fields[2] == "inet":
            found.setdefault(fields[1].split("@")[0], []).append(fields[3])
    return found


def nics(root: str, addresses: dict[str, list[str]]) -> list[dict[str, Any]]:
    base = os.path.join(root, "sys/class/net")
    found = []
    for name in sorted(os.listdir(base)) if os.path.isdir(base) else []:
        path = os.path.join(base, name)
        mac = _read(os.path.join(path, "address")).lower()
        if name == "lo" or len(mac) != 17:  # loopback, or no Ethernet address (tun, ip6tnl)
            continue
        speed = _read(os.path.join(path, "speed"))  # EINVAL while the link is down
        found.append(
            {
                "name": name,
                "mac": mac,
                "operstate": _read(os.path.join(path, "operstate"), "unknown"),
                "speed_mbps": int(speed) if speed.isdigit() else None,
                "ipv4": addresses.get(name, []),
                "virtual": not os.path.exists(os.path.join(path, "device")),
            }
        )
    return found


def dmi(root: str) -> dict[str, str]:
    base = os.path.join(root, "sys/class/dmi/id")
    return {
        key: _read(os.path.join(base, key))[:128]
        for key in ("sys_vendor", "product_name", "product_serial")
    }


def inventory(root: str = "/", lldp_wait_s: float = LLDP_WAIT_S) -> dict[str, Any]:
    """Everything the agent reports, from /proc, /sys and (on the real root) ``ip`` and LLDP."""
    live = os.path.realpath(root) == "/"
    cpus, cpu_model = cpu_info(root)
    uname = os.uname()
    return {
        "agent_version": AGENT_VERSION,
        "hostname": uname.nodename,
        "kernel": uname.release,
        "arch": uname.machine,
        # The kernel exposes /sys/firmware/efi only when UEFI booted it.
        "firmware": "uefi" if os.path.isdir(os.path.join(root, "sys/firmware/efi")) else "bios",
        "cpus": cpus,
        "cpu_model": cpu_model,
        "ram_mib": ram_mib(root),
        "disks": disks(root),
        "nics": nics(root, ipv4_addresses() if live else {}),
        "dmi": dmi(root),
        "lldp": lldp.neighbours(root, lldp_wait_s) if live else [],
    }


def heartbeat_body() -> dict[str, Any]:
    uptime = _read("/proc/uptime").split()
    return {
        "agent_version": AGENT_VERSION,
        "hostname": os.uname().nodename,
        "uptime_s": float(uptime[0]) if uptime else None,
    }


# --- talking to the daemon ----------------------------------------------------


class Client:
    """POSTs JSON to ``<url>/api/v1/agent/<machine>/<kind>`` with the agent token."""

    def __init__(self, url: str, machine: str, token: str) -> None:
        # Several daemons (space-separated URLs): each is tried in turn, and the one
        # that answered stays first.
        self.bases = [f"{u.rstrip('/')}/api/v1/agent/{machine}" for u in url.split()]
        self.token = token
        # The provisioning network is reached directly; an inherited http_proxy would
        # send the token somewhere else.
        self.opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    @property
    def base(self) -> str:
        return self.bases[0]

    def post(self, kind: str, body: dict[str, Any]) -> dict[str, Any]:
        for _ in self.bases[1:]:
            try:
                return self._post(kind, body)
            except ReportError as exc:
                if exc.fatal:
                    raise
                log.warning("%s; trying the next daemon", exc)
                self.bases.append(self.bases.pop(0))
        return self._post(kind, body)

    def _post(self, kind: str, body: dict[str, Any]) -> dict[str, Any]:
        request = urllib.request.Request(  # noqa: S310 (the URL is the operator's own)
            f"{self.base}/{kind}",
            data=json.dumps(body).encode(),
            method="POST",
            headers={
                "Authorization": f"Bearer {self.token}",
                "Content-Type": "application/json",
                "User-Agent": USER_AGENT,
            },
        )
        try:
            with self.opener.open(request, timeout=HTTP_TIMEOUT_S) as response:
                reply = json.loads(response.read(1 << 20) or b"{}")
        except urllib.error.HTTPError as exc:
            raise ReportError(_http_error(kind, exc), fatal=exc.code in FATAL_STATUSES) from None
        except (urllib.error.URLError, OSError, HTTPException) as exc:
            reason = getattr(exc, "reason", exc)
            raise ReportError(f"{kind}: cannot reach {self.base}: {reason}", fatal=False) from None
        except ValueError:
            raise ReportError(f"{kind}: the daemon's reply is not JSON", fatal=False) from None
        if not isinstance(reply, dict):
            raise ReportError(f"{kind}: the daemon's reply is not a JSON object", fatal=False)
        return reply


def _http_error(kind: str, exc: urllib.error.HTTPError) -> str:
    try:
        error = json.loads(exc.read(1 << 16)).get("error", {})
        detail = f"{error.get('message', '')} (hint: {error.get('hint', '')})"
    except (ValueError, AttributeError, OSError):
        detail = exc.reason
    if exc.code == 401:
        return f"{kind}: the daemon rejected the agent token (HTTP 401): {detail}"
    return f"{kind}: the daemon refused the report (HTTP {exc.code}): {detail}"


def send(
    client: Client,
    kind: str,
    body: Callable[[], dict[str, Any]],
    *,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, Any]:
    """One report, tried up to ``len(BACKOFF) + 1`` times; raises the last ReportError."""
    attempt = 0
    while True:
        try:
            return client.post(kind, body())
        except ReportError as exc:
            if exc.fatal or attempt == len(BACKOFF):
                raise
            wait = BACKOFF[attempt] * (1 + random.random() / 2)  # noqa: S311 (jitter)
            attempt += 1
            log.warning("%s (try %d, again in %.1fs)", exc, attempt, wait)
            sleep(wait)


# --- actions ------------------------------------------------------------------


#: Seconds between a poweroff request and the poweroff, so the SSH session that just
#: started this agent can end cleanly instead of hanging on a vanished peer.
POWEROFF_DELAY_S = 5.0


def power_off() -> None:
    argv = ["systemctl", "poweroff"] if os.path.isdir("/run/systemd/system") else ["poweroff", "-f"]
    log.warning("powering off in %.0fs: %s", POWEROFF_DELAY_S, " ".join(argv))
    time.sleep(POWEROFF_DELAY_S)
    try:
        subprocess.run(argv, check=False, timeout=60)
    except (OSError, subprocess.SubprocessError) as exc:
        log.error("%s failed: %s", argv[0], exc)


ACTIONS: dict[str, Callable[[], None]] = {"poweroff": power_off}


class Agent:
    """The report loop; ``run_action`` is injectable so tests never power anything off."""

    def __init__(
        self,
        client: Client,
        *,
        root: str = "/",
        run_action: Callable[[str], None] | None = None,
        sleep: Callable[[float], None] = time.sleep,
        lldp_wait_s: float = LLDP_WAIT_S,
    ) -> None:
        self.client = client
        self.root = root
        self.lldp_wait_s = lldp_wait_s
        self.run_action = run_action or (lambda name: ACTIONS[name]())
        self.sleep = sleep
        self.interval = 15.0

    def handle(self, kind: str, reply: dict[str, Any]) -> str | None:
        interval = reply.get("interval_s")
        if isinstance(interval, int | float):
            self.interval = float(min(max(interval, INTERVAL_BOUNDS[0]), INTERVAL_BOUNDS[1]))
        action = reply.get("action")
        log.info("%s accepted; machine is %s", kind, reply.get("state", "?"))
        if action in ACTIONS:
            log.warning("daemon asks for action %s", action)
            self.run_action(str(action))
        elif action:
            log.error("ignoring unknown action %r (agent %s)", action, AGENT_VERSION)
        return str(action) if action else None

    def report(self, kind: str) -> dict[str, Any]:
        # The inventory is collected once (LLDP takes a while) and sent until accepted.
        report = inventory(self.root, self.lldp_wait_s) if kind == "inventory" else None
        reply = send(self.client, kind, lambda: report or heartbeat_body(), sleep=self.sleep)
        self.handle(kind, reply)
        return reply

    def once(self) -> dict[str, Any]:
        """Inventory, then one heartbeat; raises ReportError on the first failure."""
        return {kind: self.report(kind) for kind in ("inventory", "heartbeat")}

    def forever(self) -> None:
        inventory_sent = False
        while True:
            for kind in ("heartbeat",) if inventory_sent else ("inventory", "heartbeat"):
                try:
                    self.report(kind)
                    inventory_sent = inventory_sent or kind == "inventory"
                except ReportError as exc:
                    log.error("%s; next try in %.0fs", exc, self.interval)
                    break
            self.sleep(self.interval)


# --- configuration --------------------------------------------------------------


def read_env_file(path: str) -> dict[str, str]:
    """KEY=VALUE lines; blank lines and # comments skipped, one level of quotes removed."""
    values = {}
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            line = line.strip()
            if not line or line.startswith("#") or "=" not in line:
                continue
            key, _, value = line.removeprefix("export ").partition("=")
            value = value.strip()
            if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
                value = value[1:-1]
            values[key.strip()] = value
    return values


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="provisiond-agent", description="Report this machine's hardware to provisiond."
    )
    parser.add_argument("--env-file", help=f"KEY=VALUE settings (e.g. {DEFAULT_ENV_FILE})")
    parser.add_argument("--url", help="the daemon's base URL (PROVISIOND_URL)")
    parser.add_argument("--machine", help="this machine's uuid (PROVISIOND_MACHINE)")
    parser.add_argument("--token-file", help="file holding the agent token")
    parser.add_argument("--root", default="/", help="read /proc and /sys under this directory")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--once", action="store_true", help="one inventory and one heartbeat")
    mode.add_argument("--print-inventory", action="store_true", help="print the report and exit")
    parser.add_argument("--no-actions", action="store_true", help="log actions, do not run them")
    parser.add_argument(
        "--lldp-wait", type=lldp_seconds, default=os.environ.get(LLDP_WAIT_ENV), metavar="S",
        help=f"listen this long for LLDP neighbours (${LLDP_WAIT_ENV}; default {LLDP_WAIT_S:g})",
    )  # fmt: skip
    parser.add_argument("--version", action="version", version=f"provisiond-agent {AGENT_VERSION}")
    return parser.parse_args(argv)


def lldp_seconds(text: str) -> float:
    """A capture window from 0 (no capture) to lldp.MAX_WAIT_S seconds."""
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value <= lldp.MAX_WAIT_S:
        raise argparse.ArgumentTypeError(f"{text!r} is not 0 to {lldp.MAX_WAIT_S:g} seconds")
    return value


def settings(args: argparse.Namespace) -> tuple[str, str, str]:
    """(url, machine, token) from the options and the env file; exits 2 naming what is missing."""
    env: dict[str, str] = {}
    if args.env_file:
        try:
            env = read_env_file(args.env_file)
        except OSError as exc:
            _config_error(f"cannot read --env-file {args.env_file}: {exc.strerror}")
        if os.stat(args.env_file).st_mode & 0o004:
            log.warning(
                "%s is world-readable and holds the agent token; chmod 600 it", args.env_file
            )
    if args.lldp_wait is None and env.get(LLDP_WAIT_ENV):
        try:
            args.lldp_wait = lldp_seconds(env[LLDP_WAIT_ENV])
        except argparse.ArgumentTypeError as exc:
            _config_error(f"{LLDP_WAIT_ENV} in {args.env_file}: {exc}")
    token = env.get("PROVISIOND_AGENT_TOKEN", "")
    if args.token_file:
        try:
            token = _read_required(args.token_file)
        except OSError as exc:
            _config_error(f"cannot read --token-file {args.token_file}: {exc.strerror}")
    url = (args.url or env.get("PROVISIOND_URL", "")).strip()
    machine = args.machine or env.get("PROVISIOND_MACHINE", "")
    missing = [
        name
        for name, value in (
            ("PROVISIOND_URL (--url)", url),
            ("PROVISIOND_MACHINE (--machine)", machine),
            ("PROVISIOND_AGENT_TOKEN (--token-file)", token),
        )
        if not value
    ]
    if missing:
        _config_error(f"missing {', '.join(missing)}; pass --env-file {DEFAULT_ENV_FILE}")
    for one in url.split():
        if not one.startswith(("http://", "https://")):
            _config_error(f"PROVISIOND_URL {one!r} is not an http:// or https:// URL")
    return url, machine, token


def _read_required(path: str) -> str:
    with open(path, encoding="utf-8") as handle:
        return handle.read().strip()


def _config_error(message: str) -> NoReturn:
    log.error("%s", message)
    raise SystemExit(2)


def _log_action(name: str) -> None:
    log.warning("not running %s: --no-actions", name)


def _stop(_signum: int, _frame: object) -> None:
    raise SystemExit(0)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(
        stream=sys.stderr,
        level=logging.INFO,
        format="%(asctime)s provisiond-agent %(levelname)s %(message)s",
    )
    args = parse_args(argv)
    if args.print_inventory:
        wait = LLDP_WAIT_S if args.lldp_wait is None else args.lldp_wait
        print(json.dumps(inventory(args.root, wait), indent=2, sort_keys=True))
        return 0
    url, machine, token = settings(args)
    client = Client(url, machine, token)
    agent = Agent(
        client, root=args.root, run_action=_log_action if args.no_actions else None,
        lldp_wait_s=LLDP_WAIT_S if args.lldp_wait is None else args.lldp_wait,
    )  # fmt: skip
    signal.signal(signal.SIGTERM, _stop)
    log.info("agent %s for machine %s, daemon %s", AGENT_VERSION, machine, url)
    if args.once:
        try:
            replies = agent.once()
        except ReportError as exc:
            log.error("%s", exc)
            return 1
        print(json.dumps(replies, sort_keys=True))
        return 0
    with contextlib.suppress(KeyboardInterrupt):
        agent.forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
