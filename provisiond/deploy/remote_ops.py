"""What the deploy engine does on a machine over SSH: blocking, run in the executor.

Both functions connect with the host key pinned to what the booted OS reported
(:class:`provisiond.deploy.ssh.Remote`) and the deployment's own key, from inside
the provisioning network's namespace when it has one.
"""

from __future__ import annotations

import shlex
from importlib import resources

from provisiond.deploy.ssh import Remote

AGENT_DIR = "/opt/provisiond-agent"
ENV_FILE = "/etc/provisiond/agent.env"
#: Disks the wipe leaves alone (RAM disks, loops, optical drives, device-mapper).
WIPE_SKIP = "^(loop|ram|zram|sr|dm-|fd)"


def _agent_files() -> tuple[bytes, bytes, bytes]:
    pkg = resources.files("provisiond.agent")
    return (
        pkg.joinpath("agent.py").read_bytes(),
        pkg.joinpath("provisiond-agent.service").read_bytes(),
        pkg.joinpath("provisiond-agent.init").read_bytes(),
    )


def install_agent(
    address: str, host_key: str, private_key: str, env: str, *, attempts: int, netns: str | None
) -> None:
    """Upload the agent, its token and its service definition; (re)start it."""
    agent, unit, init = _agent_files()
    with Remote.connect(address, host_key, private_key, attempts=attempts, netns=netns) as remote:
        remote.put(agent, f"{AGENT_DIR}/agent.py", mode=0o755)
        remote.check(f"mkdir -p {shlex.quote(ENV_FILE.rsplit('/', 1)[0])} && umask 077")
        remote.put(env.encode(), ENV_FILE, mode=0o600)
        remote.put(unit, "/etc/systemd/system/provisiond-agent.service.new", mode=0o644)
        remote.put(init, "/etc/init.d/provisiond-agent.new", mode=0o755)
        remote.check(
            "if [ -d /run/systemd/system ]; then "
            "mv -f /etc/systemd/system/provisiond-agent.service.new "
            "/etc/systemd/system/provisiond-agent.service && "
            "rm -f /etc/init.d/provisiond-agent.new && systemctl daemon-reload && "
            "systemctl enable provisiond-agent && systemctl restart provisiond-agent; "
            "else mv -f /etc/init.d/provisiond-agent.new /etc/init.d/provisiond-agent && "
            "rm -f /etc/systemd/system/provisiond-agent.service.new && "
            "/etc/init.d/provisiond-agent stop >/dev/null 2>&1; "
            "/etc/init.d/provisiond-agent start; fi",
            timeout=30,
        )


WIPE_SCRIPT = r"""
set -e
out=""
for path in /sys/block/*; do
  d=${path##*/}
  echo "$d" | grep -Eq 'WIPE_SKIP' && continue
  [ -b /dev/$d ] || continue
  sectors=$(cat $path/size)
  [ "$sectors" -gt 4096 ] || continue
  dd if=/dev/zero of=/dev/$d bs=1048576 count=1 conv=fsync 2>/dev/null
  dd if=/dev/zero of=/dev/$d bs=512 seek=$((sectors - 2048)) count=2048 conv=fsync 2>/dev/null
  sync
  echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true
  head_left=$(dd if=/dev/$d bs=1048576 count=1 2>/dev/null | tr -d '\000' | wc -c)
  tail_left=$(dd if=/dev/$d bs=512 skip=$((sectors - 2048)) count=2048 2>/dev/null \
    | tr -d '\000' | wc -c)
  if [ "$head_left" -ne 0 ] || [ "$tail_left" -ne 0 ]; then
    echo "verify failed on $d: $head_left/$tail_left non-zero bytes" >&2
    exit 3
  fi
  out="$out $d"
done
echo "wiped:$out"
""".replace("WIPE_SKIP", WIPE_SKIP)


def wipe_disks(
    address: str, host_key: str, private_key: str, *, attempts: int, netns: str | None
) -> list[str]:
    """Zero and verify the first and last MiB of every disk, then power the OS off."""
    with Remote.connect(address, host_key, private_key, attempts=attempts, netns=netns) as remote:
        out = remote.check("sh -s", stdin=WIPE_SCRIPT.encode(), timeout=300)
        line = next((x for x in out.splitlines() if x.startswith("wiped:")), "wiped:")
        wiped = line.split(":", 1)[1].split()
        # Detach, so the SSH session ends cleanly before the OS goes down.
        remote.run(
            "(sleep 1; if [ -d /run/systemd/system ]; then systemctl poweroff; "
            "else poweroff -f; fi) >/dev/null 2>&1 &",
            timeout=15,
        )
        return wiped
