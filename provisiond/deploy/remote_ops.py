"""What the deploy engine does on a machine over SSH: blocking, run in the executor.

Both functions connect with the host key pinned to what the booted OS reported
(:class:`provisiond.deploy.ssh.Remote`) and the deployment's own key, from inside
the provisioning network's namespace when it has one.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Callable
from importlib import resources

from provisiond.deploy.ssh import Remote, SshError

AGENT_DIR = "/opt/provisiond-agent"
#: Where the image writer goes in the deploy ramdisk (tmpfs).
WRITER_PATH = "/tmp/provisiond-image-writer.py"  # noqa: S108 (the ramdisk is ours alone)
ENV_FILE = "/etc/provisiond/agent.env"
#: Disks the wipe leaves alone: RAM disks, loops, optical drives, floppies, network
#: block devices, eMMC boot areas (read-only), device-mapper and md (their members,
#: the partitions, are wiped directly; a write through md makes it rewrite its own
#: superblocks afterwards).
WIPE_SKIP = "^(loop|ram|zram|sr|fd|nbd|dm-|md|mmcblk[0-9]+(boot|rpmb))"


#: The agent's program files: ``agent.py`` imports ``lldp.py`` from its own folder.
AGENT_PROGRAM = ("agent.py", "lldp.py")


def _agent_files() -> tuple[dict[str, bytes], bytes, bytes]:
    pkg = resources.files("provisiond.agent")
    return (
        {name: pkg.joinpath(name).read_bytes() for name in AGENT_PROGRAM},
        pkg.joinpath("provisiond-agent.service").read_bytes(),
        pkg.joinpath("provisiond-agent.init").read_bytes(),
    )


def install_agent(
    address: str, host_key: str, private_key: str, env: str, *, attempts: int, netns: str | None
) -> None:
    """Upload the agent, its token and its service definition; (re)start it."""
    program, unit, init = _agent_files()
    with Remote.connect(address, host_key, private_key, attempts=attempts, netns=netns) as remote:
        for name, data in sorted(program.items(), reverse=True):  # lldp.py before agent.py
            remote.put(data, f"{AGENT_DIR}/{name}", mode=0o755 if name == "agent.py" else 0o644)
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
        # The machine is declared ready after this: what its first boot wrote (SSH host
        # keys, cloud-init's instance state, the agent) must survive a power cut right
        # away. Measured: a BMC power cycle ~40 s after first boot left ext4 (delayed
        # allocation) with 0-byte host keys, and sshd refused to start on every later boot.
        remote.check("sync", timeout=120)


WIPE_SCRIPT = r"""
# Release wipe: zero the first and last MiB (all of it when smaller) of every partition
# and every disk, verify each by an O_DIRECT read-back, then power off. POSIX sh (dash,
# bash, busybox sh) with dd, tr, wc, cat, grep, sleep and blockdev (util-linux or
# busybox). Prints "wiped: NAME..." once everything is verified.
set -e
# 1. Nothing may write metadata back afterwards: swap off, then an emergency read-only
#    remount of every mounted block-device file system (sysrq u), so the running kernel
#    writes no superblock or journal again. WIPE_NO_SYSRQ=1 skips this and the power-off
#    (tests on a host only: it would remount the host read-only and power it off).
sync
if [ -z "${WIPE_NO_SYSRQ:-}" ]; then
  if [ ! -w /proc/sysrq-trigger ]; then
    echo "no /proc/sysrq-trigger: the kernel lacks CONFIG_MAGIC_SYSRQ" >&2
    exit 4
  fi
  swapoff -a 2>/dev/null || true
  echo u > /proc/sysrq-trigger
  rw='^/dev/[^ ]+ [^ ]+ [^ ]+ rw(,| )'
  n=0
  while grep -Eq "$rw" /proc/mounts; do
    n=$((n + 1))
    if [ "$n" -gt 30 ]; then
      echo "still read-write 30 s after the emergency remount:" >&2
      grep -E "$rw" /proc/mounts >&2
      exit 4
    fi
    sleep 1
  done
  sleep 1  # md marks an idle array clean 200 ms after its last write: let it
fi
# 2. Each disk's partitions, then the disk; WIPE_DEVICES lists device paths instead
#    (tests only: offset loop devices stand in for partitions).
if [ -n "${WIPE_DEVICES:-}" ]; then
  devices=$WIPE_DEVICES
else
  devices=""
  for path in /sys/block/*; do
    d=${path##*/}
    if echo "$d" | grep -Eq 'WIPE_SKIP'; then continue; fi
    for part in "$path/$d"*; do
      if [ -e "$part/partition" ]; then devices="$devices /dev/${part##*/}"; fi
    done
    devices="$devices /dev/$d"
  done
fi
# 3. Load every program the wipe runs while the root file system is intact: once its
#    first MiB is zero, reading a program that is not in memory yet may fail.
for tool in dd tr wc cat blockdev sleep; do
  command -v "$tool" >/dev/null || { echo "the wipe needs $tool" >&2; exit 5; }
done
dd if=/dev/zero of=/dev/null bs=512 count=1 status=none
echo | tr -d '\000' | wc -c >/dev/null
cat /dev/null
blockdev --help >/dev/null 2>&1 || true
sleep 0
# 4. Write zeros with O_DIRECT (past the page cache, which holds the mounted file
#    system's superblock buffer) and read back with O_DIRECT, so the check sees the
#    device, not the cache. Mark each device read-only (BLKROSET), a partition before
#    it is zeroed: ext4 records an error (a metadata read that now fails) in its
#    superblock unless its device is read-only.
zero_and_check() {  # device offset length
  dd if=/dev/zero of="$1" bs="$3" count=1 seek="$2" oflag=direct,seek_bytes conv=fsync \
    status=none || { echo "write failed on $1 at byte $2" >&2; exit 3; }
  got=$(dd if="$1" bs="$3" count=1 skip="$2" iflag=direct,skip_bytes status=none | wc -c)
  left=$(dd if="$1" bs="$3" count=1 skip="$2" iflag=direct,skip_bytes status=none \
    | tr -d '\000' | wc -c)
  if [ "$got" -ne "$3" ] || [ "$left" -ne 0 ]; then
    echo "verify failed on $1 at byte $2: read $got of $3 bytes, $left non-zero" >&2
    exit 3
  fi
}
out=""
for dev in $devices; do
  name=${dev##*/}
  sys=/sys/class/block/$name
  if [ ! -b "$dev" ] || [ ! -r "$sys/size" ]; then
    echo "skipped $name: no block device node" >&2
    continue
  fi
  sectors=$(cat "$sys/size")
  if [ "$sectors" -eq 0 ]; then continue; fi  # no medium, nothing to wipe
  if [ "$(blockdev --getro "$dev")" != 0 ]; then  # a previous wipe's mark, or media's
    blockdev --setrw "$dev" 2>/dev/null || true
    if [ "$(blockdev --getro "$dev")" != 0 ]; then
      echo "skipped $name: read-only" >&2
      continue
    fi
  fi
  bytes=$((sectors * 512))
  span=1048576
  if [ "$bytes" -lt "$span" ]; then span=$bytes; fi
  # A partition is marked read-only BEFORE its ends are zeroed, through its disk at
  # the partition's offset: from then on its file system cannot record an error (a
  # metadata read that finds zeros) in the superblock just wiped.
  target=$dev
  base=0
  if [ -r "$sys/partition" ] && [ -r "$sys/start" ] && [ -z "${WIPE_DEVICES:-}" ]; then
    parent=$(cd -P "$sys/.." && pwd -P)
    target=/dev/${parent##*/}
    base=$(($(cat "$sys/start") * 512))
    blockdev --setro "$dev"
  fi
  zero_and_check "$target" "$base" "$span"
  zero_and_check "$target" $((base + bytes - span)) "$span"
  blockdev --setro "$dev"
  out="$out $name"
done
echo "wiped:$out"
# 5. Power off once this output has reached the caller: the kernel's own power-off
#    (sysrq o), no shutdown that could write, and no program that is not in memory.
if [ -z "${WIPE_NO_SYSRQ:-}" ]; then
  (sleep 2; echo o > /proc/sysrq-trigger) </dev/null >/dev/null 2>&1 &
fi
""".replace("WIPE_SKIP", WIPE_SKIP)


def wipe_disks(
    address: str, host_key: str, private_key: str, *, attempts: int, netns: str | None
) -> list[str]:
    """Wipe both ends of every partition and disk (:data:`WIPE_SCRIPT`); the OS then
    powers itself off (sysrq ``o``, two seconds after it answered).

    Nothing else runs on the machine after the wipe: once the root file system's first
    MiB is zero, a new SSH session may not even start a shell.
    """
    with Remote.connect(address, host_key, private_key, attempts=attempts, netns=netns) as remote:
        out = remote.check("sh -s", stdin=WIPE_SCRIPT.encode(), timeout=300)
    line = next((x for x in out.splitlines() if x.startswith("wiped:")), "wiped:")
    return line.split(":", 1)[1].split()


def run_image_writer(
    address: str,
    host_key: str,
    private_key: str,
    command: str,
    on_event: Callable[[dict[str, object]], None],
    *,
    attempts: int,
    netns: str | None,
    run_timeout: float,
) -> int:
    """Upload the image writer to the deploy ramdisk and run ``command``; its exit status.

    Each JSON line it prints goes to ``on_event`` as it arrives (its phases and, on
    failure, one ``{"event": "error", ...}``); other lines are ignored.
    """
    writer = resources.files("provisiond.agent").joinpath("image_writer.py").read_bytes()

    errors: list[object] = []

    def line(text: str) -> None:
        try:
            event = json.loads(text)
        except ValueError:
            return
        if isinstance(event, dict):
            if event.get("event") == "error":
                errors.append(event)
            on_event(event)

    with Remote.connect(address, host_key, private_key, attempts=attempts, netns=netns) as remote:
        remote.put(writer, WRITER_PATH, mode=0o755)
        result = remote.run(command, timeout=run_timeout, on_line=line)
    if result.status != 0 and not errors:
        raise SshError(
            f"the image writer exited {result.status}: "
            f"{(result.stderr.strip().splitlines() or ['no output'])[-1][:300]}",
            hint="see the machine's console log",
        )
    return result.status


def reboot_ramdisk(address: str, host_key: str, private_key: str, *, netns: str | None) -> None:
    """Reboot the deploy ramdisk (a machine without a BMC), detached from the session."""
    with Remote.connect(address, host_key, private_key, attempts=3, netns=netns) as remote:
        remote.run("(sleep 1; sync; reboot -f) >/dev/null 2>&1 &", timeout=15)
