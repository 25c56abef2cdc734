"""dnsmasq's ``--dhcp-script`` on PostgreSQL: DHCP leases live in the ``dhcplease`` table.

With ``--leasefile-ro`` dnsmasq keeps no lease file. It runs this script (as root,
one instance at a time, from its script helper):

- ``init`` once at start-up, and reads the network's current leases from stdout in
  lease-file format ``<expiry epoch> <mac> <ip> <hostname|*> <client-id|*>`` (0 is an
  infinite lease). So a daemon taking the network over hands out the addresses the
  previous holder gave. A failed ``init`` (database unreachable) exits non-zero and
  dnsmasq refuses to start: better no DHCP than addresses handed out twice;
- ``add`` / ``old`` ``<mac> <ip> [hostname]`` on a new, changed or renewed lease
  (``DNSMASQ_LEASE_EXPIRES``, ``DNSMASQ_CLIENT_ID`` in the environment);
- ``del`` ``<mac> <ip> [hostname]`` when a lease ends;
- anything else (``tftp``, ``arp-add``...) is ignored.

Writes are fenced: they happen only while the DHCP role of the network is still this
holder's and unexpired (the ``leadership`` row), so a holder whose time ran out
cannot overwrite what its successor's dnsmasq hands out.

dnsmasq may run in the network's namespace, where the database is not reachable:
the hook first joins the daemon's own network namespace (``setns`` on
``/proc/<daemon pid>/ns/net``; dnsmasq runs as root and dies with the daemon, so that
PID is the daemon's while the hook runs).

It runs as a plain file (``python -I -S lease_hook.py <conf> <action> ...``) written
by :func:`install`, importing only the standard library: an ``add``/``old``/``del``
(and ``init``) is one JSON line to the daemon's unix socket (:mod:`.lease_sink`,
which answers from threads of its own, so a hung event loop does not stop it),
~0.1 s a call, mostly Python's start. When the daemon does not answer, the hook
connects to the database itself with psycopg (~0.6 s: its import dominates). The
conf file (mode 0600, in the network's state folder) holds the connection string,
the network, the holder and the socket.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

#: Bounds every call: dnsmasq runs one script at a time and queues the rest.
CONNECT_TIMEOUT_S = 5
STATEMENT_TIMEOUT_MS = 5000
SOCKET_TIMEOUT_S = 5
MAX_REPLY = 64 << 20

# Every write is fenced: only while the role is still this holder's and unexpired.
INIT_SQL = (
    "SELECT COALESCE(extract(epoch FROM expires_at)::bigint, 0), mac, ip, hostname,"
    " client_id FROM dhcplease WHERE network = %(network)s"
    " AND (expires_at IS NULL OR expires_at > now()) ORDER BY ip"
)
_DROP_OTHERS = (
    "DELETE FROM dhcplease WHERE network = %(network)s AND ip = %(ip)s AND mac <> %(mac)s"
    " AND EXISTS (SELECT 1 FROM leadership WHERE name = %(role)s::text"
    " AND holder = %(holder)s::text AND expires_at > now())"
)
_UPSERT = (
    "INSERT INTO dhcplease (network, mac, ip, hostname, client_id, expires_at, updated_by)"
    " SELECT %(network)s::text, %(mac)s::text, %(ip)s::text, %(hostname)s::text,"
    " %(client_id)s::text,"
    " CASE WHEN %(expires)s::bigint = 0 THEN NULL ELSE to_timestamp(%(expires)s::bigint) END,"
    " %(holder)s::text WHERE true"
    " AND EXISTS (SELECT 1 FROM leadership WHERE name = %(role)s::text"
    " AND holder = %(holder)s::text AND expires_at > now())"
    " ON CONFLICT (network, mac) DO UPDATE SET ip = EXCLUDED.ip,"
    " hostname = EXCLUDED.hostname, client_id = EXCLUDED.client_id,"
    " expires_at = EXCLUDED.expires_at, updated_by = EXCLUDED.updated_by"
)
_DELETE = (
    "DELETE FROM dhcplease WHERE network = %(network)s AND mac = %(mac)s AND ip = %(ip)s"
    " AND EXISTS (SELECT 1 FROM leadership WHERE name = %(role)s::text"
    " AND holder = %(holder)s::text AND expires_at > now())"
)


def lease_line(expires: int, mac: str, ip: str, hostname: str, client_id: str) -> str:
    """One line of dnsmasq's lease file."""
    return f"{expires} {mac} {ip} {hostname or '*'} {client_id or '*'}"


def init_text(rows: Any) -> str:
    """The ``init`` answer: the rows of :data:`INIT_SQL` as dnsmasq's lease file."""
    return "".join(lease_line(int(r[0]), r[1], r[2], r[3], r[4]) + "\n" for r in rows)


def _expires(env: dict[str, str]) -> int:
    try:
        return int(env.get("DNSMASQ_LEASE_EXPIRES", "0"))
    except ValueError:
        return 0


def join_netns(path: str) -> None:
    """Join the network namespace at ``path`` (the daemon's): where the database is."""
    import ctypes
    import ctypes.util

    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    fd = os.open(path, os.O_RDONLY)
    try:
        if libc.setns(fd, 0x40000000) != 0:  # CLONE_NEWNET
            raise OSError(ctypes.get_errno(), f"setns({path}) failed")
    finally:
        os.close(fd)


def event(argv: list[str], env: dict[str, str]) -> dict[str, Any] | None:
    """``add|old|del <mac> <ip> [hostname]`` as the parameters of the SQL above."""
    if len(argv) < 3 or argv[0] not in ("add", "old", "del"):
        return None
    mac = argv[1].lower()
    if len(mac) > 17:  # a DUID or a non-Ethernet hardware type: not kept
        return None
    return {
        "action": argv[0],
        "mac": mac,
        "ip": argv[2],
        "hostname": argv[3][:255] if len(argv) > 3 else "",
        "client_id": env.get("DNSMASQ_CLIENT_ID", "")[:255],
        "expires": _expires(env),
    }


def write(execute: Any, params: dict[str, Any]) -> None:
    """One event's statements through ``execute(sql, params)``, in the caller's transaction."""
    if params["action"] == "del":
        execute(_DELETE, params)
    else:
        execute(_DROP_OTHERS, params)
        execute(_UPSERT, params)


def _send(path: str, params: dict[str, Any]) -> str | None:
    """The event to the daemon's socket: what follows its ``ok`` line, or None."""
    import socket

    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(SOCKET_TIMEOUT_S)
            sock.connect(path)
            sock.sendall(json.dumps(params).encode() + b"\n")
            reply = b""
            while len(reply) < MAX_REPLY:  # bounded: the size, and each recv's timeout
                chunk = sock.recv(65536)
                if not chunk:
                    break
                reply += chunk
    except OSError:
        return None
    head, _, rest = reply.decode(errors="replace").partition("\n")
    return rest if head == "ok" else None


def main(argv: list[str], env: dict[str, str]) -> int:
    if len(argv) < 2:
        print("usage: lease_hook.py <conf> <action> [mac ip [hostname]]", file=sys.stderr)
        return 2
    action = argv[1]
    if action not in ("init", "add", "old", "del"):
        return 0  # tftp, arp-add, relay-snoop and future actions: not ours
    conf: dict[str, Any] = json.loads(Path(argv[0]).read_text())
    params: dict[str, Any] = {
        "network": conf["network"],
        "role": conf["role"],
        "holder": conf["holder"],
    }
    if action == "init":
        params["action"] = "init"
    else:
        found = event(argv[1:], env)
        if found is None:
            return 0
        params.update(found)
    if conf.get("socket"):
        answer = _send(conf["socket"], params)
        if answer is not None:
            sys.stdout.write(answer)
            return 0
    if conf.get("netns"):
        join_netns(conf["netns"])
    import site

    site.main()  # run with -S (a fast start): psycopg is in the site-packages
    import psycopg

    with psycopg.connect(
        conf["dsn"],
        connect_timeout=CONNECT_TIMEOUT_S,
        options=f"-c statement_timeout={STATEMENT_TIMEOUT_MS}",
        autocommit=False,
    ) as conn:
        if action == "init":
            sys.stdout.write(init_text(conn.execute(INIT_SQL, params).fetchall()))
            return 0
        with conn.transaction():
            write(conn.execute, params)
    return 0


def install(
    folder: Path,
    *,
    dsn: str,
    network: str,
    role: str,
    holder: str,
    netns: str | None = None,
    socket: Path | None = None,
) -> Path:
    """Write the conf (0600) and an executable wrapper; returns the wrapper's path.

    ``netns``: the namespace file the hook joins first (the daemon's, when dnsmasq runs
    in another namespace)."""
    conf = folder / "lease-hook.json"
    tmp = folder / ".lease-hook.json.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        conf_data = {"dsn": dsn, "network": network, "role": role, "holder": holder}
        json.dump({**conf_data, "netns": netns, "socket": socket and str(socket)}, fh)
    os.replace(tmp, conf)
    wrapper = folder / "lease-hook"
    tmp = folder / ".lease-hook.tmp"
    tmp.write_text(
        f'#!/bin/sh\nexec "{sys.executable}" -I -S "{Path(__file__).resolve()}" "{conf}" "$@"\n'
    )
    tmp.chmod(0o700)
    os.replace(tmp, wrapper)
    return wrapper


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:], dict(os.environ)))
    except Exception as exc:  # dnsmasq logs our stderr; never a traceback there
        print(f"provisiond lease hook: {type(exc).__name__}: {exc}", file=sys.stderr)
        sys.exit(1)
