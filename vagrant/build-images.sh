#!/bin/sh
# Build the provisiond guest image (kernel + ramdisk) from Debian packages, or reuse
# the cached one when its recipe is unchanged. Prints the paths and sizes.
# Usage: vagrant/build-images.sh [--cache DIR] [--force]
set -eu
repo=$(cd "$(dirname "$0")/.." && pwd)
python=python3
if [ -x "$repo/.venv/bin/python" ]; then
    python="$repo/.venv/bin/python"
fi
PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}" exec "$python" -m provisiond.rack.guest_image "$@"
