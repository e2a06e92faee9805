#!/usr/bin/env bash
# Build ./Dockerfile into a local image with buildah, where there is no docker engine and no registry:
#   bash scripts/build_image.sh [TAG]        (default localhost/sie-evals:0.1.0)
# 1. buildah and debootstrap from Debian when missing (apt; root or passwordless sudo).
# 2. The base image localhost/python311-bookworm: `debootstrap bookworm` with Debian's python3.11 and its
#    venv module, imported with buildah (the Dockerfile's PYTHON_IMAGE; elsewhere python:3.11-slim works).
#    The rootfs tarball is cached in $SIE_EVALS_IMAGE_CACHE (default ~/.cache/sie-evals/image).
# 3. `buildah bud --isolation chroot --layers` with this machine's pip configuration: the effective
#    settings of `pip config list` (index, extra indexes, find-links, constraints, CA bundle) become a
#    pip.conf that the build reads through PIP_CONFIG_FILE, and every local path they name is bind-mounted
#    read-only at the same path; TORCH_INDEX is empty, so torch comes from that same default index (here
#    the local CPU wheel). pip's cache is the Dockerfile's cache mount, kept under the cache dir too
#    (buildah puts cache mounts under $TMPDIR), so a second build downloads nothing.
# Idempotent: the base image and the layers are reused; prints the build time and the image size.
set -euo pipefail
cd "$(dirname "$0")/.."
TAG=${1:-localhost/sie-evals:0.1.0}
CACHE=${SIE_EVALS_IMAGE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/sie-evals/image}
BASE=localhost/python311-bookworm
MIRROR=${SIE_EVALS_DEBIAN_MIRROR:-http://deb.debian.org/debian}
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo -n"

missing=()
command -v buildah >/dev/null || missing+=(buildah)
command -v debootstrap >/dev/null || [ -x /usr/sbin/debootstrap ] || missing+=(debootstrap)
if [ ${#missing[@]} -gt 0 ]; then
  echo "build_image: installing ${missing[*]}" >&2
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
PATH=$PATH:/usr/sbin
mkdir -p "$CACHE/tmp"

if ! buildah inspect --type image "$BASE" >/dev/null 2>&1; then
  tarball=$CACHE/python311-bookworm.tar
  if [ ! -s "$tarball" ]; then
    rootfs=$(mktemp -d "$CACHE/rootfs.XXXXXX")
    echo "build_image: debootstrap bookworm into $rootfs" >&2
    $SUDO debootstrap --variant=minbase --include=python3.11,python3.11-venv,python3-venv,ca-certificates \
      bookworm "$rootfs" "$MIRROR" >"$CACHE/debootstrap.log"
    $SUDO rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/archives/*.deb
    # device nodes and kernel file systems are the runtime's business, not the image's
    $SUDO tar -C "$rootfs" --numeric-owner --exclude=./dev/* --exclude=./proc/* --exclude=./sys/* \
      -cf "$tarball.tmp" .
    mv "$tarball.tmp" "$tarball"
    $SUDO rm -rf "$rootfs"
  fi
  ctr=$(buildah from scratch)
  buildah add --quiet "$ctr" "$tarball" / >/dev/null
  buildah config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --env LANG=C.UTF-8 --cmd /bin/bash "$ctr"
  buildah commit --quiet --rm "$ctr" "$BASE" >/dev/null
  echo "build_image: base image $BASE made from $tarball" >&2
fi

# This machine's pip configuration, as one file, and the local paths it needs.
pipconf=$CACHE/pip.conf
mounts=()
PYTHON=${PYTHON:-python3}
"$PYTHON" - "$pipconf" >"$CACHE/pip-mounts" <<'PY'
import configparser, os, subprocess, sys
from urllib.parse import urlparse

out = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True).stdout
conf = configparser.ConfigParser(interpolation=None)
paths = set()
for line in out.splitlines():
    key, _, value = line.partition("=")
    section, _, name = key.rpartition(".")
    section = "global" if section in ("", ":env:") else section
    value = value.strip().strip("'\"")
    conf.setdefault(section, {})[name] = value
    for item in value.split():
        path = item
        if item.startswith("file:"):  # a local index: its pages link to files beside it (../../files/)
            path = os.path.dirname(urlparse(item).path.rstrip("/"))
        if os.path.isabs(path) and os.path.exists(path):
            paths.add(os.path.realpath(path))
with open(sys.argv[1], "w") as f:
    conf.write(f)
print("\n".join(sorted(paths)))
PY
while read -r path; do
  [ -n "$path" ] && mounts+=(--volume "$path:$path:ro")
done <"$CACHE/pip-mounts"

echo "build_image: building $TAG (pip config: $pipconf; ${#mounts[@]} read-only mounts)" >&2
start=$(date +%s)
TMPDIR=$CACHE/tmp buildah bud --isolation chroot --layers --force-rm --quiet -f Dockerfile -t "$TAG" \
  --build-arg PYTHON_IMAGE="$BASE" --build-arg TORCH_INDEX= \
  --build-arg PIP_CONFIG_FILE=/run/sie-evals-build/pip.conf \
  --volume "$pipconf:/run/sie-evals-build/pip.conf:ro" "${mounts[@]}" . >/dev/null
seconds=$(($(date +%s) - start))
size=$(buildah images --format '{{.Size}}' "$TAG" | head -1)
echo "build_image: built $TAG in ${seconds}s, size $size"
