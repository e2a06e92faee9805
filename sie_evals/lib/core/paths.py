"""Where things live. One place for every default location and the env vars that override it.

Nothing here is relative to the source tree unless the code runs from a source checkout: an
installed package (a wheel in site-packages, the Docker image) finds its shipped model configs and
instance template inside the package, and writes results, the Dagster home and logs under
SIE_EVALS_HOME (default: the checkout when there is one, else ~/.local/share/sie-evals)."""

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parents[2]  # sie_evals/
REPO_ROOT = PACKAGE_DIR.parent  # the checkout; inside site-packages when installed non-editable

HOME_ENV = "SIE_EVALS_HOME"
DATA_DIR_ENV = "SIE_EVALS_DATA_DIR"
CACHE_DIR_ENV = "SIE_EVALS_CACHE_DIR"
RESULTS_DIR_ENV = "SIE_EVALS_RESULTS_DIR"
MODEL_CONFIGS_DIR_ENV = "SIE_EVALS_MODEL_CONFIGS_DIR"
DAGSTER_HOME_ENV = "DAGSTER_HOME"


def _env_path(name: str) -> Path | None:
    value = os.environ.get(name)
    return Path(value).expanduser().resolve() if value else None


def source_checkout() -> Path | None:
    """The repository root when running from a checkout (editable install, PYTHONPATH), else None."""
    root = REPO_ROOT
    return root if (root / "pyproject.toml").is_file() and (root / "model_configs").is_dir() else None


def home() -> Path:
    """Where this installation writes by default (results, Dagster home)."""
    return _env_path(HOME_ENV) or source_checkout() or Path.home() / ".local" / "share" / "sie-evals"


def data_dir() -> Path | None:
    """Root of local datasets (BEIR folders etc.). None means: load from the Hugging Face hub."""
    return _env_path(DATA_DIR_ENV)


def cache_dir() -> Path:
    """Embedding cache. Outside the repo by default so clean clones and CI runs can share it."""
    return _env_path(CACHE_DIR_ENV) or Path.home() / ".cache" / "sie-evals"


def results_dir() -> Path:
    """Where per-query score tables, dataset snapshots and Dagster asset outputs go."""
    return _env_path(RESULTS_DIR_ENV) or home() / "results"


def model_configs_dir() -> Path:
    """The checkout's model_configs/, or the copy shipped in the package (sie_evals/model_configs).
    Saving targets writes here: point SIE_EVALS_MODEL_CONFIGS_DIR at a writable copy in a deployment."""
    checkout = source_checkout()
    return _env_path(MODEL_CONFIGS_DIR_ENV) or (checkout / "model_configs" if checkout else shipped_model_configs())


def shipped_model_configs() -> Path:
    return PACKAGE_DIR / "model_configs"


def dagster_home() -> Path:
    return _env_path(DAGSTER_HOME_ENV) or home() / ".dagster_home"


def instance_template() -> Path:
    """The dagster.yaml that `sie-bench ui` copies into a new DAGSTER_HOME (shipped as package data)."""
    return PACKAGE_DIR / "data" / "instance" / "dagster.yaml"


def workspace_file() -> Path:
    """workspace.yaml (the `sie_evals` code location, by module name), shipped as package data."""
    return PACKAGE_DIR / "data" / "instance" / "workspace.yaml"
