"""Where things live. One place for every default location and the env vars that override it.

Nothing here is relative to the source tree unless the code runs from a source checkout: an
installed package (a wheel in site-packages, the Docker image) finds its shipped model configs and
instance template inside the package, and writes results, the Dagster home and logs under
SIE_EVALS_HOME (default: the checkout when there is one, else ~/.local/share/sie-evals)."""

import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sie_evals.lib.core.errors import ConfigError, EngineError, InputError

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
    """Everything cached (embeddings, ONNX exports). Outside the repo by default so clean clones and CI
    runs can share it."""
    return _env_path(CACHE_DIR_ENV) or Path.home() / ".cache" / "sie-evals"


@contextmanager
def _env_set(name: str, value: str) -> Iterator[None]:
    """os.environ[name] = value inside the block, as it was after it."""
    before = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = before


@contextmanager
def cache_dir_override(path: Path | None) -> Iterator[None]:
    """`--cache-dir`: cache_dir() is `path` inside the block, for every cache (embeddings, exports) and
    the servers started meanwhile, not only the one the option is passed to. None: no change."""
    if path is None:
        yield
        return
    with _env_set(CACHE_DIR_ENV, str(Path(path).expanduser().resolve())):
        yield


def results_dir() -> Path:
    """Where per-query score tables, dataset snapshots and Dagster asset outputs go, unless
    $SIE_EVALS_ARTIFACTS_URL puts those on shared storage (lib/core/artifacts.py). Reports, comparison
    markdown, latency plots and server logs stay here in any case (read by people, not by later steps),
    so in a deployment of more than one worker this is a POSIX volume every worker mounts (ReadWriteMany),
    never a worker's own disk."""
    return _env_path(RESULTS_DIR_ENV) or home() / "results"


def model_configs_dir() -> Path:
    """The checkout's model_configs/, or the copy shipped in the package (sie_evals/model_configs).
    Saved targets and the measurement history are written here (into the configs, per-query files under
    per_query/): they need atomic rename and file locks, which object stores lack, so in a deployment this
    is a writable POSIX volume every worker mounts (ReadWriteMany): SIE_EVALS_MODEL_CONFIGS_DIR."""
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


def writable_dir(path: Path, what: str, named_as: Path | None = None) -> None:
    """InputError naming `what` unless `path` is a directory this process can use, or one it can create
    (its nearest existing ancestor is a writable directory). Checked before work whose output would
    otherwise be lost at the end, or half-written. `named_as`: the path the message names (a file in `path`)."""
    path = Path(path)
    named = f"{what} {named_as or path}"
    existing = path
    while True:
        try:
            mode = existing.stat().st_mode
            break
        except (FileNotFoundError, NotADirectoryError):  # missing, or under a file: look further up
            existing = existing.parent
        except OSError as err:
            raise InputError(f"{named}: cannot use {existing}: {err.strerror}") from None
    if not stat.S_ISDIR(mode):
        shown = named if existing == (named_as or path) else f"{named}: {existing}"
        raise InputError(f"{shown} is a file, not a directory")
    if existing == path and not os.access(existing, os.R_OK | os.W_OK | os.X_OK):
        raise InputError(f"{named}: permission denied: this user cannot read and write the directory {existing}")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise InputError(f"{named}: permission denied: this user cannot write in {existing}")


def writable_file(path: Path, what: str) -> None:
    """InputError naming `what` unless a file can be written (atomically) at `path`."""
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{what} {path} is a directory; give a file name (e.g. {path / 'report.json'})")
    writable_dir(path.parent, what, named_as=path)


def check_dagster_home(home: Path) -> None:
    """Before `dagster dev` starts: `home` must be a usable directory, and a dagster.yaml in it valid
    YAML (ConfigError with the line) and a valid Dagster instance config (checked against Dagster's own
    schema), so a bad one is exit 2 naming the file, not a traceback from inside Dagster."""
    import yaml

    from sie_evals.lib.core.text_files import read_utf8

    writable_dir(home, DAGSTER_HOME_ENV)
    config = Path(home) / "dagster.yaml"
    if not config.exists():
        return
    try:
        text = read_utf8(config, ConfigError)
    except OSError as err:
        raise ConfigError(f"{config}: cannot read the Dagster instance config: {err.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f":{mark.line + 1}:{mark.column + 1}" if mark else ""
        raise ConfigError(f"{config}{where}: not valid YAML: {getattr(err, 'problem', None) or err}") from None
    if data is not None and not isinstance(data, dict):
        raise ConfigError(f"{config}: a Dagster instance config must be a YAML mapping")
    _check_instance_config(config)


def _check_instance_config(config: Path) -> None:
    # Dagster's public API validates the config against its instance schema only by opening the instance
    # (what `dagster dev` does next anyway); an invalid config raises before any storage is created.
    from dagster import DagsterInstance, DagsterInvalidConfigError

    try:
        with _env_set(DAGSTER_HOME_ENV, str(config.parent)), DagsterInstance.get():
            pass
    except DagsterInvalidConfigError as err:
        problems = [e.message.split(' Expected: "')[0] for e in err.errors] or [str(err).splitlines()[0]]
        raise ConfigError(
            f"{config}: not a valid Dagster instance config:\n" + "\n".join(f"  {p}" for p in problems)
        ) from None
    except Exception as err:  # e.g. its storage cannot be reached: not bad input, but no traceback either
        raise EngineError(
            f"{config}: cannot open the Dagster instance it configures: {type(err).__name__}: {err}"
        ) from None
