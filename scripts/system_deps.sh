#!/usr/bin/env bash
# System packages the integration tests need, from Debian: PostgreSQL (the Postgres instance test),
# Chromium (the Dagster UI test, driven by Playwright with executable_path: no browser download), and
# nginx + wrk (the perf generator against a fixed-response nginx, compared with wrk: test_perf_vs_wrk),
# buildah + debootstrap (the image built from ./Dockerfile and run: test_image, scripts/build_image.sh),
# redis-server (the Celery executor's broker: test_celery).
# Idempotent: installs only what is missing. Needs root (or passwordless sudo).
set -euo pipefail
missing=()
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null || missing+=(postgresql)
command -v chromium >/dev/null || command -v chromium-browser >/dev/null || missing+=(chromium)
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || missing+=(nginx-light)
command -v wrk >/dev/null || missing+=(wrk)
command -v buildah >/dev/null || missing+=(buildah)
command -v debootstrap >/dev/null || [ -x /usr/sbin/debootstrap ] || missing+=(debootstrap)
command -v redis-server >/dev/null || [ -x /usr/bin/redis-server ] || missing+=(redis-server)
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo -n"
echo "installing system packages: ${missing[*]}"
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
