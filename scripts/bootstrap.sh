#!/usr/bin/env bash
# Install what a fresh Debian 12 machine lacks for provisiond's tests and demo.
# Idempotent: installs only what is missing. Needs root for apt-get.
set -euo pipefail

APT_PACKAGES=(
  postgresql-15      # PostgreSQL tests: a throwaway cluster per test run
  util-linux         # runuser, to start PostgreSQL as the postgres user
  ipmitool           # the reference IPMI client the tests and benchmarks compare with
  snmp               # snmpget: the PDU benchmark's baseline, and the tests' outside SNMP peer
  openipmi           # ipmi_sim: an outside IPMI peer for the ipmi driver tests
  dnsmasq-base       # DHCP/TFTP engine (binary only: no system service on host interfaces)
  busybox-static     # udhcpc, the tests' PXE client; busybox sh for the wipe script's test
  ipxe               # undionly.kpxe, ipxe.efi, snponly.efi served over TFTP
  iproute2           # ip netns: every DHCP test runs inside its own namespaces
  curl               # the boot-file benchmark's clients
  nginx-light        # the boot-file benchmark's baseline (never started as a service)
  qemu-system-x86    # the virtual rack's guests (TCG; KVM is used only where it works)
  ipxe-qemu          # the guests' NIC boot ROMs: a real iPXE
  qemu-utils         # qemu-img for the guests' virtual disks and qcow2 disk-image registration
  xz-utils           # xz -dc: registering .xz disk images (images add --disk)
  zstd               # zstd -dc: registering .zst disk images (images add --disk)
  ovmf               # UEFI firmware for the virtual rack's UEFI guests (rack up --uefi)
  systemd            # systemd-analyze: the shipped provisiond.service is verified
  # The Debian 12 disk image (provisiond/rack/disk_image.py), laid out without mounts:
  mmdebstrap         # the root tree, from the host's apt archive (no mirror argument)
  gdisk              # sgdisk: the GPT (BIOS boot partition, ESP, root) on the image file
  dosfstools         # mkfs.vfat -C: the ESP as a file (the host kernel has no vfat)
  mtools             # mmd/mcopy into that ESP file; mdir/mtype in the tests
  e2fsprogs          # mkfs.ext4 -d: the root filesystem filled from the tree; debugfs,
                     # which images add --disk uses to check the root for cloud-init
  grub-pc-bin        # grub-mkimage i386-pc modules and grub-bios-setup
  grub-efi-amd64-bin # grub-mkimage x86_64-efi modules (BOOTX64.EFI)
  pigz               # the served .gz, on every CPU
  chromium           # headless browser for the console's tests (driven by Playwright)
  fonts-dejavu-core  # a font for that browser's pages and screenshots
)

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
# Debian's python3 needs python3-venv for `python3 -m venv`; other Pythons (pyenv) carry it.
python3 -c 'import venv, ensurepip' 2>/dev/null || missing+=(python3-venv)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "bootstrap: missing Debian packages: ${missing[*]} (run as root, or install them)" >&2
    exit 1
  fi
  echo "bootstrap: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  # The Debian packages start services (PostgreSQL's main cluster on 5432, nginx on
  # port 80) that nothing here uses; stop them so nothing listens beyond our tests.
  if [[ " ${missing[*]} " == *" postgresql-15 "* ]] && command -v pg_ctlcluster >/dev/null; then
    pg_ctlcluster 15 main stop 2>/dev/null || true
  fi
  if [[ " ${missing[*]} " == *" nginx-light "* ]]; then
    systemctl stop nginx 2>/dev/null || service nginx stop 2>/dev/null || true
  fi
fi

# The guest image is assembled from Debian packages with `apt-get download`, which
# needs package lists; a fresh machine may have none even when nothing is missing.
candidate=$(apt-cache policy linux-image-amd64 2>/dev/null || true)
if [ "$(id -u)" -eq 0 ] && [[ "$candidate" != *"Candidate: "[0-9]* ]]; then
  echo "bootstrap: apt-get update (package lists for the guest image)" >&2
  apt-get update -qq
fi
