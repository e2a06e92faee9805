"""Where things live. One place for every default location and the env vars that override it."""

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[3]

DATA_DIR_ENV = "SIE_EVALS_DATA_DIR"
CACHE_DIR_ENV = "SIE_EVALS_CACHE_DIR"
RESULTS_DIR_ENV = "SIE_EVALS_RESULTS_DIR"
MODEL_CONFIGS_DIR_ENV = "SIE_EVALS_MODEL_CONFIGS_DIR"


def _env_path(name: str) -> Path | None:
    value = os.environ.get(name)
    return Path(value).expanduser().resolve() if value else None


def data_dir() -> Path | None:
    """Root of local datasets (BEIR folders etc.). None means: load from the Hugging Face hub."""
    return _env_path(DATA_DIR_ENV)


def cache_dir() -> Path:
    """Embedding cache. Outside the repo by default so clean clones and CI runs can share it."""
    return _env_path(CACHE_DIR_ENV) or Path.home() / ".cache" / "sie-evals"


def results_dir() -> Path:
    """Where per-query score tables, dataset snapshots and Dagster asset outputs go."""
    return _env_path(RESULTS_DIR_ENV) or REPO_ROOT / "results"


def model_configs_dir() -> Path:
    return _env_path(MODEL_CONFIGS_DIR_ENV) or REPO_ROOT / "model_configs"
