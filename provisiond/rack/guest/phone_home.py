#!/usr/bin/python3
"""Run inside the provisiond guest ramdisk by /init; the python3.11 standard library only.

The kernel line names a NoCloud seed (``ds=nocloud-net;s=<seed_url>``), as cloud-init
would read it. This program fetches ``<seed_url>user-data`` and reads just enough of
the cloud-config: ``ssh_authorized_keys`` (JSON string literals, as the daemon's
template writes them with ``tojson``, or plain scalars), ``hostname`` and the
``phone_home`` block's ``url``. It installs the keys for root, starts dropbear with the
host key /init generated, waits for port 22 to accept, then POSTs the host key to the
phone_home URL as cloud-init's phone_home module does (a form with ``pub_key_ed25519``,
``instance_id``, ``hostname``).

Every network step retries a bounded number of times and logs each try to the console
(the serial log). A 4xx answer other than 408 or 429 is the daemon refusing us, so it
stops the retries. Without a seed on the kernel line the machine stays up without sshd.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field

HOST_KEY = "/etc/dropbear/dropbear_ed25519_host_key"
AUTHORIZED_KEYS = "/root/.ssh/authorized_keys"
DROPBEAR_LOG = "/var/log/dropbear.log"
TRIES = 30
PAUSE = 2.0
TIMEOUT = 5.0
RETRYABLE_4XX = (408, 429)
NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def log(message: str) -> None:
    print(f"provisiond-guest: {message}", flush=True)


def redact(url: str) -> str:
    """The URL without its query string, which carries the callback token."""
    parts = urllib.parse.urlsplit(url)
    return urllib.parse.urlunsplit(parts._replace(query="…" if parts.query else ""))


def kernel_args(cmdline: str) -> dict[str, str]:
    args: dict[str, str] = {}
    for word in cmdline.split():
        key, _, value = word.partition("=")
        args[key] = value
    return args


def seed_url(args: dict[str, str]) -> str | None:
    """``nocloud-net;s=http://x/meta/u/`` → ``http://x/meta/u/`` (cloud-init's ds= syntax)."""
    source, *options = args.get("ds", "").split(";")
    if source not in ("nocloud-net", "nocloud"):
        return None
    for option in options:
        key, _, value = option.partition("=")
        if key in ("s", "seedfrom") and value:
            return value if value.endswith("/") else value + "/"
    return None


def scalar(text: str) -> str:
    """A YAML scalar as the daemon's template writes it: JSON-quoted, single-quoted or bare."""
    text = text.strip()
    if text.startswith('"'):
        value = json.loads(text)
        return value if isinstance(value, str) else str(value)
    if len(text) >= 2 and text[0] == text[-1] == "'":
        return text[1:-1].replace("''", "'")
    return text


@dataclass
class CloudConfig:
    ssh_keys: list[str] = field(default_factory=list)
    phone_home_url: str | None = None
    hostname: str | None = None


def parse_user_data(text: str) -> CloudConfig:
    config = CloudConfig()
    section = ""
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if not line[0].isspace():
            key, _, value = line.partition(":")
            section = key.strip()
            if section == "hostname" and value.strip():
                config.hostname = scalar(value)
            continue
        item = line.strip()
        if section == "ssh_authorized_keys" and item.startswith("- "):
            config.ssh_keys.append(scalar(item[2:]))
        elif section == "phone_home" and item.startswith("url:"):
            config.phone_home_url = scalar(item[4:])
    return config


def request(what: str, url: str, data: bytes | None = None) -> bytes | None:
    """GET (or POST ``data``) with bounded retries; None when every try failed or refused."""
    if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
        log(f"{what}: {redact(url)} is not an http(s) URL; giving up")
        return None
    headers = {"Content-Type": "application/x-www-form-urlencoded"} if data else {}
    for attempt in range(1, TRIES + 1):
        outcome = ""
        try:
            req = urllib.request.Request(url, data=data, headers=headers)  # noqa: S310 (http(s) only)
            with NO_PROXY.open(req, timeout=TIMEOUT) as response:
                body: bytes = response.read()
                log(f"{what}: {redact(url)} try {attempt}/{TRIES}: HTTP {response.status}")
                return body
        except urllib.error.HTTPError as exc:
            outcome = f"HTTP {exc.code}"
            if 400 <= exc.code < 500 and exc.code not in RETRYABLE_4XX:
                log(f"{what}: {redact(url)} refused ({outcome}); giving up")
                return None
        except (OSError, ValueError) as exc:
            outcome = f"{type(exc).__name__}: {exc}"
        log(f"{what}: {redact(url)} try {attempt}/{TRIES}: {outcome}")
        if attempt < TRIES:
            time.sleep(PAUSE)
    log(f"{what}: no answer after {TRIES} tries; giving up")
    return None


def install_keys(keys: list[str]) -> None:
    os.makedirs(os.path.dirname(AUTHORIZED_KEYS), mode=0o700, exist_ok=True)
    os.chmod(os.path.dirname(AUTHORIZED_KEYS), 0o700)
    fd = os.open(AUTHORIZED_KEYS, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.writelines(key + "\n" for key in keys)
    os.chmod(AUTHORIZED_KEYS, 0o600)


def set_hostname(name: str) -> None:
    if re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9.-]{0,62}", name):
        socket.sethostname(name)
    else:
        log(f"ignoring hostname {name!r}: not a valid host name")


def start_dropbear() -> bool:
    """Start dropbear in the foreground of its own session; True once port 22 accepts."""
    with open(DROPBEAR_LOG, "ab") as out:
        subprocess.Popen(
            ["dropbear", "-r", HOST_KEY, "-p", "22", "-s", "-E", "-F"],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            start_new_session=True,
        )
    for _ in range(100):
        try:
            with socket.create_connection(("127.0.0.1", 22), timeout=1):
                return True
        except OSError:
            time.sleep(0.1)
    return False


def impostor_key() -> str:
    """A fresh host key sshd never uses: what an impostor on the machine's address sends.

    Only for the virtual rack's failure tests (``provisiond.fault=impostor-host-key`` on
    the kernel line): the daemon must refuse to trust the real sshd's different key.
    """
    path = "/run/impostor_ed25519"  # tmpfs only root writes (the ramdisk has no users)
    subprocess.run(["dropbearkey", "-t", "ed25519", "-f", path], capture_output=True, check=False)
    out = subprocess.run(["dropbearkey", "-y", "-f", path], capture_output=True, text=True)
    return next((line for line in out.stdout.splitlines() if line.startswith("ssh-")), "")


def main() -> int:
    with open("/proc/cmdline") as cmdline:
        args = kernel_args(cmdline.read())
    seed = seed_url(args)
    if seed is None:
        log("no ds=nocloud-net;s=<url> on the kernel line: not starting sshd")
        return 0
    instance_id = args.get("provisiond.machine", "")
    body = request("user-data", seed + "user-data")
    if body is None:
        return 1
    config = parse_user_data(body.decode("utf-8", "replace"))
    install_keys(config.ssh_keys)
    log(f"installed {len(config.ssh_keys)} authorized key(s) for root")
    if config.hostname:
        set_hostname(config.hostname)
    if not start_dropbear():
        log(f"dropbear did not accept on port 22 within 10 s; see {DROPBEAR_LOG}")
        return 1
    log("dropbear listening on port 22")
    if not config.phone_home_url:
        log("the user-data has no phone_home url: not calling back")
        return 0
    with open(HOST_KEY + ".pub") as pub:
        host_key = pub.read().strip()
    if args.get("provisiond.fault") == "impostor-host-key":
        host_key = impostor_key()
        log("fault injection: phoning home with a host key sshd does not use")
    form = {
        "pub_key_ed25519": host_key,
        "instance_id": instance_id,
        "hostname": socket.gethostname(),
    }
    url = config.phone_home_url.replace("$INSTANCE_ID", instance_id)
    answer = request("phone_home", url, urllib.parse.urlencode(form).encode())
    return 0 if answer is not None else 1


if __name__ == "__main__":
    sys.exit(main())
