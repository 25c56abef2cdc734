"""``provisiond serve --host H --port P`` wins over the environment and the file; ``--version``."""

from __future__ import annotations

import signal
import socket
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from provisiond import __version__
from provisiond.rack.scenario import free_port
from tests.support.daemon import PROVISIOND, Daemon, cli
from tests.support.procs import stop

#: TEST-NET-1: on no interface here, so a daemon that took this address would fail to start.
ELSEWHERE = "192.0.2.1"


def _refused(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def test_flags_win_over_environment_and_file(tmp_path: Path) -> None:
    file_port, flag_port = free_port(), free_port()
    config = tmp_path / "provisiond.toml"
    config.write_text(f'listen_host = "{ELSEWHERE}"\nlisten_port = {file_port}\n')
    daemon = Daemon(tmp_path / "data", extra_env={"PROVISIOND_LISTEN_HOST": ELSEWHERE})
    daemon.prepare()
    env_port = daemon.port  # PROVISIOND_LISTEN_PORT
    log = (tmp_path / "serve.log").open("w")
    args = ["serve", "--config", str(config), "--host", "127.0.0.1", "--port", str(flag_port)]
    proc = subprocess.Popen([*PROVISIOND, *args], env=daemon.env, stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 20
        while True:
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()
            try:
                r = httpx.get(f"http://127.0.0.1:{flag_port}/healthz", timeout=1)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, (tmp_path / "serve.log").read_text()
                time.sleep(0.1)
        assert r.status_code == 200 and r.json()["status"] == "ok"
        assert _refused(env_port) and _refused(file_port)
    finally:
        assert stop(proc, signal.SIGTERM, 15) == 0
        log.close()


def test_bad_port_flag_is_refused(tmp_path: Path) -> None:
    daemon = Daemon(tmp_path / "data")
    r = cli("serve", "--port", "0", env=daemon.env)
    assert r.returncode == 2 and "--port" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize("args", [["--version"], ["--version", "machines", "list"]])
def test_version(tmp_path: Path, args: list[str]) -> None:
    r = cli(*args, env=Daemon(tmp_path / "data").env)
    assert (r.returncode, r.stdout) == (0, f"provisiond {__version__}\n"), r.stderr
