"""Which engine serves which source."""

from sie_evals.lib.engines.base import Engine
from sie_evals.lib.errors import InputError, UnknownNameError
from sie_evals.lib.model_config import ModelConfig, ResolvedProfile
from sie_evals.lib.sources import ALL_SOURCES, COMPUTE_SOURCES

# Compute sources whose engine is implemented in this version; the rest are declared, not built yet.
IMPLEMENTED: tuple[str, ...] = ("local",)


def create_engine(source: str, model: ModelConfig, profile: ResolvedProfile, **options) -> Engine:
    if source not in ALL_SOURCES:
        raise UnknownNameError("source", source, list(ALL_SOURCES))
    if source not in COMPUTE_SOURCES:
        raise InputError(f"source {source!r} is a reference source (read, not computed): it has no engine")
    if source == "local":
        from sie_evals.lib.engines.local import LocalEngine

        return LocalEngine(model, profile, **options)
    raise InputError(
        f"source {source!r} is not implemented in this version of sie-evals; implemented: {', '.join(IMPLEMENTED)}"
    )
