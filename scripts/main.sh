#!/usr/bin/env bash
# Set up, then run the main job: all-MiniLM-L6-v2 on the full SciFact test split with the local engine.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
export HF_HUB_OFFLINE=1
export SIE_EVALS_DATA_DIR=${SIE_EVALS_DATA_DIR:-$(cd .. && pwd)/shared/data}
exec .venv/bin/sie-bench eval sentence-transformers/all-MiniLM-L6-v2 -t beir/SciFact --type quality -s local \
  --output results/scifact-local.json "$@"
