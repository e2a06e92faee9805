#!/usr/bin/env bash
# Set up, then run lint and the whole test suite (fast unit tests plus slow full-data/subprocess tests).
# Pass pytest arguments through, e.g.: bash scripts/test.sh -m "not slow"
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
bash scripts/system_deps.sh
export HF_HUB_OFFLINE=1
# Real-server integration tests need the server venvs: provisioned once, cached across runs.
# SIE_EVALS_PROVISION_SERVERS=0 skips provisioning (those tests then skip unless the venvs exist).
if [ "${SIE_EVALS_PROVISION_SERVERS:-1}" != 0 ]; then
  bash scripts/provision_servers.sh
  export SIE_EVALS_REQUIRE_SERVERS=1
fi
.venv/bin/ruff check .
.venv/bin/ruff format --check .
exec .venv/bin/python -m pytest -ra --durations=15 "$@"
