#!/usr/bin/env bash
# Provision the server venvs the integration tests start (sie-server 0.10.1 on Python 3.12, infinity-emb
# 0.0.78 on Python 3.11) in ~/.cache/sie-evals/servers (or $SIE_EVALS_SERVERS_DIR), outside the repo.
# Idempotent: a stamp file per venv, so a cached machine does nothing. The first run downloads ~5 GB
# (PyPI's torch for cp312 is the CUDA build; it runs on CPU) and takes 5-10 minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
exec .venv/bin/sie-bench servers install all
