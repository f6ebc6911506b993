#!/usr/bin/env bash
# A Debian bookworm base image with Python 3.11, built from Debian's packages alone (debootstrap), for machines
# that reach a Debian mirror and PyPI but no container registry. `make image-check` uses it when the Dockerfile's
# default base (docker.io/library/python:3.11-slim) cannot be pulled.
#   deploy/base-debootstrap.sh [IMAGE]      (default localhost/siftrank-base:bookworm; needs root, debootstrap, podman)
set -euo pipefail
IMAGE=${1:-localhost/siftrank-base:bookworm}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
if podman image exists "$IMAGE"; then echo "base $IMAGE exists"; exit 0; fi
ROOT=$(mktemp -d /var/tmp/siftrank-base.XXXXXX)
trap 'rm -rf "$ROOT"' EXIT
debootstrap --variant=minbase --include=python3,python3-venv,libgomp1,ca-certificates bookworm "$ROOT" "$MIRROR" >/dev/null
rm -rf "$ROOT"/var/cache/apt/archives/*.deb "$ROOT"/var/lib/apt/lists/*
tar -C "$ROOT" -c . | podman import --change 'CMD ["/bin/bash"]' - "$IMAGE" >/dev/null
echo "built base $IMAGE ($(podman image inspect "$IMAGE" --format '{{.Size}}') bytes)"
