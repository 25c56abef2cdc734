"""Boot-file serving: N concurrent clients download one file from provisiond and from nginx.

Runs a real ``provisiond serve`` on 127.0.0.1 and nginx (a child with a temp config
on another free loopback port) serving the same stored file, in the same run, in
alternating rounds. Clients are ``curl`` processes (cheap, so the client side is not
the bottleneck). Prints aggregate throughput, server CPU seconds per GB, peak RSS and
the ratio of the best rounds (the median of the paired per-round ratios too: on
shared cores single rounds are noisy); target >= 0.9x nginx.

Then a burst: ``--burst`` connections opened at once, each downloading a
``--burst-mib`` file (a PXE boot storm), from an asyncio client in this process,
bounded by ``BURST_DEADLINE_S``. A failure is anything but a complete 200 or a 503
with Retry-After (the daemon's refusal at its bound); target 0 failures. nginx gets
the same burst, for reference.

    .venv/bin/python tests/bench/bench_boot_files.py [--clients 50] [--size-mib 100]

Needs nginx (apt-get install nginx-light) and curl. Every process is stopped by PID.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from provisiond.rack.scenario import free_port  # noqa: E402
from tests.bench.benchlib import process_cpu, rss_mb  # noqa: E402
from tests.support.daemon import Daemon  # noqa: E402
from tests.support.procs import stop as stop_proc  # noqa: E402

DEADLINE_S = 300.0
BURST_DEADLINE_S = 120.0
TARGET_RATIO = 0.9
# Serve with the boot router included even before the lead registers it in ROUTERS.
SERVE = (
    "import provisiond.api.routers as r\n"
    "from provisiond.api.routers import boot\n"
    "if boot.router not in r.ROUTERS: r.ROUTERS.append(boot.router)\n"
    "from provisiond.cli import app\n"
    "app(['serve'])\n"
)


def wait_http(url: str, proc: subprocess.Popen[bytes], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server for {url} exited with {proc.returncode}")
        ok = subprocess.run(
            ["curl", "-sf", "-o", "/dev/null", "--max-time", "2", url], check=False
        ).returncode
        if ok == 0:
            return
        time.sleep(0.1)
    raise SystemExit(f"{url} did not answer in {timeout}s")


def tree_cpu(pid: int) -> float:
    """CPU seconds of ``pid`` and its children (nginx workers)."""
    total = process_cpu(pid)
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            total += process_cpu(int(child))
    return total


def download_all(url: str, clients: int, size: int, server_pid: int) -> dict[str, float]:
    cpu0 = tree_cpu(server_pid)
    started = time.monotonic()
    procs = [
        subprocess.Popen(
            [
                "curl",
                "-s",
                "-o",
                "/dev/null",
                "--max-time",
                str(int(DEADLINE_S)),
                "-w",
                "%{size_download} %{http_code}",
                url,
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(clients)
    ]
    peak_rss = 0.0
    while any(p.poll() is None for p in procs):
        peak_rss = max(peak_rss, rss_mb(server_pid))
        if time.monotonic() - started > DEADLINE_S:
            for p in procs:
                p.kill()
            raise SystemExit(f"{url}: downloads did not finish in {DEADLINE_S}s")
        time.sleep(0.05)
    elapsed = time.monotonic() - started
    cpu = tree_cpu(server_pid) - cpu0
    failed = 0
    for p in procs:
        out = (p.stdout.read() if p.stdout else "").split()
        if p.returncode != 0 or out != [str(size), "200"]:
            failed += 1
    total_gb = clients * size / 1e9
    return {
        "seconds": elapsed,
        "gbps": total_gb * 8 / elapsed,
        "mb_s": clients * size / 1e6 / elapsed,
        "cpu_s_per_gb": cpu / total_gb,
        "peak_rss_mb": peak_rss,
        "failed": failed,
    }


async def _fetch(port: int, path: str, size: int, deadline: float) -> tuple[str, float]:
    """One download: ``ok``, ``503`` (with Retry-After) or what went wrong; and seconds."""
    loop = asyncio.get_running_loop()
    started = time.monotonic()
    sock = socket.socket()
    sock.setblocking(False)
    buf = bytearray(1 << 20)
    try:
        async with asyncio.timeout(deadline - started):
            await loop.sock_connect(sock, ("127.0.0.1", port))
            request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
            await loop.sock_sendall(sock, request.encode())
            head = b""
            while b"\r\n\r\n" not in head:
                n = await loop.sock_recv_into(sock, buf)
                if not n:
                    return "closed before the headers", time.monotonic() - started
                head += buf[:n]
            head, _, rest = head.partition(b"\r\n\r\n")
            got = len(rest)
            while n := await loop.sock_recv_into(sock, buf):
                got += n
    except (OSError, TimeoutError) as exc:
        return type(exc).__name__, time.monotonic() - started
    finally:
        sock.close()
    took = time.monotonic() - started
    if head.startswith(b"HTTP/1.1 503") and b"retry-after:" in head.lower():
        return "503", took
    if head.startswith(b"HTTP/1.1 200") and got == size:
        return "ok", took
    return f"{head.split(b' ', 2)[1].decode('latin-1')} with {got} of {size} bytes", took


async def _burst(port: int, path: str, count: int, size: int) -> list[tuple[str, float]]:
    deadline = time.monotonic() + BURST_DEADLINE_S
    return await asyncio.gather(*(_fetch(port, path, size, deadline) for _ in range(count)))


def burst(port: int, path: str, count: int, size: int) -> dict[str, object]:
    started = time.monotonic()
    results = asyncio.run(_burst(port, path, count, size))
    outcomes = Counter(what for what, _ in results)
    refusals = [took for what, took in results if what == "503"]
    return {
        "seconds": time.monotonic() - started,
        "ok": outcomes.pop("ok", 0),
        "refused": outcomes.pop("503", 0),
        "slowest_refusal": max(refusals, default=0.0),
        "failures": sum(outcomes.values()),
        "kinds": dict(outcomes),
    }


def nginx_config(root: Path, port: int, work: Path) -> Path:
    conf = work / "nginx.conf"
    conf.write_text(
        f"""
{"user root;" if os.geteuid() == 0 else ""}
worker_processes auto;
pid {work}/nginx.pid;
error_log {work}/nginx-error.log;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    client_body_temp_path {work}/body;
    proxy_temp_path {work}/proxy;
    fastcgi_temp_path {work}/fastcgi;
    uwsgi_temp_path {work}/uwsgi;
    scgi_temp_path {work}/scgi;
    server {{
        listen 127.0.0.1:{port} backlog=2048;
        location /images/ {{ alias {root}/; }}
    }}
}}
"""
    )
    return conf


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--size-mib", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--burst", type=int, default=500)
    parser.add_argument("--burst-mib", type=int, default=10)
    args = parser.parse_args()
    nginx_bin = shutil.which("nginx") or "/usr/sbin/nginx"
    if not Path(nginx_bin).exists() or not shutil.which("curl"):
        raise SystemExit("needs nginx and curl: apt-get install -y nginx-light curl")
    size = args.size_mib << 20
    work = Path(tempfile.mkdtemp(prefix="bench-boot-files-"))
    provisiond = nginx = None
    try:
        src = work / "src"
        src.mkdir()
        with (src / "initrd.img").open("wb") as f:
            block = os.urandom(1 << 20)
            for _ in range(args.size_mib):
                f.write(block)
        (src / "vmlinuz").write_bytes(b"kernel")
        burst_size = args.burst_mib << 20
        (work / "burst").mkdir()
        (work / "burst" / "initrd.img").write_bytes(os.urandom(burst_size))
        daemon = Daemon(work / "data")
        daemon.prepare()
        for name, initrd in (
            ("bench", src / "initrd.img"),
            ("burst", work / "burst" / "initrd.img"),
        ):
            added = subprocess.run(
                [
                    sys.executable,
                    "-c",
                    "from provisiond.cli.images import app; app()",
                    "add",
                    name,
                    "--kernel",
                    str(src / "vmlinuz"),
                    "--initrd",
                    str(initrd),
                ],
                env=daemon.env,
                capture_output=True,
                text=True,
                check=False,
                timeout=120,
            )
            if added.returncode != 0:
                raise SystemExit(f"images add failed: {added.stderr}")
        log = (work / "serve.log").open("wb")
        provisiond = subprocess.Popen(
            [sys.executable, "-c", SERVE], env=daemon.env, stdout=log, stderr=log
        )
        p_url = f"{daemon.url}/images/bench/initrd.img"
        wait_http(f"{daemon.url}/images/bench/vmlinuz", provisiond)

        nport = free_port()
        conf = nginx_config(work / "data" / "images", nport, work)
        nginx = subprocess.Popen(
            [nginx_bin, "-c", str(conf), "-g", "daemon off;", "-e", str(work / "nginx-error.log")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        n_url = f"http://127.0.0.1:{nport}/images/bench/initrd.img"
        wait_http(f"http://127.0.0.1:{nport}/images/bench/vmlinuz", nginx)

        print(
            f"{args.clients} clients x {args.size_mib} MiB, {os.cpu_count()} CPUs, "
            f"{args.rounds} rounds each after a warm-up, alternating who goes first"
        )
        servers = {"nginx": (n_url, nginx.pid), "provisiond": (p_url, provisiond.pid)}
        # The first round on a fresh machine is the fastest of a run (measured: 1.3-1.9x
        # the later ones, whoever serves it), so it is not counted, and the order flips.
        for url, pid in servers.values():
            download_all(url, args.clients, size, pid)
        results: dict[str, list[dict[str, float]]] = {"nginx": [], "provisiond": []}
        for i in range(args.rounds):
            for name in sorted(servers, reverse=bool(i % 2)):
                url, pid = servers[name]
                results[name].append(download_all(url, args.clients, size, pid))
        best = {}
        for name, runs in results.items():
            for r in runs:
                print(
                    f"  {name:10s} {r['mb_s']:8.0f} MB/s  {r['seconds']:6.2f} s  "
                    f"{r['cpu_s_per_gb']:5.2f} CPU-s/GB  peak RSS {r['peak_rss_mb']:.0f} MB  "
                    f"failed {int(r['failed'])}"
                )
            best[name] = max(r["mb_s"] for r in runs)
        ratio = best["provisiond"] / best["nginx"]
        paired = statistics.median(
            p["mb_s"] / n["mb_s"]
            for p, n in zip(results["provisiond"], results["nginx"], strict=True)
        )
        print(f"  median of the per-round ratios: {paired:.2f}x")
        download_failures = sum(int(r["failed"]) for runs in results.values() for r in runs)

        bursts = {
            "provisiond": burst(daemon.port, "/images/burst/initrd.img", args.burst, burst_size),
            "nginx": burst(nport, "/images/burst/initrd.img", args.burst, burst_size),
        }
        for name, b in bursts.items():
            print(
                f"  burst {name:10s} {b['seconds']:6.2f} s  ok {b['ok']}  503 {b['refused']} "
                f"(slowest {b['slowest_refusal']:.2f} s)  "
                f"failures {b['failures']} {b['kinds'] or ''}"
            )

        met = ratio >= TARGET_RATIO and download_failures == 0
        print(
            f"boot files {args.clients}x{args.size_mib}MiB: {best['provisiond']:.0f} MB/s vs "
            f"nginx {best['nginx']:.0f} MB/s = {ratio:.2f}x (target >= {TARGET_RATIO}x) "
            f"{'MET' if met else 'MISSED'}"
        )
        ours = bursts["provisiond"]
        print(
            f"burst {args.burst} connections: {ours['failures']} failures "
            f"({ours['ok']} complete, {ours['refused']} refused with 503) "
            f"{'MET' if ours['failures'] == 0 else 'MISSED'}"
        )
    finally:
        stop_proc(provisiond, timeout=15)
        # nginx's master ("daemon off") exits on SIGTERM, taking its workers with it.
        stop_proc(nginx, timeout=15)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
