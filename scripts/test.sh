#!/usr/bin/env bash
# Set up, then run lint and the whole test suite (fast unit tests plus slow full-data/subprocess tests).
# Pass pytest arguments through, e.g.: bash scripts/test.sh -m "not slow"
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
bash scripts/system_deps.sh
export HF_HUB_OFFLINE=1
.venv/bin/ruff check .
.venv/bin/ruff format --check .
exec .venv/bin/python -m pytest -ra --durations=15 "$@"
